"""Triton kernels of videogpt_fast, installed as ``videogpt_fast.kernels``.

One module per kernel (kernel, launch configuration, launcher, ``reference``):

* :mod:`~videogpt_fast.kernels.codebook` - VQ codebook nearest neighbour (+ EMA statistics);
* :mod:`~videogpt_fast.kernels.axial_attention` - attention along one spatial axis, fwd + bwd;
* :mod:`~videogpt_fast.kernels.blocksparse_attention` - block-sparse attention of the prior.

Importing this package does not import Triton; models reach the kernels only through
:mod:`videogpt_fast.ops`, which picks the backend.
"""
