"""What the step benchmarks (bench/throughput.py, bench/step_breakdown.py) share: the flags that fix
the step, the optimiser settings, the device sync, autocast, where a run happened, result names."""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
from pathlib import Path

import torch

from common import machine_name

LR, WEIGHT_DECAY, BETAS = 1e-4, 0.05, (0.9, 0.95)

__all__ = ["LR", "WEIGHT_DECAY", "BETAS", "sync", "autocast_for", "environment", "result_stem",
           "add_step_flags", "official_adamw"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_for(device: torch.device, precision: str):
    """A factory of autocast contexts for `precision` (fp32: autocast disabled)."""
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if amp is None:
        return lambda: torch.autocast(device.type, enabled=False)
    return lambda: torch.autocast(device.type, dtype=amp)


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:
        return None


def environment(device: torch.device, load_before: float) -> dict:
    """What a report says about where it ran: machine, Python, torch (and CUDA, cuDNN, driver,
    Triton on a GPU), threads, the 1-minute load average before and after."""
    env = {"machine": machine_name(device), "device": str(device), "python": platform.python_version(),
           "torch": torch.__version__, "threads": torch.get_num_threads() if device.type == "cpu" else None,
           "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), driver=_driver_version(),
                   triton=_version("triton"), gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                   compute_capability=f"{props.major}.{props.minor}")
    return env


def result_stem(report: dict, out_dir: Path, kind: str) -> Path:
    """out_dir/<kind>-<machine>-<model>-<precision>[-<frames>x<size>-b<batch>][-<tag>] (shape only
    when not the default; the tag when the report has one)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in report["machine"]).strip("-").lower()
    shape = "" if (report["clip"], report["batch"]) == ("16x224x224", 2) else \
        f"-{report['clip'].rsplit('x', 1)[0]}-b{report['batch']}"
    tag = f"-{report['tag']}" if report.get("tag") else ""     # runs that differ in other flags
    return out_dir / f"{kind}-{slug}-{report['model']}-{report['precision']}{shape}{tag}"


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


def official_adamw(model):
    """The optimiser the official `optim_factory` builds for `--opt adamw`: torch's AdamW with
    its default implementation (for-each on CUDA, per-tensor on the CPU), not the fused one."""
    from vmae2_fast.train.optim import param_groups
    return torch.optim.AdamW(param_groups(model, WEIGHT_DECAY), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
