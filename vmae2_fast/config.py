"""Dataclass configs. Every CLI flag overrides the field of the same name (dashes for underscores).

Learning rates follow the official convention: `lr`, `min_lr` and `warmup_lr` are per 256 VIDEOS
of total batch (batch_size x world_size x accum_steps); repeated-augmentation views do NOT
count. Example: the ViT-g recipe, 64 GPUs x 32 videos x 4 views, lr 6e-4 -> 6e-4 x 2048/256 =
4.8e-3, which is the paper's 1.5e-4 per 256 views x 8192 views.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class PretrainConfig:
    # model
    model: str = "vit_b"
    input_size: int = 224
    num_frames: int = 16
    tubelet_size: int = 2
    decoder_depth: int = 4
    drop_path: float = 0.0
    activation_checkpointing: bool = False
    # masking
    mask_ratio: float = 0.9
    decoder_mask_ratio: float = 0.5
    normalize_target: bool = True
    # data
    data: str | None = None           # pre-training list (`path start total`); None: embedded dataset
    data_root: str = ""
    sampling_rate: int = 4
    num_sample: int = 4                # repeated augmentation: views per decoded clip
    num_workers: int = 8
    decoder: str = "auto"              # auto (DALI on a GPU, PyAV otherwise) | dali | pyav
    dali_instances: int = 1            # independent DALI pipelines per process (several NVDECs)
    # optimisation
    batch_size: int = 32               # videos per process per micro-batch
    accum_steps: int = 1
    epochs: int = 300
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: int = 30
    warmup_steps: int = -1
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    opt_eps: float = 1e-8
    clip_grad: float | None = None
    precision: str = "auto"            # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
    max_nonfinite: int = 20            # abort after this many non-finite losses in a row
    # run
    output_dir: str = "runs/pretrain"
    resume: str = "auto"               # auto | a checkpoint path | none
    save_every: int = 10               # epochs between numbered checkpoints (and the last one)
    save_every_steps: int = 0          # also checkpoint-last.pth every N optimiser steps (0: off)
    keep_last: int = 0                 # keep only the newest K numbered checkpoints (0: all)
    log_every: int = 20                # optimiser steps between log lines (the only host syncs)
    preview_every: int = 0             # epochs between reconstruction PNGs (0: off)
    tensorboard: bool = False
    progress: bool = True
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    kernels: str = "auto"              # fused ops: auto (Triton on CUDA, C++ on CPU) | triton | cpp | reference
    max_steps: int = 0                 # stop after this many optimiser steps (0: run all epochs)
    preset: str = "table10"

    def validate(self) -> None:
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"--mask-ratio must be in (0, 1), got {self.mask_ratio}")
        if not 0 <= self.decoder_mask_ratio < 1:
            raise ValueError(f"--decoder-mask-ratio must be in [0, 1), got {self.decoder_mask_ratio}")
        if self.input_size <= 0 or self.num_frames <= 0:
            raise ValueError("--input-size and --num-frames must be positive")
        if self.num_frames % self.tubelet_size:
            raise ValueError(f"--num-frames {self.num_frames} is not divisible by --tubelet-size "
                             f"{self.tubelet_size}")
        for name in ("batch_size", "accum_steps", "epochs", "num_sample", "sampling_rate",
                     "dali_instances"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"--precision must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        if self.decoder not in ("auto", "dali", "pyav"):
            raise ValueError(f"--decoder must be auto, dali or pyav, got {self.decoder!r}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError("--clip-grad must be positive (omit it to disable clipping)")
        if self.kernels not in ("auto", "triton", "cpp", "reference"):
            raise ValueError(f"--kernels must be auto, triton, cpp or reference, got {self.kernels!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(d["betas"])
        return d


def replace(cfg, **overrides):
    """A copy of `cfg` with `overrides`; unknown names raise with the list of valid ones."""
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; valid: {sorted(names)}")
    return dataclasses.replace(cfg, **overrides)


__all__ = ["PretrainConfig", "replace", "field"]
