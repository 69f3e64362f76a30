"""The tools that use a trained classifier: multi-view evaluation, feature extraction, HF export.
Fields left at None are read from the checkpoint's own config (our checkpoints record it)."""
from __future__ import annotations

from dataclasses import dataclass

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
