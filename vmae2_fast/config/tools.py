"""The tools that use a trained classifier: multi-view evaluation, prediction on a user's videos,
feature extraction, HF and ONNX export. Fields left at None are read from the checkpoint's own
config (our checkpoints record it)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import ConfigError
from .base import DECODERS, one_of


def _required(cfg, *names) -> None:
    for name in names:
        if not getattr(cfg, name):
            raise ConfigError(f"--{name.replace('_', '-')} is required")


@dataclass
class EvaluateConfig:
    checkpoint: str = ""
    model: str | None = None           # default: the checkpoint's config
    data: str | None = None            # folder with val.csv, or a list file; default: the embedded val.csv
    data_root: str = ""
    storage_options: str = ""          # shard sets at a URL: fsspec options as JSON (default: AWS_* env)
    num_segments: int | None = None    # default: the official test views of the checkpoint's
    num_crops: int | None = None       # --dataset (SSv2 2 x 3), else 5 x 3
    input_size: int | None = None
    num_frames: int | None = None
    sampling_rate: int | None = None
    short_side_size: int | None = None
    num_classes: int | None = None
    sparse_sample: bool | None = None
    fname_tmpl: str | None = None      # frame folders (default: the checkpoint's, else img_{:05}.jpg)
    start_idx: int | None = None       # frame folders' first frame number (default: checkpoint's, else 1)
    batch_views: int = 32              # views per forward pass
    num_workers: int = 4
    decoder: str = "auto"
    dali_instances: int = 1
    output_dir: str = "runs/eval"
    device: str = "auto"
    precision: str = "auto"            # auto (bf16 on GPU) | bf16 | fp32
    seed: int = 0
    trust_checkpoint: bool = False     # unpickle code in --checkpoint (trusted files only)
    attention: str = "auto"            # the attention backend (see models/attention.py)

    def check(self) -> None:
        _required(self, "checkpoint")
        from ..models.attention_backends import BACKENDS as ATTENTION_BACKENDS
        one_of("attention", self.attention, ATTENTION_BACKENDS)
        if (self.num_segments or 1) < 1 or (self.num_crops or 1) < 1:
            raise ConfigError("--num-segments and --num-crops must be at least 1")
        if self.batch_views < 1 or self.dali_instances < 1 or self.num_workers < 0:
            raise ConfigError("--batch-views and --dali-instances must be at least 1, --num-workers >= 0")
        one_of("decoder", self.decoder, DECODERS)
        one_of("precision", self.precision, ("auto", "bf16", "fp32"))
        from ..data.shard_store import parse_storage_options
        parse_storage_options(self.storage_options)


@dataclass
class FeaturesConfig:
    checkpoint: str = ""
    videos: str = ""                   # folder of videos (searched recursively)
    out: str = ""                      # folder for the .npy files
    model: str | None = None           # default: the checkpoint's config
    window: int = 16                   # frames per window (the model's clip)
    stride: int = 4                    # frames between window starts
    frame_stride: int = 1              # stride between frames in a window
    input_size: int | None = None      # default: the checkpoint's, else 224
    imagenet_norm: bool = True
    batch_size: int = 16               # windows per forward pass
    overwrite: bool = False            # redo videos whose .npy exists
    device: str = "auto"
    trust_checkpoint: bool = False     # unpickle code in --checkpoint (trusted files only)

    def check(self) -> None:
        _required(self, "checkpoint", "videos", "out")
        if min(self.window, self.stride, self.frame_stride, self.batch_size) < 1:
            raise ConfigError("--window, --stride, --frame-stride and --batch-size must be at least 1")


@dataclass
class ExportConfig:
    checkpoint: str = ""
    model: str = ""                    # vit_s | vit_b | vit_l | vit_h | vit_g | vit_micro
    out: str = ""                      # output folder
    num_classes: int = 0               # default: the checkpoint head's rows
    input_size: int = 0                # default: the checkpoint's config, else 224
    num_frames: int = 0                # default: the checkpoint's config, else 16
    layout: str = "auto"               # auto (the installed transformers) | v4 | v5
    trust_checkpoint: bool = False     # unpickle code in --checkpoint (trusted files only)

    def check(self) -> None:
        _required(self, "checkpoint", "model", "out")
        one_of("layout", self.layout, ("auto", "v4", "v5"))


@dataclass
class PredictConfig:
    inputs: tuple[str, ...] = field(default=(), metadata={"positional": "INPUT"})
    checkpoint: str = ""
    onnx: str = ""                     # run an onnx_export file in ONNX Runtime instead of PyTorch
    model: str | None = None           # default: the checkpoint's config
    top_k: int = 5
    views: str = "1x1"                 # TxS test views, or "official" (the checkpoint's dataset's)
    classes: str = ""                  # class names (default: the checkpoint's)
    json: bool = False                 # one JSON object per video and line on stdout
    data_root: str = ""                # list files: the folder their relative paths start from
    list_kind: str = "auto"            # list files' format (see data/lists.py)
    input_size: int | None = None
    num_frames: int | None = None
    sampling_rate: int | None = None
    short_side_size: int | None = None
    sparse_sample: bool | None = None
    fname_tmpl: str | None = None      # frame folders (default: the checkpoint's, else img_{:05}.jpg)
    start_idx: int | None = None       # frame folders' first frame number (default: checkpoint's, else 1)
    batch_views: int = 32              # views per forward pass
    num_workers: int = 2               # decoding processes
    progress: bool = True              # a progress bar (on stderr) for more than one batch of videos
    device: str = "auto"
    precision: str = "auto"            # auto (bf16 on GPU) | bf16 | fp32
    attention: str = "auto"
    trust_checkpoint: bool = False     # unpickle code in --checkpoint (trusted files only)

    HELP: ClassVar[dict] = {
        "inputs": "video files, folders (searched recursively for videos and frame folders; a "
                  "folder holding the first frame file is one frame-folder video) or list files "
                  "(.txt .csv .lst .list, any official format)",
        "checkpoint": "a fine-tuned classifier (ours or a released layout)",
        "onnx": "run this onnx_export file in ONNX Runtime (CUDA provider when installed, else the "
                "CPU); its clip settings and class names come from the file unless --checkpoint is given",
        "views": "test views TxS: T clips spread over the video x S crops along its long side, softmax "
                 "averaged as in evaluate; 1x1: the centred clip and crop; official: the "
                 "checkpoint's dataset's (Kinetics 5x3, SSv2 2x3)",
        "classes": "class names: one per line, or a JSON list (or name -> index map); must match "
                   "the head's rows",
        "json": "print one JSON object per video (path, labels, indices, probs, views, timing)",
        "list_kind": "auto | pretrain | cls | rawframes | csv (auto reads 3 fields as raw frames)",
    }

    def test_views(self) -> tuple[int | None, int | None]:
        """(T, S) of ``--views``; (None, None) for ``official``."""
        if self.views == "official":
            return None, None
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", self.views)
        if not m or min(int(m.group(1)), int(m.group(2))) < 1:
            raise ConfigError(f"--views must be TxS with T, S >= 1 (e.g. 1x1, 5x3) or 'official', got "
                             f"{self.views!r}")
        return int(m.group(1)), int(m.group(2))

    def check(self) -> None:
        if not self.inputs:
            raise ConfigError("give at least one INPUT: a video file, a folder or a list file")
        if not (self.checkpoint or self.onnx):
            raise ConfigError("--checkpoint is required (or --onnx FILE written by onnx_export)")
        self.test_views()
        if self.top_k < 1 or self.batch_views < 1 or self.num_workers < 0:
            raise ConfigError("--top-k and --batch-views must be at least 1, --num-workers >= 0")
        from ..data.lists import KINDS
        from ..models.attention_backends import BACKENDS as ATTENTION_BACKENDS
        one_of("list_kind", self.list_kind, KINDS)
        one_of("precision", self.precision, ("auto", "bf16", "fp32"))
        one_of("attention", self.attention, ATTENTION_BACKENDS)


@dataclass
class OnnxExportConfig:
    checkpoint: str = ""
    out: str = ""                      # the .onnx file (a big model's weights go beside it, FILE.data)
    model: str | None = None           # default: the checkpoint's config
    features: bool = False             # the encoder's pooled clip feature instead of the logits
    opset: int = 18
    input_size: int | None = None      # the clip the graph takes (default: the checkpoint's)
    num_frames: int | None = None
    sampling_rate: int | None = None   # how the check clip is read (default: the checkpoint's)
    short_side_size: int | None = None
    sparse_sample: bool | None = None
    check_video: str = ""              # a video for the check (default: a synthetic clip)
    tolerance: float = 1e-4            # largest |ONNX Runtime - PyTorch| / max(1, largest output)
    trust_checkpoint: bool = False     # unpickle code in --checkpoint (trusted files only)

    HELP: ClassVar[dict] = {
        "features": "export the encoder as a feature extractor: output `features`, the pooled "
                    "(batch, width) clip feature of extract_features, instead of `logits`",
        "opset": "ONNX opset (18: the lowest the torch.export-based exporter writes natively)",
        "check_video": "a video decoded for the ONNX Runtime check (default: a synthetic clip, "
                       "encoded and decoded here)",
    }

    def check(self) -> None:
        _required(self, "checkpoint", "out")
        if self.opset < 18:
            raise ConfigError(f"--opset {self.opset}: the exporter writes opset 18 and above (its "
                             "conversion to older opsets fails on this model)")
        if self.tolerance <= 0:
            raise ConfigError("--tolerance must be positive")
