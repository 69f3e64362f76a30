"""Fed-step benchmark: the real pre-training step fed by the real loader, and how long it waits.

    python bench/fed_step.py --data LIST --data-root DIR --decoder pyav [--workers 2]
    python bench/fed_step.py --data s3://bucket/shards --decoder pyav   # a shard set (make_shards)
    python bench/fed_step.py --data LIST --data-root DIR --decoder dali --device cuda \\
        --model vit_b --batch 32 --num-sample 4 --precision bf16

The step's flags are bench/throughput.py's (model, clip, batch, mask ratios, precision). What
runs is what a ``python -m vmae2_fast.pretrain`` run runs: the stage's config (`PretrainConfig`),
the list and its index (`loaders.load_list`), the loader (`loaders.pretrain_loader`: PyAV
workers, or DALI), the stage (`PretrainStage`: masks on the device, normalisation on the device, masked MSE) and
the loop's step (`Trainer.train_step`: autocast, backward, clipping, fused AdamW). Three phases in
one process, each after its own warm-up:

1. ``loader``: the loader alone, nothing else running: its own clips/s (and videos/s);
2. ``step``: the step alone, on one batch kept on the device: the step's own clips/s;
3. ``fed``: the step fed by the loader, as in training: clips/s, and the fraction of the wall
   time the loop spent waiting in ``next(loader)`` (``data_wait_frac``, as the run's metrics say).

A fed rate close to ``min(loader, step)`` with a small wait fraction means the loader keeps up
(decoding, cropping and the copy overlap the step); a large wait fraction means the GPU idles on
data. A clip is one view; a step has ``--batch`` videos x ``--num-sample`` views. On a GPU the
report gives MFU (`vmae2_fast.flops`). Needs PyAV (it reads videos). Writes
bench/results/fed-step-<machine>-<model>-<precision>-<decoder>.jsonl (one record per phase,
written when the phase is timed) and .md (render.py).

``--data`` is what a run's ``--data`` is: a list, or a shard set (`python -m
vmae2_fast.make_shards`: a folder holding shards.json, or a URL such as s3://bucket/prefix, read
with the AWS_* variables or ``--storage-options``). The record says which (``data_source``:
``list``, ``shards (local)``, ``shards (s3)``, ...), and a shard set's report names it in its file
name: ``...-pyav-shards-local``, ``...-pyav-shards-s3``.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time

import torch

import harness
from harness import Records, environment, result_stem, sync
from step_common import add_step_flags

from vmae2_fast import ops
from vmae2_fast.config import PretrainConfig
from vmae2_fast.data.loaders import DECODERS, choose_decoder, load_list, pretrain_loader
from vmae2_fast.data.shard_store import is_shard_location
from vmae2_fast.errors import MissingPackageError
from vmae2_fast.models.vit import checkpoint_policy
from vmae2_fast.stages.build import build_trainer
from vmae2_fast.stages.pretrain import PretrainStage, build_model
from vmae2_fast.train.distributed import DistInfo

__all__ = ["build_parser", "run", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_flags(p)
    p.add_argument("--activation-checkpointing", type=checkpoint_policy, default="none", metavar="none|full|K",
                   help="the run's activation checkpointing")
    p.add_argument("--steps", type=int, default=5, help="timed steps per phase")
    p.add_argument("--warmup", type=int, default=2)
    g = p.add_argument_group("data: the loader a pre-training run builds")
    g.add_argument("--data", metavar="LIST_OR_SHARDS", required=True,
                   help="a pre-training list, or a shard set: a folder holding shards.json, or a URL "
                        "(s3://bucket/prefix)")
    g.add_argument("--storage-options", default="", metavar="JSON",
                   help="fsspec options for a shard set at a URL (default: the AWS_* variables)")
    g.add_argument("--data-root", default="", help="folder the list's paths are relative to")
    g.add_argument("--decoder", choices=DECODERS, default="auto")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                   help="PyAV DataLoader workers / DALI threads (--num-workers of a run)")
    g.add_argument("--dali-instances", type=int, default=1)
    g.add_argument("--num-sample", type=int, default=1, help="views per video (repeated augmentation)")
    g.add_argument("--rate", type=int, default=4, help="frame sampling rate")
    return p


def _endless(loader):
    """The loader's batches, epoch after epoch."""
    for epoch in itertools.count():
        yield from loader(epoch)


def _config(args, output_dir: str) -> PretrainConfig:
    cfg = PretrainConfig(
        model=args.model, data=args.data, data_root=args.data_root, decoder=args.decoder,
        batch_size=args.batch, num_sample=args.num_sample, num_frames=args.frames,
        input_size=args.size, sampling_rate=args.rate, mask_ratio=args.mask_ratio,
        decoder_mask_ratio=args.decoder_mask_ratio, precision=args.precision,
        num_workers=args.workers, dali_instances=args.dali_instances, device=args.device,
        activation_checkpointing=args.activation_checkpointing, output_dir=output_dir,
        storage_options=args.storage_options,
        progress=False, epochs=1, warmup_epochs=0, log_every=10 ** 9)
    cfg.check()
    return cfg


def data_source(data: str) -> tuple[str, str]:
    """(what ``--data`` is: "list", "shards (local)", "shards (s3)", ...; a name for a report
    file's name: "", "shards-local", "shards-s3", ...)."""
    if not is_shard_location(data):
        return "list", ""
    scheme = data.split("://", 1)[0] if "://" in data and not data.startswith("file://") else "local"
    return f"shards ({scheme})", f"shards-{scheme}"


def _data_name(data: str) -> str:
    """The last two parts of ``--data``'s path (a URL: the URL)."""
    if "://" in data and not data.startswith("file://"):
        return data
    data = os.path.abspath(data.removeprefix("file://").rstrip("/"))
    return os.path.join(os.path.basename(os.path.dirname(data)), os.path.basename(data))


def _time_loader(loader, n: int, device) -> float:
    """Seconds for ``n`` batches of a fresh pass (after one warm-up batch: workers, pipelines)."""
    it = _endless(loader)
    try:
        next(it)
        t0 = time.perf_counter()
        for _ in range(n):
            next(it)
        sync(device)
        return time.perf_counter() - t0
    finally:
        it.close()


def _time_fed(trainer, loader, n: int, warmup: int, device) -> tuple[float, list]:
    """(seconds for ``n`` fed steps, per-step seconds spent in ``next(loader)``)."""
    it = _endless(loader)
    try:
        for _ in range(warmup):
            trainer.train_step([next(it)])
        sync(device)
        waits, t0 = [], time.perf_counter()
        for _ in range(n):
            tw = time.perf_counter()
            batch = next(it)
            waits.append(time.perf_counter() - tw)
            trainer.train_step([batch])
        sync(device)
        return time.perf_counter() - t0, waits
    finally:
        it.close()


def _mfu(args, model, device, clips_per_s: float):
    if device.type != "cuda":
        return None
    from vmae2_fast.flops import mfu, peak_flops, train_flops
    flops = train_flops(model, args.mask_ratio, args.decoder_mask_ratio, args.frames, args.size,
                        checkpointing=args.activation_checkpointing)
    try:
        peak = peak_flops(torch.cuda.get_device_name(device),
                          {"bf16": "bf16", "fp16": "fp16"}.get(args.precision, "fp32"))
    except ValueError:
        return None
    return mfu(clips_per_s, flops.model, peak)


def _needs_pyav() -> None:
    try:
        import av  # noqa: F401  (the package imports PyAV only where it reads a video)
    except ModuleNotFoundError as exc:
        if exc.name != "av":
            raise
        raise MissingPackageError("the fed step reads videos with PyAV, which is not installed: pip install av") from None


def run(args):
    _needs_pyav()
    device = torch.device(args.device)
    env = environment(device)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(args, tmp)
        dist = DistInfo()
        ops.use_backend(cfg.kernels)
        decoder = choose_decoder(cfg.decoder, device)
        entries, index = load_list(cfg.data, cfg.data_root, decoder=decoder, labels=False,
                                   storage_options=cfg.storage_options)
        source, source_part = data_source(cfg.data)
        loader = pretrain_loader(entries, index, cfg, dist, device, decoder)
        torch.manual_seed(0)
        model = build_model(cfg).to(device)
        stage = PretrainStage(model, cfg, device, dist)
        trainer, info = build_trainer(cfg, stage, model, loader, device, dist, cfg.to_dict())
        clips = args.batch * args.num_sample
        rate = lambda seconds: clips * args.steps / seconds     # noqa: E731
        header = {
            **env, "model": args.model, "clip": f"{args.frames}x{args.size}x{args.size}", "rate": args.rate,
            "batch_videos": args.batch, "views": args.num_sample, "clips_per_step": clips,
            "precision": info["precision"], "fused_ops": ops.active_backend(), "decoder": decoder,
            "decoder_requested": args.decoder, "workers": args.workers,
            "dali_instances": args.dali_instances, "videos": len(entries),
            "data": _data_name(args.data) if source == "list" else f"{source} {_data_name(args.data)}",
            "data_source": source,
            "steps": args.steps, "warmup": args.warmup}
        stem = result_stem(args.out, "fed-step", env["machine"], args.model, info["precision"], decoder,
                           source_part)
        with Records(stem, "fed-step", header) as records:
            loader_s = _time_loader(loader, args.steps, device)
            records.add({"phase": "loader", "clips_per_s": rate(loader_s),
                         "videos_per_s": args.batch * args.steps / loader_s})
            it = _endless(loader)
            batch = next(it)                            # one batch, kept (on the device) for the step alone
            it.close()
            for _ in range(args.warmup):
                trainer.train_step([batch])
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step([batch])
            sync(device)
            step_s = time.perf_counter() - t0
            records.add({"phase": "step", "clips_per_s": rate(step_s), "step_s": step_s / args.steps,
                         "mfu": _mfu(args, model, device, rate(step_s))})
            fed_s, waits = _time_fed(trainer, loader, args.steps, args.warmup, device)
            records.add({"phase": "fed", "clips_per_s": rate(fed_s), "step_s": fed_s / args.steps,
                         "data_wait_frac": sum(waits) / fed_s, "max_wait_s": max(waits),
                         "mfu": _mfu(args, model, device, rate(fed_s))})
    return records.path


def main(argv=None) -> int:
    return harness.main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
