"""Triton kernels of videogpt_fast, installed as ``videogpt_fast.kernels``.

One module per kernel (kernel, launch configuration, launcher, ``reference``):

* :mod:`~videogpt_fast.kernels.codebook` - VQ codebook nearest neighbour (+ EMA statistics);
* :mod:`~videogpt_fast.kernels.axial_attention` - attention along one spatial axis, fwd + bwd;
* :mod:`~videogpt_fast.kernels.blocksparse_attention` - block-sparse attention of the prior.

Launch configs: one per kernel, shape and dtype (each module's ``compiled_variants`` lists them);
``VIDEOGPT_FAST_AUTOTUNE=1`` autotunes over full sweeps for a tuning session
(:mod:`~videogpt_fast.kernels.tuning`). ``python -m videogpt_fast.kernels.aot_check`` compiles
every kernel for sm_90 without a GPU and reports registers, spills and shared memory.

Importing this package does not import Triton; models reach the kernels only through
:mod:`videogpt_fast.ops`, which picks the backend.
"""
