"""Pre-training throughput: vmae2_fast against an official-style step, side by side in one run.

Both run a full training step (forward, masked-MSE loss, backward, AdamW update) on the SAME
parameters and the same clips:

- `official`: `vmae2_fast.testing.baseline`, the official computation as the official code does it
  (Conv3d on every token, boolean-mask indexing, explicit-softmax attention, host-side position
  tables copied to the device each step, targets for the whole video then selected); its masks
  are made with NumPy on the host beforehand (in the official code they come from the loader
  workers, so their cost is not counted against it);
- `ours`: `vmae2_fast` (masks drawn on the device inside the step, visible-cube embedding,
  SDPA attention, targets for the decoded tokens only, fused ops backend as selected).

    python bench/throughput.py                                   # CPU: ViT-S, 2 clips of 16x224^2
    python bench/throughput.py --device cuda --model vit_b --batch 32 --precision bf16
    python bench/throughput.py --device cuda --model vit_g --batch 8 --activation-checkpointing

Writes bench/results/throughput-<machine>.json and .md (machine = GPU name or CPU model).
"""
from __future__ import annotations

import argparse
import json
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
from vmae2_fast.train.optim import build_adamw


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, steps, warmup, device):
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def run(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_pretrain_model(args.model, img_size=args.size, num_frames=args.frames,
                                 activation_checkpointing=args.activation_checkpointing).to(device)
    spec = model_spec(args.model)
    cfg = dict(patch_size=spec.patch_size, tubelet_size=2, encoder_depth=spec.depth,
               encoder_num_heads=spec.num_heads, decoder_depth=4, decoder_num_heads=spec.decoder_num_heads)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    video = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device)
    masking = DualMasking(model.grid, args.mask_ratio, args.decoder_mask_ratio, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    rng = np.random.default_rng(0)
    host_masks = [baseline.numpy_masks(args.batch, model.grid, args.mask_ratio, args.decoder_mask_ratio, rng)
                  for _ in range(args.steps + args.warmup)]
    opt = build_adamw(model, 1e-4, 0.05)
    params = dict(model.named_parameters())
    tables: dict = {}
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else (lambda: torch.autocast(device.type, enabled=False))
    it = iter(host_masks)

    def step_official():
        enc, dec = next(it)
        with autocast():
            loss, _, _ = baseline.pretrain_forward_loss(params, cfg, video, enc, dec, tables)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def step_ours():
        vis, dec = masking(args.batch, gen)
        with autocast():
            pred = model(video, vis, dec)
            loss = model.loss(pred, video, vis, dec)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    results = {}
    for name, step in (("official", step_official), ("ours", step_ours)):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        it = iter(host_masks)
        times = time_steps(step, args.steps, args.warmup, device)
        med = statistics.median(times)
        results[name] = {"median_step_s": med, "clips_per_s": args.batch / med,
                         "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30
                         if device.type == "cuda" else None}
    return {
        "machine": machine_name(device), "device": str(device), "torch": torch.__version__,
        "model": args.model, "params_m": round(count_parameters(model) / 1e6, 3),
        "clip": f"{args.frames}x{args.size}x{args.size}", "batch": args.batch,
        "precision": args.precision, "mask_ratio": args.mask_ratio,
        "decoder_mask_ratio": args.decoder_mask_ratio, "fused_ops": ops.active_backend(),
        "activation_checkpointing": args.activation_checkpointing, "steps": args.steps,
        "results": results, "speedup": results["official"]["median_step_s"] / results["ours"]["median_step_s"],
    }


def write(report: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in report["machine"]).strip("-").lower()
    stem = out_dir / f"throughput-{slug}-{report['model']}-{report['precision']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    r = report["results"]
    mem = lambda x: "n/a" if x["peak_mem_gib"] is None else f"{x['peak_mem_gib']:.2f}"  # noqa: E731
    md = [f"# Pre-training step throughput on {report['machine']}", "",
          f"{report['model']} ({report['params_m']} M params), clips {report['clip']}, batch {report['batch']}, "
          f"{report['precision']}, mask {report['mask_ratio']} / decoder {report['decoder_mask_ratio']}, "
          f"fused ops `{report['fused_ops']}`, median of {report['steps']} steps, torch {report['torch']}.", "",
          "| implementation | step (s) | clips/s | peak memory (GiB) |", "|---|---|---|---|"]
    for name in ("official", "ours"):
        md.append(f"| {name} | {r[name]['median_step_s']:.4f} | {r[name]['clips_per_s']:.2f} | {mem(r[name])} |")
    md += ["", f"Speed-up (official step time / ours): **{report['speedup']:.2f}x**", ""]
    stem.with_suffix(".md").write_text("\n".join(md))
    return stem


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_s")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--mask-ratio", type=float, default=0.9)
    p.add_argument("--decoder-mask-ratio", type=float, default=0.5)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return report_main(p, run, write, argv)


if __name__ == "__main__":
    sys.exit(main())
