"""Pre-training throughput: vmae2_fast against the official step, side by side in one run.

Every implementation runs a full training step (forward, masked-MSE loss, backward, AdamW update)
from the SAME initial weights on the same clips; the steps are interleaved (one step of each in
turn) so that a machine whose speed drifts slows them alike.

- `official`, the baseline, is one of two (the report's `baseline` field says which):
  - `official-code` (with `--official-repo PATH`): the user's checkout of OpenGVLab/VideoMAEv2,
    run as it is (`bench/official_code.py`): its `PretrainVisionTransformer` with our weights
    copied in, masks from its own generators (made beforehand, as its loader workers do), the
    target and loss statements of its `engine_for_pretraining.py`, and `torch.optim.AdamW` as its
    `optim_factory` builds it. The re-statement below is then timed too, as `re-statement`, to
    check that it still costs what the official code costs;
  - `re-statement` (no flag): `vmae2_fast.testing.baseline`, our independent re-statement of
    the official computation (same operations, dtypes and order) on our model's parameters,
    with NumPy host masks and the same optimiser as the official code;
- `ours`: `vmae2_fast` (masks drawn on the device inside the step, visible-cube embedding,
  SDPA attention, targets for the decoded tokens only, fused ops backend as selected, fused AdamW).

    python bench/throughput.py                                   # CPU: ViT-S, 2 clips of 16x224^2
    python bench/throughput.py --official-repo ~/src/VideoMAEv2  # baseline: the real official code
    python bench/throughput.py --device cuda --model vit_b --batch 32 --precision bf16
    python bench/throughput.py --device cuda --model vit_g --batch 8 --activation-checkpointing

Writes bench/results/throughput-<machine>-<model>-<precision>[-<frames>x<size>-b<batch>].json and
.md (machine = GPU name or CPU model; the clip and batch appear when they are not the defaults).
On a GPU the peak memory is what a step allocates above what is resident when it starts (all the
models and optimiser states the run holds), so that the implementations compare.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_name, report_main  # noqa: E402

from vmae2_fast import ops
from vmae2_fast.testing import baseline
from vmae2_fast.masking import DualMasking
from vmae2_fast.models import build_pretrain_model, count_parameters
from vmae2_fast.models.zoo import model_spec
from vmae2_fast.train.optim import build_adamw, param_groups

from official_code import OfficialMasks, build_official_model, load_official_code  # noqa: E402

LR, WEIGHT_DECAY, BETAS = 1e-4, 0.05, (0.9, 0.95)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_for(device: torch.device, precision: str):
    """A factory of autocast contexts for `precision` (fp32: autocast disabled)."""
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if amp is None:
        return lambda: torch.autocast(device.type, enabled=False)
    return lambda: torch.autocast(device.type, dtype=amp)


def environment(device: torch.device, load_before: float) -> dict:
    """What a report says about where it ran: machine, torch, threads, load before and after."""
    return {"machine": machine_name(device), "device": str(device), "torch": torch.__version__,
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def result_stem(report: dict, out_dir: Path, kind: str) -> Path:
    """out_dir/<kind>-<machine>-<model>-<precision>[-<frames>x<size>-b<batch>] (shape only when not the default)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in report["machine"]).strip("-").lower()
    shape = "" if (report["clip"], report["batch"]) == ("16x224x224", 2) else \
        f"-{report['clip'].rsplit('x', 1)[0]}-b{report['batch']}"
    return out_dir / f"{kind}-{slug}-{report['model']}-{report['precision']}{shape}"


def add_step_flags(p: argparse.ArgumentParser) -> None:
    """The flags that fix the step (shared by bench/throughput.py and bench/step_breakdown.py)."""
    p.add_argument("--model", default="vit_s")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--mask-ratio", type=float, default=0.9)
    p.add_argument("--decoder-mask-ratio", type=float, default=0.5)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--official-repo", metavar="PATH",
                   help="a checkout of github.com/OpenGVLab/VideoMAEv2: time its real model and loss as the "
                        "baseline (default: the re-statement vmae2_fast/testing/baseline.py)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))


def time_interleaved(steps: dict, n_steps: int, warmup: int, device) -> dict:
    """{name: (step times, peak GiB above the resident memory, or None)}, one step of each in turn;
    the order rotates every round so that no implementation always runs first."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    sync(device)
    times = {name: [] for name in steps}
    peaks = dict.fromkeys(steps, 0.0 if device.type == "cuda" else None)
    names = list(steps)
    for r in range(n_steps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            step = steps[name]
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                resident = torch.cuda.memory_allocated(device)  # every model and optimiser state
            t0 = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - t0)
            if device.type == "cuda":  # what the step adds on top of what all of them keep resident
                peaks[name] = max(peaks[name], (torch.cuda.max_memory_allocated(device) - resident) / 2 ** 30)
    return {name: (times[name], peaks[name]) for name in steps}


def official_adamw(model):
    """The optimiser the official `optim_factory` builds for `--opt adamw`: torch's AdamW with
    its default implementation (for-each on CUDA, per-tensor on the CPU), not the fused one."""
    return torch.optim.AdamW(param_groups(model, WEIGHT_DECAY), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)


def baseline_steps(args, model, video, device, autocast) -> tuple[dict, dict]:
    """The baseline's step functions ({"official": step} or, with --official-repo, {"official":
    the official code, "re-statement": ours}) and what the report says about the baseline."""
    n = args.steps + args.warmup
    spec = model_spec(args.model)
    cfg = dict(patch_size=spec.patch_size, tubelet_size=2, encoder_depth=spec.depth,
               encoder_num_heads=spec.num_heads, decoder_depth=4, decoder_num_heads=spec.decoder_num_heads)
    rng = np.random.default_rng(0)
    host_masks = iter([baseline.numpy_masks(args.batch, model.grid, args.mask_ratio, args.decoder_mask_ratio, rng)
                       for _ in range(n)])
    params, tables, restatement_opt = dict(model.named_parameters()), {}, official_adamw(model)

    def step_restatement():
        enc, dec = next(host_masks)
        with autocast():
            loss, _, _ = baseline.pretrain_forward_loss(params, cfg, video, enc, dec, tables)
        loss.backward()
        restatement_opt.step()
        restatement_opt.zero_grad()

    if not args.official_repo:
        return {"official": step_restatement}, {"baseline": "re-statement", "official_code": None}

    code = load_official_code(args.official_repo)
    official = build_official_model(code, args.model, img_size=args.size, num_frames=args.frames,
                                    with_cp=args.activation_checkpointing)
    official.load_state_dict(model.state_dict(), strict=True)  # same weights; key names are official
    official.to(device).train()
    official_opt = official_adamw(official)
    gen = OfficialMasks(code, model.grid, args.mask_ratio, args.decoder_mask_ratio)
    official_masks = iter([gen(args.batch) for _ in range(n)])

    def step_official():
        enc, dec = next(official_masks)
        with autocast():
            loss, _, _ = code.forward_loss(official, (video, enc, dec), device, spec.patch_size)
        loss.backward()
        official_opt.step()
        official_opt.zero_grad()

    meta = {"baseline": "official-code",
            "official_code": {"repo": str(code.repo), "commit": code.commit, "timm": code.timm}}
    return {"official": step_official, "re-statement": step_restatement}, meta


def run(args) -> dict:
    device = torch.device(args.device)
    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    model = build_pretrain_model(args.model, img_size=args.size, num_frames=args.frames,
                                 activation_checkpointing=args.activation_checkpointing).to(device)
    video = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device)
    masking = DualMasking(model.grid, args.mask_ratio, args.decoder_mask_ratio, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    autocast = autocast_for(device, args.precision)
    steps, meta = baseline_steps(args, model, video, device, autocast)
    opt = build_adamw(model, LR, WEIGHT_DECAY, betas=BETAS)

    def step_ours():
        vis, dec = masking(args.batch, gen)
        with autocast():
            pred = model(video, vis, dec)
            loss = model.loss(pred, video, vis, dec)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    steps["ours"] = step_ours
    results = {}
    for name, (times, peak) in time_interleaved(steps, args.steps, args.warmup, device).items():
        med = statistics.median(times)
        results[name] = {"median_step_s": med, "min_step_s": min(times), "max_step_s": max(times),
                         "clips_per_s": args.batch / med, "peak_mem_gib": peak, "step_s": times}
    def paired(a, b):  # median over rounds of a's step / b's step in the same round: robust to drift
        return statistics.median(x / y for x, y in zip(results[a]["step_s"], results[b]["step_s"]))

    report = {
        **environment(device, load_before), **meta,
        "model": args.model, "params_m": round(count_parameters(model) / 1e6, 3),
        "clip": f"{args.frames}x{args.size}x{args.size}", "batch": args.batch,
        "precision": args.precision, "mask_ratio": args.mask_ratio,
        "decoder_mask_ratio": args.decoder_mask_ratio, "fused_ops": ops.active_backend(),
        "activation_checkpointing": args.activation_checkpointing, "steps": args.steps,
        "results": results, "speedup": results["official"]["median_step_s"] / results["ours"]["median_step_s"],
        "paired_speedup": paired("official", "ours"),
    }
    if "re-statement" in results:
        report["restatement_over_official"] = (results["re-statement"]["median_step_s"]
                                               / results["official"]["median_step_s"])
        report["paired_restatement_over_official"] = paired("re-statement", "official")
    return report


def baseline_title(report: dict) -> str:
    if report["baseline"] == "official-code":
        c = report["official_code"]
        commit = f" at {c['commit'][:7]}" if c["commit"] else ""
        return f"the official code (OpenGVLab/VideoMAEv2{commit}, timm: {c['timm']})"
    return "the re-statement of the official code (`vmae2_fast/testing/baseline.py`), not the official code itself"


def write(report: dict, out_dir: Path) -> Path:
    stem = result_stem(report, out_dir, "throughput")
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    r = report["results"]
    mem = lambda x: "n/a" if x["peak_mem_gib"] is None else f"{x['peak_mem_gib']:.2f}"  # noqa: E731
    threads = f", {report['threads']} thread{'s' * (report['threads'] != 1)}" if report["threads"] else ""
    md = [f"# Pre-training step throughput on {report['machine']}: ours vs {baseline_title(report)}", "",
          f"Baseline: **{report['baseline']}**. {report['model']} ({report['params_m']} M params), clips "
          f"{report['clip']}, batch {report['batch']}, {report['precision']}, mask {report['mask_ratio']} / decoder "
          f"{report['decoder_mask_ratio']}, fused ops `{report['fused_ops']}`, {report['steps']} interleaved steps "
          f"each, torch {report['torch']}{threads}, 1-minute load average {report['load_avg_1m'][0]} before / "
          f"{report['load_avg_1m'][1]} after.", "",
          "| implementation | median step (s) | range (s) | clips/s | step peak above resident memory (GiB) |",
          "|---|---|---|---|---|"]
    for name, x in r.items():
        label = f"official ({report['baseline']})" if name == "official" else name
        md.append(f"| {label} | {x['median_step_s']:.4f} | {x['min_step_s']:.3f}-{x['max_step_s']:.3f} "
                  f"| {x['clips_per_s']:.2f} | {mem(x)} |")
    md += ["", f"Speed-up (official step time / ours): **{report['speedup']:.2f}x** (ratio of the medians; "
           f"median of the per-round ratios: {report['paired_speedup']:.2f}x)"]
    if "restatement_over_official" in report:
        md.append(f"Re-statement step time / official-code step time: {report['restatement_over_official']:.2f} "
                  f"(per-round median {report['paired_restatement_over_official']:.2f})")
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    return stem


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_flags(p)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--activation-checkpointing", action="store_true")
    from fed_step import add_fed_step_flags, fed_step_or    # --data LIST: the step fed by its loader
    add_fed_step_flags(p)
    return report_main(p, *fed_step_or(run, write), argv)


if __name__ == "__main__":
    sys.exit(main())
