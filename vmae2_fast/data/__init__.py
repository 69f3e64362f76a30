"""The runtime data plane: lists, the video index, batch order, clip sampling rules, pixel
transforms, the PyAV (CPU) and DALI (GPU) loaders, the typed batches they yield, the embedded
synthetic dataset and the K710 label maps. The offline tools (index command, re-encoder, K710
builder) are in `data.tools`, which nothing here imports.

It knows nothing of the training loop: loaders yield batches for a given (epoch, steps to skip).
"""
from .batches import ClassifyBatch, EvalBatch, PretrainBatch
from .lists import VideoEntry, read_cls_list, read_list
from .media import FrameLayout, VideoDecodeError
from .pyav.pretrain import PretrainVideoDataset, pretrain_collate
from .pyav.video_io import count_frames, decode_frames
from .synthetic import (CLASS_NAMES, SyntheticDataset, ensure_synthetic_dataset,
                        render_synthetic_video, synthetic_video_frames, write_video)

__all__ = [
    "PretrainBatch", "ClassifyBatch", "EvalBatch",
    "VideoEntry", "read_list", "read_cls_list",
    "PretrainVideoDataset", "pretrain_collate",
    "CLASS_NAMES", "SyntheticDataset", "ensure_synthetic_dataset", "render_synthetic_video",
    "synthetic_video_frames", "write_video",
    "FrameLayout", "VideoDecodeError", "count_frames", "decode_frames",
]
