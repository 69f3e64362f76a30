"""What the pre-training step benchmarks (bench/throughput.py, bench/step_breakdown.py,
bench/fed_step.py) share: the flags that fix the step, the optimiser settings, autocast and the
parts of a result's name."""
from __future__ import annotations

import argparse

import torch

from harness import add_out_flag

LR, WEIGHT_DECAY, BETAS = 1e-4, 0.05, (0.9, 0.95)

__all__ = ["LR", "WEIGHT_DECAY", "BETAS", "autocast_for", "add_step_flags", "add_official_repo_flag",
           "official_adamw", "step_name_parts"]


def autocast_for(device: torch.device, precision: str):
    """A factory of autocast contexts for `precision` (fp32: autocast disabled)."""
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if amp is None:
        return lambda: torch.autocast(device.type, enabled=False)
    return lambda: torch.autocast(device.type, dtype=amp)


def add_step_flags(p: argparse.ArgumentParser) -> None:
    """The flags that fix the step: model, clip shape, batch, mask ratios, precision, device."""
    p.add_argument("--model", default="vit_s")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--mask-ratio", type=float, default=0.9)
    p.add_argument("--decoder-mask-ratio", type=float, default=0.5)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_out_flag(p)


def add_official_repo_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--official-repo", metavar="PATH",
                   help="a checkout of github.com/OpenGVLab/VideoMAEv2: time its real model and loss as the "
                        "`official` row (without it the baseline is the `re-statement` row, "
                        "vmae2_fast/testing/baseline.py)")


def step_name_parts(args, batch=None, tag: str = "") -> list[str]:
    """<model>-<precision>[-<frames>x<size>-b<batch>][-<tag>]: the shape only when it is not the
    default (16x224, batch 2; a sweep's batch is `sweep`), the tag when given (runs of one shape
    that differ in other flags)."""
    batch = args.batch if batch is None else batch
    shape = "" if (args.frames, args.size, batch) == (16, 224, 2) else f"{args.frames}x{args.size}-b{batch}"
    return [args.model, args.precision, shape, tag]


def official_adamw(model):
    """The optimiser the official `optim_factory` builds for `--opt adamw`: torch's AdamW with
    its default implementation (for-each on CUDA, per-tensor on the CPU), not the fused one."""
    from vmae2_fast.train.optim import param_groups
    return torch.optim.AdamW(param_groups(model, WEIGHT_DECAY), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
