"""Configs of the classification stages: post-pre-training (K710), specific fine-tuning,
distillation. Same conventions as `config.PretrainConfig`: every CLI flag overrides the field of
the same name; `lr`, `min_lr`, `warmup_lr` are per 256 videos of total batch (repeated-augmentation
views not counted, as in the official code)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class FinetuneConfig:
    # model
    model: str = "vit_b"
    num_classes: int = 0               # 0: from the lists (max label + 1); must match them
    input_size: int = 224
    num_frames: int = 16
    tubelet_size: int = 2
    drop_path: float = 0.1
    head_drop: float = 0.0             # dropout before the head (paper: "dropout")
    drop: float = 0.0
    attn_drop: float = 0.0
    init_scale: float = 0.001
    activation_checkpointing: bool = False
    init: str | None = None            # checkpoint to start from (stage 1, stage 2, official, ...)
    head_map: str | None = None        # JSON list: row of the checkpoint's (K710) head per class
    # data
    data: str | None = None            # folder with train.csv / val.csv (official --data_path)
    train_list: str | None = None      # or the lists themselves
    val_list: str | None = None
    data_root: str = ""
    sampling_rate: int = 4
    sparse_sample: bool = False        # TSN-style segments (SSv2)
    num_sample: int = 2                # repeated augmentation
    short_side_size: int = 224
    flip: bool = True
    aa: str = "rand-m7-n4-mstd0.5-inc1"
    min_crop_scale: float = 0.08
    reprob: float = 0.25
    num_workers: int = 8
    # mixing and loss
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.1
    # optimisation
    batch_size: int = 16               # videos per process per micro-batch
    accum_steps: int = 1
    epochs: int = 30
    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_lr: float = 0.0             # the official warm-up starts at 0
    warmup_epochs: int = 5
    warmup_steps: int = -1
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    betas: tuple[float, float] = (0.9, 0.999)
    opt_eps: float = 1e-8
    clip_grad: float | None = None
    precision: str = "auto"
    max_nonfinite: int = 20
    # validation
    validate: bool = True              # single-view validation each epoch, best checkpoint kept
    # run
    output_dir: str = "runs/finetune"
    resume: str = "auto"
    save_every: int = 5
    keep_last: int = 0
    log_every: int = 20
    tensorboard: bool = False
    progress: bool = True
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    max_steps: int = 0
    preset: str = "k400"

    def validate_fields(self) -> None:
        for name in ("batch_size", "accum_steps", "epochs", "num_sample", "sampling_rate",
                     "input_size", "num_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.num_frames % self.tubelet_size:
            raise ValueError(f"--num-frames {self.num_frames} is not divisible by --tubelet-size "
                             f"{self.tubelet_size}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"--precision must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError("--clip-grad must be positive (omit it to disable clipping)")
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"--smoothing must be in [0, 1), got {self.smoothing}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"--layer-decay must be in (0, 1], got {self.layer_decay}")
        mixing = self.mixup_prob > 0 and (self.mixup > 0 or self.cutmix > 0)
        if mixing and (self.batch_size * self.num_sample) % 2:
            raise ValueError(f"mixup pairs clip i with clip B-1-i and needs an even number of clips "
                             f"per batch; --batch-size {self.batch_size} x --num-sample "
                             f"{self.num_sample} is odd")
        if self.num_classes < 0:
            raise ValueError("--num-classes must be >= 0 (0 takes it from the lists)")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(d["betas"])
        return d


@dataclass
class PostPretrainConfig(FinetuneConfig):
    output_dir: str = "runs/post_pretrain"
    preset: str = "k710"


@dataclass
class DistillConfig(FinetuneConfig):
    teacher: str | None = None         # the teacher's checkpoint (a fine-tuned classifier)
    teacher_model: str = "vit_g"
    distill_temperature: float = 1.0
    output_dir: str = "runs/distill"
    preset: str = "k710"
