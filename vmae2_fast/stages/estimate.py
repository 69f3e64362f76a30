"""How long a step will take on this CPU, said before the first one.

A CPU run of a large model (the card's `python -m vmae2_fast.pretrain --model vit_g`, 1.4 TFLOP
of training per clip, 128 clips a step) takes tens of minutes per step, with nothing on the
screen until the first log line. Before the first step the run logs the estimate: the FLOP model
(`flops.train_flops`, per clip) times the clips of one optimiser step, at the rate this machine's
matrix multiplies reach in the run's dtype (measured here for a fraction of a second), and, when
an epoch would take more than `SLOW_EPOCH_S`, the command that tries the same training in minutes.
A real step is slower than the estimate (attention, norms, element-wise work and the data run
below the matmul rate): it is a lower bound, said to be one.
"""
from __future__ import annotations

import logging
import re
import time

import torch

from ..config.base import model_checkpointing
from ..flops import train_flops

log = logging.getLogger("vmae2_fast")

__all__ = ["matmul_flops_per_s", "step_estimate", "log_step_estimate", "SLOW_EPOCH_S"]

SLOW_EPOCH_S = 600.0                       # an epoch longer than this names the quick command


def matmul_flops_per_s(dtype: torch.dtype = torch.float32, size: int = 512, seconds: float = 0.1) -> float:
    """FLOP/s of `size`-square matmuls in `dtype` on the CPU with torch's current thread count,
    timed for about `seconds` after one warm-up product."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    n, t0 = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return 2.0 * size ** 3 * n / elapsed


def step_estimate(model, cfg, steps_per_epoch: int, rate: float) -> dict:
    """Seconds per optimiser step and per epoch of `model` (built) under `cfg` at `rate` FLOP/s:
    training FLOPs per clip (with the recompute of activation checkpointing) x clips per step
    (batch_size x num_sample views x accum_steps)."""
    per_clip = train_flops(model, getattr(cfg, "mask_ratio", None), getattr(cfg, "decoder_mask_ratio", None),
                           checkpointing=model_checkpointing(cfg)).hardware
    clips = cfg.batch_size * cfg.num_sample * cfg.accum_steps
    step_s = per_clip * clips / rate
    return {"flops_per_clip": per_clip, "clips_per_step": clips, "rate": rate, "step_s": step_s,
            "epoch_s": step_s * steps_per_epoch}


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def quick_command(cfg) -> str:
    """The same stage with the `cpu_demo` preset (small clips, ViT-S): minutes on a 2-core CPU."""
    command = re.sub(r"(?<!^)(?=[A-Z])", "_", type(cfg).__name__.removesuffix("Config")).lower()
    data = f" --data {cfg.data}" + (f" --data-root {cfg.data_root}" if cfg.data_root else "") if cfg.data else ""
    return f"python -m vmae2_fast.{command} --model vit_s --preset cpu_demo{data}"


def log_step_estimate(model, cfg, steps_per_epoch: int, dtype: torch.dtype, rate: float | None = None) -> dict:
    """Log the estimate (CPU runs; the caller decides) and return it; `rate` None: measured."""
    rate = matmul_flops_per_s(dtype) if rate is None else rate
    est = step_estimate(model, cfg, steps_per_epoch, rate)
    recompute = (", with activation checkpointing's recompute"
                 if cfg.activation_checkpointing not in ("none", "auto") else "")
    msg = (f"estimated time on this CPU: at least {_duration(est['step_s'])} per optimiser step, "
           f"{_duration(est['epoch_s'])} per epoch ({steps_per_epoch} steps): "
           f"{est['flops_per_clip'] / 1e12:.3g} TFLOP per clip (FLOP model, training{recompute}) x "
           f"{est['clips_per_step']} clips per step at {rate / 1e9:.3g} GFLOP/s (this machine's "
           f"{str(dtype).removeprefix('torch.')} matmuls, measured now; a real step is slower)")
    if est["epoch_s"] > SLOW_EPOCH_S and cfg.preset != "cpu_demo":
        msg += f". To try the same training in minutes: {quick_command(cfg)}"
    log.info(msg)
    return est
