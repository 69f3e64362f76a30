"""Fed-step benchmark: the real pre-training step fed by the real loader, and how long it waits.

    python bench/throughput.py --data LIST --data-root DIR --decoder pyav [--workers 2]
    python bench/throughput.py --data LIST --data-root DIR --decoder dali --device cuda \\
        --model vit_b --batch 32 --num-sample 4 --precision bf16

(``bench/throughput.py`` hands over to this file when ``--data`` is given.) What runs is what a
``python -m vmae2_fast.pretrain`` run runs: the stage's config (`PretrainConfig`), the list and
its index (`loaders.load_list`), the loader (`loaders.pretrain_loader`: PyAV workers, or DALI),
the stage (`PretrainStage`: masks on the device, normalisation on the device, masked MSE) and
the loop's step (`Trainer.train_step`: autocast, backward, clipping, fused AdamW). Three phases in
one process, each after its own warm-up:

1. ``loader``: the loader alone, nothing else running: its own clips/s (and videos/s);
2. ``step``: the step alone, on one batch kept on the device: the step's own clips/s;
3. ``fed``: the step fed by the loader, as in training: clips/s, and the fraction of the wall
   time the loop spent waiting in ``next(loader)`` (``data_wait_frac``, as the run's metrics say).

A fed rate close to ``min(loader, step)`` with a small wait fraction means the loader keeps up
(decoding, cropping and the copy overlap the step); a large wait fraction means the GPU idles on
data. A clip is one view; a step has ``--batch`` videos x ``--num-sample`` views. On a GPU the
report gives MFU (`vmae2_fast.flops`). Writes bench/results/fed-step-<machine>-<model>-
<precision>-<decoder>.json and .md.
"""
from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from common import machine_name, machine_slug

from vmae2_fast import ops
from vmae2_fast.config import PretrainConfig
from vmae2_fast.data.loaders import DECODERS, choose_decoder, load_list, pretrain_loader
from vmae2_fast.stages.build import build_trainer
from vmae2_fast.stages.pretrain import PretrainStage, build_model
from vmae2_fast.train.distributed import DistInfo

__all__ = ["add_fed_step_flags", "fed_step_or", "run", "write"]


def add_fed_step_flags(p) -> None:
    """The flags of the fed-step mode (the step's own flags are bench/throughput.py's)."""
    g = p.add_argument_group("fed step (bench/fed_step.py): the step fed by the real loader")
    g.add_argument("--data", metavar="LIST", help="a pre-training list: time the step fed by its loader")
    g.add_argument("--data-root", default="", help="folder the list's paths are relative to")
    g.add_argument("--decoder", choices=DECODERS, default="auto")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                   help="PyAV DataLoader workers / DALI threads (--num-workers of a run)")
    g.add_argument("--dali-instances", type=int, default=1)
    g.add_argument("--num-sample", type=int, default=1, help="views per video (repeated augmentation)")
    g.add_argument("--rate", type=int, default=4, help="frame sampling rate")


def fed_step_or(run_step, write_step):
    """(run, write) that run the fed-step mode when ``--data`` is given, else the step-only ones."""
    return ((lambda args: run(args) if args.data else run_step(args)),
            (lambda report, out: write(report, out) if "fed" in report else write_step(report, out)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
        progress=False, epochs=1, warmup_epochs=0, log_every=10 ** 9)
    cfg.check()
    return cfg


def _time_loader(loader, n: int, device) -> float:
    """Seconds for ``n`` batches of a fresh pass (after one warm-up batch: workers, pipelines)."""
    it = _endless(loader)
    try:
        next(it)
        t0 = time.perf_counter()
        for _ in range(n):
            next(it)
        _sync(device)
        return time.perf_counter() - t0
    finally:
        it.close()


def _time_fed(trainer, loader, n: int, warmup: int, device) -> tuple[float, list]:
    """(seconds for ``n`` fed steps, per-step seconds spent in ``next(loader)``)."""
    it = _endless(loader)
    try:
        for _ in range(warmup):
            trainer.train_step([next(it)])
        _sync(device)
        waits, t0 = [], time.perf_counter()
        for _ in range(n):
            tw = time.perf_counter()
            batch = next(it)
            waits.append(time.perf_counter() - tw)
            trainer.train_step([batch])
        _sync(device)
        return time.perf_counter() - t0, waits
    finally:
        it.close()


def _mfu(args, model, device, clips_per_s: float):
    if device.type != "cuda":
        return None
    from vmae2_fast.flops import mfu, peak_flops, train_flops
    flops = train_flops(model, args.mask_ratio, args.decoder_mask_ratio, args.frames, args.size,
                        checkpointing="full" if args.activation_checkpointing else "none")
    try:
        peak = peak_flops(torch.cuda.get_device_name(device),
                          {"bf16": "bf16", "fp16": "fp16"}.get(args.precision, "fp32"))
    except ValueError:
        return None
    return mfu(clips_per_s, flops.model, peak)


def run(args) -> dict:
    device = torch.device(args.device)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(args, tmp)
        dist = DistInfo()
        ops.use_backend(cfg.kernels)
        decoder = choose_decoder(cfg.decoder, device)
        entries, index = load_list(cfg.data, cfg.data_root, decoder=decoder, labels=False)
        loader = pretrain_loader(entries, index, cfg, dist, device, decoder)
        torch.manual_seed(0)
        model = build_model(cfg).to(device)
        stage = PretrainStage(model, cfg, device, dist)
        trainer, info = build_trainer(cfg, stage, model, loader, device, dist, cfg.to_dict())
        clips = args.batch * args.num_sample

        loader_s = _time_loader(loader, args.steps, device)
        it = _endless(loader)
        batch = next(it)                            # one batch, kept (on the device) for phase 2
        it.close()
        for _ in range(args.warmup):
            trainer.train_step([batch])
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step([batch])
        _sync(device)
        step_s = time.perf_counter() - t0
        fed_s, waits = _time_fed(trainer, loader, args.steps, args.warmup, device)

    rate = lambda seconds: clips * args.steps / seconds     # noqa: E731
    fed = {"clips_per_s": rate(fed_s), "step_s": fed_s / args.steps,
           "data_wait_frac": sum(waits) / fed_s, "max_wait_s": max(waits),
           "mfu": _mfu(args, model, device, rate(fed_s))}
    return {
        "machine": machine_name(device), "device": str(device), "torch": torch.__version__,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "model": args.model, "clip": f"{args.frames}x{args.size}x{args.size}", "rate": args.rate,
        "batch_videos": args.batch, "views": args.num_sample, "clips_per_step": clips,
        "precision": info["precision"], "fused_ops": ops.active_backend(), "decoder": decoder,
        "decoder_requested": args.decoder, "workers": args.workers,
        "dali_instances": args.dali_instances, "videos": len(entries),
        "data": os.path.join(os.path.basename(os.path.dirname(os.path.abspath(args.data))),
                             os.path.basename(args.data)),
        "steps": args.steps, "warmup": args.warmup,
        "loader": {"clips_per_s": rate(loader_s), "videos_per_s": args.batch * args.steps / loader_s},
        "step": {"clips_per_s": rate(step_s), "step_s": step_s / args.steps,
                 "mfu": _mfu(args, model, device, rate(step_s))},
        "fed": fed,
    }


def write(report: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / (f"fed-step-{machine_slug(report['machine'])}-{report['model']}-"
                      f"{report['precision']}-{report['decoder']}")
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f} %"     # noqa: E731
    lo, st, fed = report["loader"], report["step"], report["fed"]
    threads = f", {report['threads']} intra-op threads" if report["threads"] else ""
    md = [f"# Fed pre-training step on {report['machine']}: {report['model']}, decoder {report['decoder']}",
          "",
          f"{report['model']}, clips {report['clip']} (frame stride {report['rate']}), {report['batch_videos']} "
          f"videos x {report['views']} views = {report['clips_per_step']} clips a step, {report['precision']}, "
          f"fused ops `{report['fused_ops']}`; data `{report['data']}` ({report['videos']} videos), decoder "
          f"{report['decoder']} (requested {report['decoder_requested']}), {report['workers']} workers / threads, "
          f"{report['dali_instances']} DALI pipeline(s); {report['steps']} timed steps per phase after "
          f"{report['warmup']} warm-up; torch {report['torch']}{threads}; 1-minute load average "
          f"{report['load_avg_1m'][0]} before / {report['load_avg_1m'][1]} after.", "",
          "| phase | clips/s | step (s) | waiting for data | MFU |", "|---|---|---|---|---|",
          f"| loader alone | {lo['clips_per_s']:.1f} | - | - | - |",
          f"| step alone (one resident batch) | {st['clips_per_s']:.1f} | {st['step_s']:.3f} | - | {pct(st['mfu'])} |",
          f"| **step fed by the loader** | **{fed['clips_per_s']:.1f}** | {fed['step_s']:.3f} | "
          f"{pct(fed['data_wait_frac'])} (longest {fed['max_wait_s']:.3f} s) | {pct(fed['mfu'])} |",
          "", "The loader keeps up when the fed rate is close to min(loader, step) and the wait is small."]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    return stem
