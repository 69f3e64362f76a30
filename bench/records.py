"""A run's records: one JSON object a line, each appended, flushed and synced to disk when its
measurement completes, so that a killed run keeps what it measured. Every script in bench/ writes
them (through the harness, which re-exports this module) and render.py reads them back.

This module imports no torch: the GPU suite's driver (gpu_suite.py) writes its own records with
it and must not hold a CUDA context, or spend torch's import time, while its steps run.

The record schema, one object a line:

    {"record": "run", "bench": NAME, ...}        first: the environment and the settings
    {"record": "row", ...}                       one per measurement, when it completes
    {"record": "end", "load_avg_1m": X, "seconds": S}    last, written when the run finishes
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from vmae2_fast.errors import DataError

__all__ = ["Records", "read_records", "load_average"]


def load_average() -> float:
    """The 1-minute load average: how busy the machine was (the CPU runs here are shared)."""
    return round(os.getloadavg()[0], 2)


class Records:
    """A run's records file (`<stem>.jsonl`, replaced when a run of the same name starts). Every
    record is one line, written whole, flushed and synced before the call returns: a run killed
    at any point leaves every measurement it completed. Use it as a context manager: the end
    record is written only when the run finishes without an exception."""

    def __init__(self, stem: Path, bench: str, header: dict):
        self.path = Path(stem).with_suffix(".jsonl")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8")
        self._t0 = time.perf_counter()
        self.bench, self.rows = bench, 0
        self._write({"record": "run", "bench": bench, **header})

    def add(self, row: dict) -> None:
        """One measurement, on disk when this returns (and a line of progress on stderr)."""
        self._write({"record": "row", **row})
        self.rows += 1
        said = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                         if isinstance(v, (str, int, float)) and not isinstance(v, bool))
        print(f"[{self.bench}] {self.rows}: {said[:200]}", file=sys.stderr, flush=True)

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self._write({"record": "end", "load_avg_1m": load_average(),
                         "seconds": round(time.perf_counter() - self._t0, 1)})
        self._file.close()


def read_records(path) -> tuple[dict, list[dict], dict | None]:
    """(the run record, the rows, the end record or None when the run did not finish). A last
    line cut short (a kill during the write) is left out; any other bad line is an error."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:     # no newline after it: its write never completed
                break
            raise DataError(f"{path}:{i + 1}: not a JSON record") from None
    if not records or records[0].get("record") != "run":
        raise DataError(f"{path}: not a bench records file (its first line is not a run record)")
    rows = [{k: v for k, v in r.items() if k != "record"} for r in records if r.get("record") == "row"]
    end = next((r for r in records if r.get("record") == "end"), None)
    return records[0], rows, end
