"""Frechet Video Distance: the I3D network and the original VideoGPT's FVD pipeline."""
from .fvd import compute_fvd, frechet_distance, get_fvd_logits, load_i3d_pretrained, preprocess
from .i3d import InceptionI3d

__all__ = ["InceptionI3d", "frechet_distance", "get_fvd_logits", "load_i3d_pretrained", "compute_fvd",
           "preprocess"]
