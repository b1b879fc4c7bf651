"""Kept import path of :mod:`videogpt_fast.data.synthetic` (the one synthetic-video module): the
moving-shape videos of the demo and tests."""
from .data.synthetic import MovingShapesDataset, moving_shapes, write_hdf5

__all__ = ["moving_shapes", "MovingShapesDataset", "write_hdf5"]
