"""What each option of the fast pre-training step buys: torch.compile, activation checkpointing
and the attention backend, timed side by side in one run.

Every variant runs the same training step on its own copy of the same weights and the same clips:
masks drawn on the device, then (compiled or not) masks from the noise, model, masked MSE; then
backward and fused AdamW. The variants are timed in turns (one step of each, round after round),
so a noisy machine slows them alike, and the report gives each variant's median step time and its
ratio to the first variant (eager, no checkpointing, `--attention auto`).

    python bench/fast_step.py                                        # CPU: vit_micro and vit_s, small clips
    python bench/fast_step.py --models vit_b --device cuda --precision bf16 --frames 16 --size 224 --batch 32
    python bench/fast_step.py --models vit_g --device cuda --precision bf16 --batch 8 \\
        --variants eager:none:auto compile:none:auto compile:full:auto compile:2:auto

A variant is `eager|compile : none|full|K : <attention backend>`. Writes
bench/results/fast_step-<machine>-<clip>-<precision>.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_name, report_main  # noqa: E402

from vmae2_fast import ops
from vmae2_fast.masking import DualMasking
from vmae2_fast.models import build_pretrain_model
from vmae2_fast.models.attention import set_attention_backend
from vmae2_fast.train.optim import build_adamw

DEFAULT_VARIANTS = ["eager:none:auto", "compile:none:auto", "eager:full:auto", "compile:full:auto",
                    "eager:none:math"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(base, device, amp, variant, masking, video, gen):
    """(step function, setup seconds) of one variant: its own copy of the weights and optimiser."""
    mode, policy, attn = variant.split(":")
    model = copy.deepcopy(base)
    model.activation_checkpointing = policy
    set_attention_backend(model, attn, device, amp or torch.float32)
    opt = build_adamw(model, 1e-4, 0.05)

    def forward_loss(noise, choice):
        vis, dec = masking.from_noise(noise, choice)
        return model.loss(model(video, vis, dec), video, vis, dec)
    fn = torch.compile(forward_loss, fullgraph=True) if mode == "compile" else forward_loss

    def step():
        noise, choice = masking.draw(video.shape[0], gen)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = fn(noise, choice)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    step()                                      # compiles (compile variants) and allocates state
    sync(device)
    return step, time.perf_counter() - t0


def run_model(name, args, device) -> dict:
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    torch.manual_seed(0)
    base = build_pretrain_model(name, img_size=args.size, num_frames=args.frames).to(device)
    masking = DualMasking(base.grid, args.mask_ratio, args.decoder_mask_ratio, device=device)
    video = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    steps, setup = {}, {}
    for v in args.variants:
        steps[v], setup[v] = make_step(base, device, amp, v, masking, video, gen)
    times = {v: [] for v in args.variants}
    for _ in range(args.warmup):
        for v in args.variants:
            steps[v]()
    for _ in range(args.steps):                 # in turns: one step of each variant per round
        for v in args.variants:
            sync(device)
            t0 = time.perf_counter()
            steps[v]()
            sync(device)
            times[v].append(time.perf_counter() - t0)
    first = statistics.median(times[args.variants[0]])
    return {v: {"median_step_s": statistics.median(t), "clips_per_s": args.batch / statistics.median(t),
                "ratio_to_first": first / statistics.median(t), "first_step_s": setup[v]}
            for v, t in times.items()}


def run(args) -> dict:
    device = torch.device(args.device)
    ops.use_backend(args.kernels)
    return {"machine": machine_name(device), "device": str(device), "torch": torch.__version__,
            "clip": f"{args.frames}x{args.size}x{args.size}", "batch": args.batch,
            "precision": args.precision, "mask_ratio": args.mask_ratio,
            "decoder_mask_ratio": args.decoder_mask_ratio, "steps": args.steps, "fused_ops": args.kernels,
            "threads": torch.get_num_threads(),
            "models": {name: run_model(name, args, device) for name in args.models}}


def write(report: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in report["machine"]).strip("-").lower()
    stem = out_dir / f"fast_step-{slug}-{report['clip']}-{report['precision']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    md = [f"# Pre-training step options on {report['machine']}", "",
          f"Clips {report['clip']}, batch {report['batch']}, {report['precision']}, mask "
          f"{report['mask_ratio']} / decoder {report['decoder_mask_ratio']}, fused ops `{report['fused_ops']}`, "
          f"median of {report['steps']} steps timed in turns, torch {report['torch']}, "
          f"{report['threads']} threads.", "",
          "Variant = step (eager / compile) : activation checkpointing : attention backend. "
          "Ratio = the first variant's step time / this one's (above 1: faster). "
          "First step = compile + first run.", ""]
    for name, rows in report["models"].items():
        md += [f"## {name}", "", "| variant | step (s) | clips/s | ratio | first step (s) |", "|---|---|---|---|---|"]
        for v, r in rows.items():
            md.append(f"| {v} | {r['median_step_s']:.4f} | {r['clips_per_s']:.2f} | {r['ratio_to_first']:.2f}x "
                      f"| {r['first_step_s']:.1f} |")
        md.append("")
    stem.with_suffix(".md").write_text("\n".join(md))
    return stem


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vit_micro", "vit_s"])
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--mask-ratio", type=float, default=0.9)
    p.add_argument("--decoder-mask-ratio", type=float, default=0.5)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--kernels", default="auto", help="fused-op backend: auto | triton | cpp | reference")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return report_main(p, run, write, argv)


if __name__ == "__main__":
    sys.exit(main())
