"""Stage 1 (self-supervised pre-training with dual masking): `RunConfig` plus masking, the decoder
and the fused-op backend. Defaults are the paper's Table 10 for ViT-B; presets set the rest."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import ConfigError
from .base import RunConfig, one_of

KERNELS = ("auto", "triton", "cpp", "reference")


@dataclass
class PretrainConfig(RunConfig):
    # model and masking
    decoder_depth: int = 4
    mask_ratio: float = 0.9
    decoder_mask_ratio: float = 0.5
    normalize_target: bool = True
    kernels: str = "auto"              # fused ops: auto (Triton on CUDA, C++ on CPU) | triton | cpp | reference
    preview_every: int = 0             # epochs between reconstruction PNGs, and after the last (0: off)
    # stage-1 defaults of the shared fields
    num_sample: int = 4
    batch_size: int = 32
    epochs: int = 300
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: int = 30
    betas: tuple[float, float] = (0.9, 0.95)
    save_every: int = 10
    output_dir: str = "runs/pretrain"
    preset: str = "hybrid"

    HELP: ClassVar[dict] = {
        "data": "pre-training list (any list format; official `path start total`); omit for the "
                "embedded synthetic dataset",
        "data_root": "folder that relative paths in --data are joined to",
        "lr": "base lr per 256 videos of total batch (views of repeated augmentation not counted)",
        "batch_size": "videos per process per micro-batch (each gives --num-sample views)",
        "resume": "auto (newest checkpoint in --output-dir) | PATH | none",
        "max_steps": "stop after N optimiser steps (smoke tests)",
        "decoder": "auto (DALI on a GPU, PyAV otherwise) | dali | pyav; DALI needs the list's index "
                   "(python -m vmae2_fast.data.tools.index LIST --data-root DIR)",
        "dali_instances": "independent DALI pipelines per process, fed batches in turn (same "
                          "batches, same order); raise on GPUs with several NVDEC engines",
    }

    def check(self) -> None:
        super().check()
        if not 0 < self.mask_ratio < 1:
            raise ConfigError(f"--mask-ratio must be in (0, 1), got {self.mask_ratio}")
        if not 0 <= self.decoder_mask_ratio < 1:
            raise ConfigError(f"--decoder-mask-ratio must be in [0, 1), got {self.decoder_mask_ratio}")
        one_of("kernels", self.kernels, KERNELS)
