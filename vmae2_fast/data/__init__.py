"""The data plane: lists, the video index, batch order, clip sampling rules, pixel transforms, the
PyAV (CPU) and DALI (GPU) loaders, the embedded synthetic dataset and the K710 builder.

It knows nothing of the training loop: loaders yield batches for a given (epoch, steps to skip).
"""
from .lists import VideoEntry, read_cls_list, read_list, read_pretrain_list
from .pyav.pretrain import PretrainVideoDataset, pretrain_collate
from .pyav.video_io import VideoDecodeError, count_frames, decode_frames
from .synthetic import (CLASS_NAMES, SyntheticDataset, ensure_synthetic_dataset,
                        render_synthetic_video, synthetic_video_frames, write_video)

__all__ = [
    "VideoEntry", "read_list", "read_cls_list", "read_pretrain_list",
    "PretrainVideoDataset", "pretrain_collate",
    "CLASS_NAMES", "SyntheticDataset", "ensure_synthetic_dataset", "render_synthetic_video",
    "synthetic_video_frames", "write_video",
    "VideoDecodeError", "count_frames", "decode_frames",
]
