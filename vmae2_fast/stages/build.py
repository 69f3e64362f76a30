"""The one set-up every stage shares.

A stage is a model, a loss (an object with ``compute_loss``, ``state_dict``, ``load_state_dict``
and ``on_epoch_end``, see `train.loop.Stage`) and a loader (`data.loaders`). Everything around
them is here, written once: the device and the process group (`session`), seeds, the optimiser
groups and schedules, the model wrapping (`train.parallelize`) and the Trainer (`build_trainer`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import random
from pathlib import Path

import numpy as np
import torch

from ..logs import setup_logging
from ..errors import ConfigError
from ..train.distributed import DEFAULT_TIMEOUT_S, DistInfo, barrier, cleanup, init_distributed
from ..train.loop import LoopSettings, Trainer, resolve_precision
from ..train.optim import build_adamw
from ..train.parallelize import parallelize
from ..train.run_lock import hold_output_dir
from ..train.schedule import run_schedules
from ..config.base import model_checkpointing
from .estimate import log_step_estimate

log = logging.getLogger("vmae2_fast")

__all__ = ["pick_device", "session", "seed_everything", "rank0_first", "build_trainer",
           "embedded_dataset", "apply_attention", "resolve_checkpointing", "model_checkpointing",
           "set_float32_matmul"]


def pick_device(name: str, dist: DistInfo | None = None) -> torch.device:
    """``auto``: CUDA when available, else the CPU; ``cuda`` under torchrun: this rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was requested but no CUDA device is available")
        if name == "cuda" and dist is not None:
            name = f"cuda:{dist.local_rank}"
    return torch.device(name)


@contextlib.contextmanager
def session(device_name: str, output_dir: str | None, *, exclusive: bool = False,
            dist_timeout: float = DEFAULT_TIMEOUT_S):
    """The device, the process group torchrun describes (none alone, collectives timing out after
    `dist_timeout` s) and logging, for one run; with `exclusive` (training), the output folder
    held for the run (`train.run_lock`: a second run on it is refused before any compute). The
    lock and the process group are released however the run ends. Yields ``(device, dist)``."""
    dist = init_distributed(pick_device(device_name).type, dist_timeout)
    lock = None
    try:
        device = pick_device(device_name, dist)
        setup_logging(output_dir, dist.is_main)
        if exclusive and output_dir:
            lock = hold_output_dir(output_dir, dist)
        yield device, dist
    finally:
        if lock is not None:
            lock.release()
        cleanup(dist)


def apply_attention(model: torch.nn.Module, backend: str, device: torch.device, precision: str):
    """Set `model`'s attention backend (`--attention`) for the device and the dtype attention
    runs in under `precision`; `auto` logs its choice, a named backend that cannot run is refused
    with the reason (models/attention.py). Returns the model."""
    from ..models.attention import set_attention_backend
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(precision, device),
                                                              torch.float32)
    return set_attention_backend(model, backend, device, dtype)


def resolve_checkpointing(cfg, device: torch.device, dist: DistInfo, num_classes: int | None = None):
    """`cfg` with `--activation-checkpointing auto` resolved, before any compute: on a GPU the
    least recompute whose planned peak (vmae2_fast.memory) fits the free memory of the tightest
    GPU of the run, logged with the numbers; a ConfigError with the largest batch that fits when
    nothing does. On a CPU, none."""
    from ..config import replace
    if cfg.activation_checkpointing != "auto":
        return cfg
    if device.type != "cuda":
        if dist.is_main:
            log.info("activation checkpointing: none (auto plans against a GPU's memory; on %s it "
                     "checkpoints nothing)", device.type)
        return replace(cfg, activation_checkpointing="none")
    from ..memory import HEADROOM, least_recompute, max_batch
    from ..memory.plan import recomputed_blocks, setup_from_config
    from ..train.distributed import all_gather_objects
    free = min(all_gather_objects(torch.cuda.mem_get_info(device)[0], dist))   # every rank decides alike
    budget = free * (1 - HEADROOM)
    setup = setup_from_config(cfg, "cuda", dist.world_size, num_classes)
    policy, tried = least_recompute(setup, budget)
    gib = 2 ** 30
    if policy is None:
        largest = max_batch(setup, "full", budget)
        fits = (f"the largest that fits is --batch-size {largest} with --activation-checkpointing full"
                if largest else "not even --batch-size 1 fits: use --parallelism fsdp over more GPUs")
        raise ConfigError(
            f"--batch-size {cfg.batch_size} ({setup.clips} clips per GPU) does not fit: even with "
            f"--activation-checkpointing full the planned peak is {tried['full'].peak_bytes / gib:.1f} "
            f"GiB, more than the {budget / gib:.1f} GiB that tensors may use of the {free / gib:.1f} GiB "
            f"free on {device} ({100 * HEADROOM:.0f} % kept free); {fits} "
            "(python -m vmae2_fast.plan shows the plan)")
    if dist.is_main:
        n, blocks = recomputed_blocks(setup, policy)
        log.info("activation checkpointing: %s, chosen by auto (%d of %d blocks recomputed): planned "
                 "peak %.1f GiB per GPU, %.1f GiB of %.1f GiB free may hold tensors%s", policy, n,
                 blocks, tried[policy].peak_bytes / gib, budget / gib, free / gib,
                 "" if policy == "none" else
                 f"; without checkpointing the peak would be {tried['none'].peak_bytes / gib:.1f} GiB")
    return replace(cfg, activation_checkpointing=policy)


def set_float32_matmul(device: torch.device, tf32: bool) -> str:
    """On CUDA, whether float32 matmuls and convolutions run on TF32 tensor cores (10-bit
    mantissa products, float32 accumulation; about 7x the IEEE float32 rate on an H100) or in
    IEEE float32. torch's flag is the one switch: the fused ops' Triton kernels read it
    (`ops.common.matmul_precision`) and so does inductor. The CPU is left as it is. Returns the
    log line that says which."""
    if device.type != "cuda":
        return "float32 matmuls: IEEE float32 (TF32 is a CUDA setting)"
    # torch's legacy flags, not `fp32_precision`: torch refuses to read a flag that the two APIs
    # set differently, and the fused ops read `allow_tf32`
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if tf32:
        return "float32 matmuls: TF32 tensor cores, torch's and the fused ops' (--no-tf32 turns them off)"
    return "float32 matmuls: IEEE float32 (--no-tf32)"


def seed_everything(seed: int, rank: int = 0, threads: int = 0) -> None:
    """Seeds of the host-side generators (data and masks use their own seeded generators) and,
    when ``threads`` > 0, torch's CPU thread count: a CPU reduction splits its work by thread, so
    the count changes the last bits of sums and, over a run, its numbers."""
    if threads > 0:
        torch.set_num_threads(threads)
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)


def rank0_first(dist: DistInfo, fn):
    """Run ``fn`` on rank 0 first (e.g. generating a dataset), then on the others."""
    if not dist.is_main:
        barrier(dist)
    out = fn()
    if dist.is_main:
        barrier(dist)
    return out


def embedded_dataset(dist: DistInfo):
    """The embedded synthetic dataset, generated once by rank 0 (the stages' default data)."""
    from ..data import ensure_synthetic_dataset
    synth = rank0_first(dist, ensure_synthetic_dataset)
    log.info("no --data given: using the embedded synthetic dataset in %s", synth.root)
    return synth


def _flops_and_peak(cfg, model, device: torch.device, precision: str, dist: DistInfo) -> dict:
    """The training FLOPs per clip of `model` (model, and with the recompute of its
    checkpointing) and the device's peak FLOP/s (--peak-tflops, else the GPU's from the table in
    vmae2_fast.flops): TFLOP/s, MFU and HFU in the log."""
    from ..flops import peak_flops, train_flops
    ratios = (cfg.mask_ratio, cfg.decoder_mask_ratio) if hasattr(cfg, "mask_ratio") else ()
    flops = train_flops(model, *ratios, checkpointing=model_checkpointing(cfg))
    peak = cfg.peak_tflops * 1e12 if cfg.peak_tflops else None
    if peak is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        try:
            peak = peak_flops(name, {"bf16": "bf16", "fp16": "fp16"}.get(precision, "fp32"))
        except ValueError as exc:
            if dist.is_main:
                log.info("MFU not logged: %s", exc)
    if dist.is_main:
        log.info("training FLOPs per clip: %.4g GFLOP (model), %.4g with the recompute%s",
                 flops.model / 1e9, flops.hardware / 1e9,
                 f"; peak {peak / 1e12:g} TFLOP/s per device for MFU" if peak else
                 "; no peak FLOP/s for MFU (--peak-tflops)")
    return {"flops_per_clip": (flops.model, flops.hardware), "peak_flops": peak}


def build_trainer(cfg, stage, model: torch.nn.Module, loader, device: torch.device, dist: DistInfo,
                  run_config: dict, *, layer_decay: float | None = None, ema=None) -> tuple[Trainer, dict]:
    """Optimiser groups, schedules, wrapping and the Trainer of one run; writes config.json.

    Returns the trainer and what the stage logs: peak lr, total batch, optimiser steps per epoch.
    """
    precision = resolve_precision(cfg.precision, device)
    log.info(set_float32_matmul(device, cfg.tf32))
    steps_per_epoch = loader.steps_per_epoch // cfg.accum_steps
    if steps_per_epoch == 0:
        raise ConfigError(f"{loader.steps_per_epoch} micro-batches per epoch is fewer than "
                         f"--accum-steps {cfg.accum_steps}")
    lr, lr_schedule, wd_schedule, total_batch = run_schedules(cfg, steps_per_epoch, dist.world_size)
    settings = LoopSettings(
        epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, accum_steps=cfg.accum_steps,
        clip_grad=cfg.clip_grad, precision=precision, max_nonfinite=cfg.max_nonfinite,
        log_every=cfg.log_every, save_every=cfg.save_every, save_every_steps=cfg.save_every_steps,
        keep_last=cfg.keep_last, max_bad_fraction=cfg.max_bad_fraction, output_dir=cfg.output_dir, progress=cfg.progress,
        tensorboard=cfg.tensorboard, max_steps=cfg.max_steps, sharded=cfg.parallelism == "fsdp",
        async_checkpoint=cfg.async_checkpoint, dist_timeout=cfg.dist_timeout,
        **_flops_and_peak(cfg, model, device, precision, dist))
    # a large model on a CPU: say how long before step 1 (from the model before FSDP shards it:
    # reading a sharded weight's shape on one process alone would wait for the others)
    if device.type == "cpu" and dist.is_main:
        log_step_estimate(model, cfg, steps_per_epoch, torch.bfloat16 if precision == "bf16" else torch.float32)
    wrapped = parallelize(model, device, dist, compile=cfg.compile, parallelism=cfg.parallelism,
                          fsdp_param_dtype=cfg.fsdp_param_dtype, fp8=cfg.fp8)
    # after the wrapping: FSDP replaces the parameters with sharded ones
    decay = {} if layer_decay is None else dict(layer_decay=layer_decay, num_layers=model.get_num_layers())
    optimizer = build_adamw(model, lr, cfg.weight_decay, tuple(cfg.betas), cfg.opt_eps, **decay)
    trainer = Trainer(stage, wrapped, optimizer, loader, lr_schedule, wd_schedule, settings, device,
                      dist, run_config, ema=ema)
    if dist.is_main:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.output_dir) / "config.json").write_text(json.dumps(run_config, indent=2))
    return trainer, {"lr": lr, "total_batch": total_batch, "steps_per_epoch": steps_per_epoch,
                     "precision": precision}
