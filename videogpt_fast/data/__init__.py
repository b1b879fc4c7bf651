"""Video data: ``preprocess``, ``VideoDataset`` (PyAV), ``HDF5Dataset``, loaders, DALI GPU decoding,
and the one order-safe video reader (``read_video``) and file listing (``video_files``)."""
from .hdf5_dataset import HDF5Dataset
from .loaders import (LoaderUnavailable, VideoData, build_dataloader, build_dataset, choose_loader, dali_loader,
                      make_loader, open_datasets, rank0_first, require_clips, require_labels)
from .preprocess import preprocess
from .video_dataset import VideoDataset, get_parent_dir
from .video_index import VideoIndex
from .video_reader import VIDEO_EXTS, ClipReadError, list_videos, read_video, video_files

__all__ = ["preprocess", "VideoDataset", "HDF5Dataset", "VideoData", "build_dataloader", "build_dataset",
           "make_loader", "choose_loader", "dali_loader", "LoaderUnavailable", "open_datasets", "rank0_first",
           "require_clips", "require_labels", "VideoIndex", "read_video", "video_files", "list_videos", "VIDEO_EXTS",
           "ClipReadError", "get_parent_dir"]
