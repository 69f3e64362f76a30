"""`python -m vmae2_fast.plan`: the memory plan of a run, its flags named as the run names them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import ConfigError
from .base import PRECISIONS, ClipModel, one_of

PLAN_PARALLELISMS = ("ddp", "fsdp", "none")


@dataclass
class PlanConfig(ClipModel):
    # the run, as pretrain / finetune name it (and ClipModel's fields)
    batch_size: int = 32               # videos per GPU per micro-batch
    num_sample: int = 4                # views per video (repeated augmentation)
    accum_steps: int = 1
    decoder_depth: int = 4
    mask_ratio: float = 0.9
    decoder_mask_ratio: float = 0.5
    num_classes: int | None = None     # plan the classifier (fine-tuning) with this many classes
    precision: str = "auto"            # auto: bf16 on cuda, fp32 on cpu
    activation_checkpointing: str = "auto"
    attention: str = "auto"
    parallelism: str = "ddp"
    num_gpus: int = 1                  # processes in all (torchrun's nodes x processes per node)
    fsdp_param_dtype: str = "fp32"
    device: str = "cuda"               # the device the plan is for: cuda | cpu
    # the device to fit
    gpu: str = ""                      # a GPU name of the table in vmae2_fast/flops.py
    memory_gib: float | None = None    # or its memory, GiB
    headroom: float = 0.10             # share of the memory left for what is not a tensor
    assumed_mfu: float = 0.40          # for the time estimate (hardware FLOPs / peak)
    json: bool = False

    HELP: ClassVar[dict] = {
        "batch_size": "videos per GPU per micro-batch (each gives --num-sample views)",
        "num_classes": "plan the classifier (fine-tuning) instead of pre-training",
        "activation_checkpointing": "none | full | K (every K-th block) | auto: the least recompute "
                                    "that fits --gpu / --memory-gib",
        "parallelism": "ddp (one process: nothing wrapped) | fsdp (sharded over --num-gpus) | none",
        "num_gpus": "processes in all (FSDP shards over them; DDP keeps a gradient bucket copy)",
        "device": "the device the plan is for: cuda (autocast and attention as on a GPU) | cpu",
        "gpu": "a GPU name (A100-40GB, A100-80GB, H100, H100-PCIe, H200): its memory for the "
               "largest batches and its peak for the time estimate",
        "memory_gib": "the device memory to fit, GiB (instead of --gpu)",
        "headroom": "share of the memory kept free for the CUDA context, NCCL, DALI and "
                    "fragmentation",
        "assumed_mfu": "utilisation of the GPU's peak assumed by the time estimate",
        "json": "print one JSON object instead of the table",
    }

    def check(self) -> None:
        from ..models.attention_backends import BACKENDS as ATTENTION_BACKENDS
        from ..models.vit import checkpoint_policy
        from ..models.zoo import model_spec
        model_spec(self.model)
        one_of("precision", self.precision, PRECISIONS)
        one_of("parallelism", self.parallelism, PLAN_PARALLELISMS)
        one_of("fsdp_param_dtype", self.fsdp_param_dtype, ("fp32", "bf16"))
        one_of("device", self.device, ("cuda", "cpu"))
        one_of("attention", self.attention, ATTENTION_BACKENDS)
        if self.activation_checkpointing != "auto":
            self.activation_checkpointing = checkpoint_policy(self.activation_checkpointing)
        for name in ("batch_size", "num_sample", "accum_steps", "num_gpus", "input_size", "num_frames",
                     "decoder_depth"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.memory_gib is not None and self.memory_gib <= 0:
            raise ConfigError(f"--memory-gib must be positive, got {self.memory_gib}")
        if not 0 <= self.headroom < 1:
            raise ConfigError(f"--headroom must be in [0, 1), got {self.headroom}")
        if not 0 < self.assumed_mfu <= 1:
            raise ConfigError(f"--assumed-mfu must be in (0, 1], got {self.assumed_mfu}")
        if self.precision == "fp16" and self.device == "cpu":
            raise ConfigError("--precision fp16 needs a CUDA device (use fp32 or bf16 on the CPU)")
        if self.num_classes is not None and self.num_classes < 0:
            raise ConfigError(f"--num-classes must be >= 0, got {self.num_classes}")
