"""Light-weight training metrics: JSON-lines log, optional TensorBoard, running means, and what
each log interval records besides the loss: throughput as TFLOP/s, MFU and HFU, and peak memory."""

from __future__ import annotations

import json
import logging
import math
import os
from collections import deque
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def _to_jsonable(value: Any) -> Any:
    """Turn tensors / NumPy scalars into plain Python values for json.dumps."""
    if isinstance(value, torch.Tensor):
        if value.ndim == 0:
            return float(value.detach().cpu())
        return value.detach().cpu().tolist()
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        return value.item()  # NumPy scalar
    return value


class JsonlLogger:
    """Appends one JSON object per :meth:`log` call to ``path`` and flushes it,
    so a crashed run keeps every line it logged."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def log(self, record: Mapping[str, Any]) -> None:
        if self._file is None:
            raise RuntimeError(f"JsonlLogger({self.path}) is closed")
        # allow_nan keeps NaN/inf visible (as NaN/Infinity) instead of crashing the run
        line = json.dumps(_to_jsonable(dict(record)), allow_nan=True)
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "JsonlLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TensorBoardLogger:
    """``SummaryWriter`` if TensorBoard is installed, otherwise a no-op that
    warns once (TensorBoard is an optional dependency)."""

    _warned = False  # class-wide: one warning per process, not per logger

    def __init__(self, log_dir: PathLike):
        self.log_dir = Path(log_dir)
        self._writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if not TensorBoardLogger._warned:
                TensorBoardLogger._warned = True
                logger.warning("TensorBoard is not installed, so no TensorBoard logs will be "
                               "written to %s; install it with `pip install tensorboard`.",
                               self.log_dir)
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def scalars(self, values: Mapping[str, Any], step: int) -> None:
        if self._writer is None:
            return
        for tag, value in values.items():
            if isinstance(value, torch.Tensor):
                value = float(value.detach().cpu())
            if value is None:
                continue
            self._writer.add_scalar(tag, float(value), global_step=int(step))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class RunningMean:
    """Mean of the last ``window`` values and of all values of a float series.

    Non-finite values are not filtered: a NaN loss should show up as nan.
    """

    def __init__(self, window: int = 20):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._window: deque[float] = deque(maxlen=window)
        self.total = 0.0
        self.count = 0
        self.last: Optional[float] = None

    def update(self, value: Any, n: int = 1) -> None:
        """Add ``value`` (a float or 0-d tensor) observed ``n`` times."""
        value = float(value.detach().cpu()) if isinstance(value, torch.Tensor) else float(value)
        for _ in range(min(n, self._window.maxlen)):
            self._window.append(value)
        self.total += value * n
        self.count += n
        self.last = value

    @property
    def window_avg(self) -> float:
        return sum(self._window) / len(self._window) if self._window else math.nan

    @property
    def global_avg(self) -> float:
        return self.total / self.count if self.count else math.nan

    def reset(self) -> None:
        self._window.clear()
        self.total, self.count, self.last = 0.0, 0, None

    def __str__(self) -> str:
        return f"{self.window_avg:.4f} ({self.global_avg:.4f})"


def throughput_record(clips: int, wall_s: float, flops_per_clip: tuple[int, int] | None,
                      peak_flops: float | None) -> dict:
    """Over one log interval of one process: achieved model TFLOP/s (`tflops`), and with the
    device's peak FLOP/s, MFU (model FLOPs / peak) and HFU (model + recomputed FLOPs / peak).
    `flops_per_clip` is (model, hardware) FLOPs per clip (`vmae2_fast.flops.train_flops`).
    Host arithmetic only: nothing here touches the device."""
    if not flops_per_clip or wall_s <= 0:
        return {}
    per_s = clips / wall_s
    out = {"tflops": per_s * flops_per_clip[0] / 1e12}
    if peak_flops:
        out["mfu"] = per_s * flops_per_clip[0] / peak_flops
        out["hfu"] = per_s * flops_per_clip[1] / peak_flops
    return out


def memory_record(device: torch.device) -> dict:
    """Peak memory since the previous call: on CUDA the most torch's allocator held
    (`max_mem_gib`, its peak then reset), on the CPU the process's peak resident set since it
    started (`max_rss_gib`). A host-side query, no device sync."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        return {"max_mem_gib": peak / 2 ** 30}
    try:
        import resource
    except ImportError:            # not on every platform
        return {}
    return {"max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2 ** 30}


def describe_interval(rec: Mapping[str, Any]) -> str:
    """The log line's words for `throughput_record` and `memory_record`."""
    words = []
    if "tflops" in rec:
        words.append(f"{rec['tflops']:.3g} TFLOP/s")
    if "mfu" in rec:
        words.append(f"MFU {100 * rec['mfu']:.1f} % HFU {100 * rec['hfu']:.1f} %")
    for key, what in (("max_mem_gib", "peak mem"), ("max_rss_gib", "peak RSS")):
        if key in rec:
            words.append(f"{what} {rec[key]:.2f} GiB")
    return (" " + " ".join(words)) if words else ""
