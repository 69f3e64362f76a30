"""Per-iteration schedules (learning rate, weight decay) and LR scaling.

Same cosine-with-linear-warm-up as the official ``utils.cosine_scheduler``
(reference §5), except that the warm-up really starts at
``start_warmup_value``: the official scripts never pass it, so ``--warmup_lr``
had no effect and the warm-up always started at 0.
"""

from __future__ import annotations

import math

import numpy as np


def cosine_schedule(
    base_value: float,
    final_value: float,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: int = 0,
    start_warmup_value: float = 0.0,
    warmup_steps: int = -1,
) -> np.ndarray:
    """One value per iteration, ``epochs * steps_per_epoch`` in total.

    Warm-up: ``linspace(start_warmup_value, base_value, W)`` (ends exactly at
    ``base_value``), with ``W = warmup_steps`` if it is > 0, else
    ``warmup_epochs * steps_per_epoch``. Then, for ``i = 0..L-1`` over the
    ``L`` remaining iterations, ``final + 0.5 * (base - final) * (1 + cos(pi*i/L))``:
    the first post-warm-up value equals ``base_value`` again and the last one
    stays just above ``final_value`` (official behaviour).
    """
    for label, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
        if int(value) != value or value <= 0:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    if int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs!r}")
    if int(warmup_steps) != warmup_steps:
        raise ValueError(f"warmup_steps must be an integer, got {warmup_steps!r}")
    for label, value in (("base_value", base_value), ("final_value", final_value),
                         ("start_warmup_value", start_warmup_value)):
        if not math.isfinite(value):
            raise ValueError(f"{label} must be finite, got {value!r}")

    total = int(epochs) * int(steps_per_epoch)
    warmup_iters = int(warmup_steps) if warmup_steps > 0 else int(warmup_epochs) * int(steps_per_epoch)
    if warmup_iters > total:
        source = (f"warmup_steps={warmup_steps}" if warmup_steps > 0
                  else f"warmup_epochs={warmup_epochs} x steps_per_epoch={steps_per_epoch}")
        raise ValueError(
            f"warm-up ({warmup_iters} iterations from {source}) is longer than the whole run "
            f"({total} iterations = epochs={epochs} x steps_per_epoch={steps_per_epoch}); "
            "shorten the warm-up or train longer")

    warmup = np.linspace(start_warmup_value, base_value, warmup_iters, dtype=np.float64)
    remaining = total - warmup_iters
    i = np.arange(remaining, dtype=np.float64)
    cosine = final_value + 0.5 * (base_value - final_value) * (1.0 + np.cos(math.pi * i / max(remaining, 1)))
    schedule = np.concatenate([warmup, cosine])
    assert schedule.shape == (total,)
    return schedule


def scaled_lr(base_lr: float, total_batch: int, reference: int = 256) -> float:
    """Linear scaling rule: ``base_lr * total_batch / reference``.

    ``total_batch`` is what one optimiser step sees (per-GPU batch x GPUs x
    accumulation steps). The official code does not count the repeated
    augmentation factor (``num_sample``); callers choose what to pass.
    """
    if total_batch <= 0 or reference <= 0:
        raise ValueError(f"total_batch and reference must be > 0, got {total_batch} and {reference}")
    return float(base_lr) * float(total_batch) / float(reference)


def run_schedules(cfg, steps_per_epoch: int, world_size: int):
    """The per-iteration schedules of a run from its config (any stage's: the fields `lr`,
    `min_lr`, `warmup_lr`, `epochs`, `warmup_epochs`, `warmup_steps`, `weight_decay`,
    `batch_size`, `accum_steps`, `weight_decay_end`): learning rates scaled by the total batch of
    videos / 256, cosine with linear warm-up; weight decay cosine from `weight_decay` to
    `weight_decay_end` over the whole run without warm-up (the official `--weight_decay_end`;
    None keeps it constant, the official default).

    Returns (peak lr, lr per iteration, weight decay per iteration, total batch).
    """
    total_batch = cfg.batch_size * world_size * cfg.accum_steps
    lr = scaled_lr(cfg.lr, total_batch)
    lr_schedule = cosine_schedule(lr, scaled_lr(cfg.min_lr, total_batch), cfg.epochs, steps_per_epoch,
                                  cfg.warmup_epochs, scaled_lr(cfg.warmup_lr, total_batch), cfg.warmup_steps)
    wd_end = getattr(cfg, "weight_decay_end", None)
    wd_schedule = cosine_schedule(cfg.weight_decay, cfg.weight_decay if wd_end is None else wd_end,
                                  cfg.epochs, steps_per_epoch)
    return lr, lr_schedule, wd_schedule, total_batch
