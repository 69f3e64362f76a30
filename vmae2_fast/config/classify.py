"""The classification stages: post-pre-training (stage 2, K710), specific fine-tuning (stage 3) and
distillation. `RunConfig` plus the classifier head, the official augmentation, mixing and loss, and
single-view validation after each epoch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import ConfigError
from .base import RunConfig


@dataclass
class FinetuneConfig(RunConfig):
    # model
    dataset: str = ""                  # k400 | k600 | k700 | k710 | ssv2 | ucf101 | hmdb51 | diving48 | mit
                                       # (classes, flip, sampling; "" for your own data)
    num_classes: int = 0               # 0: from the lists (max label + 1); must match them
    head_drop: float = 0.0             # dropout before the head (paper: "dropout")
    drop: float = 0.0
    attn_drop: float = 0.0
    init_scale: float = 0.001
    use_mean_pooling: bool = True      # False: the norm of the first token (official --use_cls)
    model_ema: bool = False            # keep an exponential moving average of the weights
    model_ema_decay: float = 0.9999    # (official default; timm ModelEma)
    init: str | None = None            # checkpoint to start from (stage 1, stage 2, official, ...)
    head_map: str | None = None        # JSON list: row of the checkpoint's (K710) head per class
    # data (`data`: a folder with train.csv / val.csv, the official --data_path)
    train_list: str | None = None      # or the lists themselves
    val_list: str | None = None
    sparse_sample: bool = False        # TSN-style segments (SSv2)
    short_side_size: int = 224
    flip: bool = True
    aa: str = "rand-m7-n4-mstd0.5-inc1"
    min_crop_scale: float = 0.08
    reprob: float = 0.25
    # mixing and loss
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.1
    layer_decay: float = 0.75
    # validation
    validate: bool = True              # single-view validation each epoch, best checkpoint kept
    # defaults of the shared fields
    drop_path: float = 0.1
    num_sample: int = 2
    output_dir: str = "runs/finetune"
    preset: str = "none"

    STAGE: ClassVar[str] = "finetune"
    HELP: ClassVar[dict] = {
        "init": "checkpoint to start from: stage-1 (decoder dropped), stage-2, official or ours",
        "head_map": "JSON list mapping each class to a row of the checkpoint's head (K710 -> K400/600/"
                    "700); default for --dataset k400/k600/k700: found or generated, see the README",
        "dataset": "k400 | k600 | k700 | k710 | ssv2 | ucf101 | hmdb51 | diving48 | mit: its classes, "
                   "flip and sampling (over the preset's); empty for your own data",
        "data": "folder with train.csv and val.csv (`path label`); omit for the embedded dataset",
        "num_classes": "0: from the lists (max label + 1); otherwise must match them",
        "lr": "base lr per 256 videos of total batch (repeated-augmentation views not counted)",
        "resume": "auto (newest checkpoint in --output-dir) | PATH | none",
        "decoder": "auto (DALI on a GPU, PyAV otherwise) | dali | pyav; DALI needs the lists' "
                   "indexes (python -m vmae2_fast.data.tools.index LIST --data-root DIR)",
        "teacher": "the frozen teacher's checkpoint (a classifier over the same classes)",
    }

    def check(self) -> None:
        super().check()
        if not 0 <= self.smoothing < 1:
            raise ConfigError(f"--smoothing must be in [0, 1), got {self.smoothing}")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"--layer-decay must be in (0, 1], got {self.layer_decay}")
        mixing = self.mixup_prob > 0 and (self.mixup > 0 or self.cutmix > 0)
        if mixing and (self.batch_size * self.num_sample) % 2:
            raise ConfigError(f"mixup pairs clip i with clip B-1-i and needs an even number of clips "
                             f"per batch; --batch-size {self.batch_size} x --num-sample "
                             f"{self.num_sample} is odd")
        if self.dataset:
            from .datasets import dataset_info
            dataset_info(self.dataset)
        if not 0 <= self.model_ema_decay < 1:
            raise ConfigError(f"--model-ema-decay must be in [0, 1), got {self.model_ema_decay}")
        if self.num_classes < 0:
            raise ConfigError("--num-classes must be >= 0 (0 takes it from the lists)")
        if self.parallelism == "fsdp":      # validation, best-checkpoint saves and the EMA are per process
            raise ConfigError("--parallelism fsdp is implemented for pre-training only; the "
                             "classification stages run with --parallelism ddp")


@dataclass
class PostPretrainConfig(FinetuneConfig):
    output_dir: str = "runs/post_pretrain"
    preset: str = "k710"
    STAGE: ClassVar[str] = "post_pretrain"


@dataclass
class DistillConfig(FinetuneConfig):
    teacher: str | None = None         # the teacher's checkpoint (a fine-tuned classifier)
    teacher_model: str = "vit_g"
    distill_temperature: float = 1.0
    output_dir: str = "runs/distill"
    preset: str = "k710"
    STAGE: ClassVar[str] = "distill"

    def check(self) -> None:
        super().check()
        if self.distill_temperature <= 0:
            raise ConfigError(f"--distill-temperature must be positive, got {self.distill_temperature}")
