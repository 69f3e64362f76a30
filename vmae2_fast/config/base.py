"""The fields every training stage shares: model size, data, optimiser, schedule and run control.

Conventions for every config (stage configs extend `RunConfig`; the tools have their own):
- every CLI flag overrides the field of the same name (dashes for underscores), after the preset;
- `check()` raises ValueError with the flag to change; the CLIs call it before any compute;
- learning rates (`lr`, `min_lr`, `warmup_lr`) are per 256 VIDEOS of total batch (batch_size x
  processes x accum_steps); repeated-augmentation views do NOT count, as in the official code.
  Example: ViT-g pre-training, 64 GPUs x 32 videos x 4 views at lr 6e-4 gives 6e-4 x 2048 / 256 =
  4.8e-3, the paper's 1.5e-4 per 256 views x 8192 views.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DECODERS = ("auto", "dali", "pyav")


@dataclass
class ClipModel:
    """The model and the clip it sees: what a run and its memory plan (config/plan.py) share."""
    model: str = "vit_b"
    input_size: int = 224
    num_frames: int = 16
    tubelet_size: int = 2


@dataclass
class RunConfig(ClipModel):
    # model (and ClipModel's fields)
    drop_path: float = 0.0
    # none | full | K (every K-th block) | auto: on a GPU, the least recompute whose planned peak
    # fits its free memory (vmae2_fast.memory; none on a CPU). A bare --activation-checkpointing
    # is full, and the true/false of older configs mean full/none
    activation_checkpointing: str = field(default="auto", metadata={"bare": "full", "no": "none"})
    attention: str = "auto"            # auto | sdpa | sdpa-{flash,efficient,cudnn,math} | math | flash-attn2 | flash-attn3 | xformers
    # official model options (every released model leaves them at these values)
    init_values: float = 0.0           # layer scale gamma init (0: off)
    learnable_pos_emb: bool = False    # a learned (1, N, C) position table instead of the sinusoid
    cos_attn: bool = False             # cosine attention with a learned per-head logit scale
    qk_scale: float | None = None      # attention scale (None: head_dim ** -0.5)
    # data
    data: str | None = None            # the stage's list or folder; None: the embedded dataset
    data_root: str = ""
    storage_options: str = ""          # shard sets at a URL: fsspec options as JSON (default: AWS_* env)
    sampling_rate: int = 4
    num_sample: int = 1                # repeated augmentation: views per decoded clip
    num_workers: int = 8
    decoder: str = "auto"              # auto (DALI on a GPU, PyAV otherwise) | dali | pyav
    dali_instances: int = 1            # independent DALI pipelines per process (several NVDECs)
    max_bad_fraction: float = 0.5      # stop when more of an epoch's videos than this cannot be read
    fname_tmpl: str = "img_{:05}.jpg"  # frame folders: file name of frame i (official --fname_tmpl)
    start_idx: int = 1                 # frame folders: number of the first frame (classification lists;
                                       # pre-training lists give it per line, as officially)
    # optimisation
    batch_size: int = 16               # videos per process per micro-batch
    accum_steps: int = 1
    epochs: int = 30
    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_lr: float = 0.0
    warmup_epochs: int = 5
    warmup_steps: int = -1
    weight_decay: float = 0.05
    weight_decay_end: float | None = None   # cosine weight-decay schedule to this value (None: constant)
    betas: tuple[float, float] = (0.9, 0.999)
    opt_eps: float = 1e-8
    clip_grad: float | None = None
    precision: str = "auto"            # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
    tf32: bool = True                  # CUDA: float32 matmuls (torch's and the fused ops' Triton
                                       # dots) on TF32 tensor cores; --no-tf32: IEEE float32
    max_nonfinite: int = 20            # abort after this many non-finite losses in a row
    # run
    output_dir: str = "runs/out"
    resume: str = "auto"               # auto | a checkpoint path | none
    trust_checkpoint: bool = False     # unpickle code in --init/--resume/--teacher files (trusted only)
    save_every: int = 5                # epochs between numbered checkpoints (and the last one)
    save_every_steps: int = 0          # also checkpoint-last.pth every N optimiser steps (0: off)
    keep_last: int = 0                 # keep only the newest K numbered checkpoints (0: all)
    async_checkpoint: bool = False     # write checkpoints in the background while training goes on
    dist_timeout: float = 1800.0       # seconds a collective may wait for the other processes
    log_every: int = 20                # optimiser steps between log lines (the only host syncs)
    tensorboard: bool = False
    progress: bool = True
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    fp8: bool = False                  # the encoder's linear layers in FP8 (torchao float8; sm_89+,
                                       # emulated on a CPU): pip install 'vmae2_fast[fp8]'
    peak_tflops: float | None = None   # peak TFLOP/s of one device for MFU in the log (default: the
                                       # GPU's, from vmae2_fast.flops; none on a CPU)
    # several processes: ddp (every size's default; S/B should keep it) or fsdp (FSDP2: weights,
    # gradients and AdamW state sharded over the processes, for ViT-L/H/g; pre-training only)
    parallelism: str = "ddp"
    fsdp_param_dtype: str = "fp32"     # fsdp: bf16 gathers and computes in bf16, reduces in fp32
    max_steps: int = 0                 # stop after this many optimiser steps (0: run all epochs)
    threads: int = 0                   # CPU threads of torch's ops (0: torch's default); pinned for
                                       # runs that must give the same numbers every time
    preset: str = ""
    preset_model: str = ""             # take the preset's values of this model size (sizes without one)

    def __post_init__(self):
        from ..models.vit import checkpoint_policy      # 'none' | 'full' | 'K', or ValueError
        if str(self.activation_checkpointing).strip().lower() == "auto":
            self.activation_checkpointing = "auto"     # resolved at run time (stages/build.py)
        else:
            self.activation_checkpointing = checkpoint_policy(self.activation_checkpointing)

    def check(self) -> None:
        """Raise ValueError naming the flag to change for any value that cannot work."""
        from ..models.attention_backends import BACKENDS as ATTENTION_BACKENDS
        one_of("attention", self.attention, ATTENTION_BACKENDS)
        for name in ("batch_size", "accum_steps", "epochs", "num_sample", "sampling_rate",
                     "dali_instances", "input_size", "num_frames", "save_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{flag(name)} must be at least 1, got {getattr(self, name)}")
        if self.num_frames % self.tubelet_size:
            raise ConfigError(f"--num-frames {self.num_frames} is not divisible by --tubelet-size "
                             f"{self.tubelet_size}")
        one_of("precision", self.precision, PRECISIONS)
        one_of("decoder", self.decoder, DECODERS)
        from ..train.parallelize import FSDP_PARAM_DTYPES, PARALLELISMS
        one_of("parallelism", self.parallelism, PARALLELISMS)
        one_of("fsdp_param_dtype", self.fsdp_param_dtype, FSDP_PARAM_DTYPES)
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ConfigError(f"--peak-tflops must be positive, got {self.peak_tflops}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ConfigError("--clip-grad must be positive (omit it to disable clipping)")
        if self.dist_timeout <= 0:
            raise ConfigError(f"--dist-timeout must be a positive number of seconds, got {self.dist_timeout:g}")
        from ..data.shard_store import parse_storage_options
        parse_storage_options(self.storage_options)
        if not 0 <= self.max_bad_fraction <= 1:
            raise ConfigError(f"--max-bad-fraction must be in [0, 1], got {self.max_bad_fraction}")
        for name in ("num_workers", "keep_last", "save_every_steps", "max_steps", "warmup_epochs",
                     "threads", "init_values"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{flag(name)} must be >= 0, got {getattr(self, name)}")

        if self.cos_attn and self.qk_scale is not None:
            raise ConfigError("--cos-attn learns its own logit scale: drop --qk-scale (the official "
                             "code crashes on this combination)")
        if self.qk_scale is not None and self.qk_scale <= 0:
            raise ConfigError(f"--qk-scale must be positive, got {self.qk_scale}")
        check_frame_template(self.fname_tmpl)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d


def flag(name: str) -> str:
    return name.replace("_", "-")


def one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"--{flag(name)} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def check_frame_template(template: str) -> None:
    try:
        name = template.format(1)
    except (IndexError, KeyError, ValueError) as exc:
        raise ConfigError(f"--fname-tmpl {template!r} is not a Python format string with one field "
                         f"for the frame number, like 'img_{{:05}}.jpg' ({exc})") from None
    if name == template:
        raise ConfigError(f"--fname-tmpl {template!r} has no field for the frame number; use e.g. "
                         "'img_{:05}.jpg'")


def replace(cfg, **overrides):
    """A copy of `cfg` with `overrides`; unknown names raise with the list of valid ones."""
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown config field(s) {unknown}; valid: {sorted(names)}")
    return dataclasses.replace(cfg, **overrides)


def model_checkpointing(cfg) -> str:
    """The policy a model is built with: `auto` not resolved yet (a model built outside a run)
    checkpoints nothing."""
    return "none" if cfg.activation_checkpointing == "auto" else cfg.activation_checkpointing
