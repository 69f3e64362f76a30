"""Data path: annotation lists, temporal sampling, transforms, CPU decoding, synthetic dataset."""
from .lists import VideoEntry, read_cls_list, read_pretrain_list
from .pretrain_dataset import PretrainVideoDataset, pretrain_collate
from .sampling import pretrain_frame_indices
from .synthetic import (CLASS_NAMES, SyntheticDataset, ensure_synthetic_dataset,
                        render_synthetic_video, synthetic_video_frames, write_video)
from .transforms import (IMAGENET_MEAN, IMAGENET_STD, crop_resize_normalize,
                         multiscale_crop_box)
from .video_io import VideoDecodeError, count_frames, decode_frames

__all__ = [
    "VideoEntry", "read_cls_list", "read_pretrain_list",
    "PretrainVideoDataset", "pretrain_collate",
    "pretrain_frame_indices",
    "CLASS_NAMES", "SyntheticDataset", "ensure_synthetic_dataset", "render_synthetic_video",
    "synthetic_video_frames", "write_video",
    "IMAGENET_MEAN", "IMAGENET_STD", "crop_resize_normalize", "multiscale_crop_box",
    "VideoDecodeError", "count_frames", "decode_frames",
]
