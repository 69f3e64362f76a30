"""The benchmark harness: what every script in bench/ shares, so that a script holds only what it
measures.

- timing: `sync` waits for the device; `timed` times one call (and its CUDA peak memory);
  `time_in_rounds` runs warm-up rounds, then timed rounds of one call of each, the order rotating
  every round so that a machine whose speed drifts slows every call alike;
- `environment`: where a run happened (machine, device, Python, torch, CUDA, cuDNN, driver,
  Triton, CPU model and cores, threads, the 1-minute load average);
- `result_stem`: a result's file name, `<out>/<bench>-<machine>[-<part>...]`;
- `Records`: a run's records, one JSON object a line, each appended, flushed and synced to disk
  when its measurement completes, so that a killed run keeps what it measured; `read_records`
  reads them back and `render.py` turns them into the Markdown and the PNG (both live in
  records.py, which imports no torch, and are re-exported here);
- `main`: a script's command line: parse, run, render, print the Markdown; a user error prints
  `error: ...` and gives exit code 2.

Bench scripts run as `python bench/<script>.py`: Python puts bench/ first on sys.path, so they
import this module as `harness`, without touching sys.path.
"""
from __future__ import annotations

import gc
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from records import Records, load_average, read_records

RESULTS = Path(__file__).resolve().parent / "results"

__all__ = ["RESULTS", "sync", "free", "is_oom", "Timing", "timed", "time_in_rounds", "machine_name",
           "environment", "load_average", "slug", "result_stem", "Records", "read_records", "add_out_flag",
           "main"]


# ------------------------------------------------------------------------------------------- timing

def sync(device) -> None:
    """Wait for the work queued on `device` (a CUDA device runs asynchronously)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device) -> None:
    """Give back what dropped references held (the CUDA caching allocator keeps freed blocks)."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


@dataclass
class Timing:
    seconds: list = field(default_factory=list)     # the timed calls
    first_s: float | None = None    # the first call, warm-up or not: compilation, first allocations
    peak_gib: float | None = None   # CUDA: the most one timed call allocated above what was resident
    result: object = None           # what the last call returned


def timed(fn: Callable, device) -> tuple[float, float | None, object]:
    """(seconds, GiB the call allocated above what was resident when it started or None off
    CUDA, what it returned); the device is synchronised before and after."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)      # every model and optimiser state held
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) - resident) / 2 ** 30 if cuda else None
    return seconds, peak, result


def time_in_rounds(calls: dict, rounds: int, warmup: int, device, *, prepare: Callable | None = None,
                   leave_on: Callable | None = None) -> dict:
    """{name: Timing}: `warmup` untimed rounds, then `rounds` timed ones, each round one call of
    each in an order that rotates every round (no call always runs first or after the same one).
    `prepare(name)` runs untimed before every call. A call that raises an exception for which
    `leave_on(exc)` is true (an out-of-memory error) leaves: it is deleted from `calls`, so that
    what it held can be freed, and its entry is None."""
    out = {name: Timing() for name in calls}
    for r in range(warmup + rounds):
        names = list(calls)
        k = r % max(len(names), 1)
        for name in names[k:] + names[:k]:
            if name not in calls:       # left earlier in this round
                continue
            if prepare is not None:
                prepare(name)
            try:
                seconds, peak, result = timed(calls[name], device)
            except Exception as exc:
                if leave_on is None or not leave_on(exc):
                    raise
                seconds = None
            if seconds is None:         # freed outside the except clause: its traceback holds the call's tensors
                del calls[name]
                out[name] = None
                free(device)
                continue
            t = out[name]
            t.first_s = seconds if t.first_s is None else t.first_s
            t.result = result
            if r >= warmup:
                t.seconds.append(seconds)
                if peak is not None:
                    t.peak_gib = max(t.peak_gib or 0.0, peak)
    return out


# ------------------------------------------------------------------------------------- environment

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_name(device=None) -> str:
    """The GPU's name for a CUDA device, else ``cpu-<model> x<cores>``."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device is None else torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{_cpu_model()} x{os.cpu_count()}"


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def _version(distribution: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(distribution)
    except Exception:       # noqa: BLE001 - not installed, or installed without metadata
        return None


def environment(device) -> dict:
    """What a report says about where it ran: machine, device, Python, torch, CPU model and
    cores, intra-op threads (CPU), the 1-minute load average at the start; on a GPU also CUDA,
    cuDNN, driver, Triton, the GPU's memory and compute capability."""
    device = torch.device(device)
    env = {"machine": machine_name(device), "device": str(device), "python": platform.python_version(),
           "torch": torch.__version__, "cpu": _cpu_model(), "cpu_cores": os.cpu_count(),
           "threads": torch.get_num_threads() if device.type == "cpu" else None,
           "load_avg_1m": load_average()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), driver=_driver_version(),
                   triton=_version("triton"), gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                   compute_capability=f"{props.major}.{props.minor}")
    return env


# ------------------------------------------------------------------------------------------- names

def slug(text: str, limit: int = 60) -> str:
    """`text` as a file-name part: lower case, each run of other characters one '-'."""
    s = "".join(c if c.isalnum() else "-" for c in text).lower()
    return "-".join(x for x in s.split("-") if x)[:limit]


def result_stem(out, bench: str, machine: str, *parts: str) -> Path:
    """`<out>/<bench>-<machine as a slug>[-<part>...]` (empty parts left out); `out` is created."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out / "-".join([bench, slug(machine), *(p for p in parts if p)])


# ------------------------------------------------------------------------------------ command line

def add_out_flag(parser) -> None:
    parser.add_argument("--out", default=str(RESULTS),
                        help="folder for the results: records (.jsonl), Markdown, PNG (default: bench/results)")


def main(parser, run: Callable, argv=None) -> int:
    """Parse `argv`, `path = run(args)` (the records it wrote), render them and print the
    Markdown. A user error prints `error: ...` and gives exit code 2 (vmae2_fast.cli.exit_code)."""
    from render import render
    from vmae2_fast.cli import exit_code
    args = parser.parse_args(argv)

    def body():
        print(render(run(args)).read_text())

    return exit_code(body)
