"""Triton kernels of videogpt_fast, installed as ``videogpt_fast.kernels``: the bottom layer.

Nothing here imports ``videogpt_fast`` (``tests/test_layering.py`` checks it); models reach
the kernels only through :mod:`videogpt_fast.ops`, the one dispatch point, which validates inputs
and picks the backend. One module per kernel (kernels, launch configuration, launcher):

* :mod:`~videogpt_fast.kernels.codebook` - VQ codebook nearest neighbour (+ EMA statistics);
* :mod:`~videogpt_fast.kernels.axial_attention` - attention along one spatial axis, fwd + bwd;
* :mod:`~videogpt_fast.kernels.blocksparse_attention` - block-sparse attention of the prior, and
  its one-row decode step.

:mod:`~videogpt_fast.kernels.reference` holds every op's plain-PyTorch reference
(``<op>_reference``), which ``ops`` runs as backend ``torch`` and the tests compare against.

Launch configs: one per kernel, shape and dtype (each module's ``compiled_variants`` lists them);
``VIDEOGPT_FAST_AUTOTUNE=1`` autotunes over full sweeps for a tuning session
(:mod:`~videogpt_fast.kernels.tuning`). ``python -m videogpt_fast.kernels.aot_check`` compiles
every kernel for sm_90 without a GPU and reports registers, spills and shared memory.

Importing this package, :mod:`.reference` or :mod:`._interpreter` does not import Triton.
"""
