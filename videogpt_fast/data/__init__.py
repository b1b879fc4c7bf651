"""Video data: ``preprocess``, ``VideoDataset`` (PyAV), ``HDF5Dataset``, loaders, DALI GPU decoding."""
from .hdf5_dataset import HDF5Dataset
from .loaders import VideoData, build_dataloader, build_dataset, make_loader
from .preprocess import preprocess
from .video_dataset import VideoDataset
from .video_index import VideoIndex, read_clip

__all__ = ["preprocess", "VideoDataset", "HDF5Dataset", "VideoData", "build_dataloader", "build_dataset",
           "make_loader", "VideoIndex", "read_clip"]
