"""The original's module path ``videogpt.fvd.pytorch_i3d``: the I3D classes live in
:mod:`videogpt_fast.fvd.i3d` (same names, constructor arguments and state-dict keys)."""
from .i3d import InceptionI3d, InceptionModule, MaxPool3dSamePadding, Unit3D

__all__ = ["MaxPool3dSamePadding", "Unit3D", "InceptionModule", "InceptionI3d"]
