"""Manifests: every list format a user may bring, read into one record type.

Formats (official ones are space-separated, no header; paths are joined to ``data_root``):

* ``pretrain``  -- ``path start_idx total_frames [ignored]`` (``run_mae_pretraining.py``)
* ``cls``       -- ``path label`` (``VideoClsDataset``: Kinetics, UCF101, HMDB51, ...)
* ``rawframes`` -- ``frame_dir total_frames label`` (``RawFrameClsDataset``: SSv2 frames)
* ``csv``       -- comma-separated with a header naming the columns: ``path`` (or ``video``,
  ``filename``) is required; ``label``, ``start``, ``total`` (or ``frames``) are optional.

``kind="auto"`` picks ``csv`` when the first line is a comma-separated header with a path column,
``cls`` for two fields and ``pretrain`` for three or four (``rawframes`` has the same shape as
``pretrain``, so it must be named).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import List, Optional

__all__ = ["VideoEntry", "read_manifest", "detect_kind", "KINDS"]

KINDS = ("auto", "pretrain", "cls", "rawframes", "csv")
_PATH_COLS = ("path", "video", "filename", "file")
_TOTAL_COLS = ("total", "frames", "total_frames", "num_frames")


@dataclass
class VideoEntry:
    path: str                 # as joined to data_root
    rel: str                  # as written in the list
    label: Optional[int] = None
    start: int = 0
    total: int = -1           # frame count from the list; <= 0: unknown (the index supplies it)


def _join(root: str, path: str) -> str:
    return path if (not root or os.path.isabs(path)) else os.path.join(root, path)


def _first_line(list_file: str) -> str:
    with open(list_file, "r", encoding="utf-8") as f:
        for raw in f:
            if raw.strip():
                return raw.strip()
    raise ValueError(f"annotation list {list_file} is empty")


def detect_kind(list_file: str) -> str:
    line = _first_line(list_file)
    if "," in line and any(c.strip().lower() in _PATH_COLS for c in line.split(",")):
        return "csv"
    n = len(line.split())
    if n == 2:
        return "cls"
    if n in (3, 4):
        return "pretrain"
    raise ValueError(f"{list_file}: cannot tell the list format from its first line {line!r} "
                     f"(expected 'path label', 'path start total' or a CSV header with a path column)")


def _int(list_file, lineno, line, value, what) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{list_file}:{lineno}: {what} must be an integer: {line!r}") from None


def _read_csv(list_file: str, root: str) -> List[VideoEntry]:
    out = []
    with open(list_file, "r", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        path_col = next((cols[c] for c in _PATH_COLS if c in cols), None)
        if path_col is None:
            raise ValueError(f"{list_file}: the CSV header {reader.fieldnames} has no path column "
                             f"(one of {', '.join(_PATH_COLS)})")
        label_col = cols.get("label")
        start_col = cols.get("start")
        total_col = next((cols[c] for c in _TOTAL_COLS if c in cols), None)
        for lineno, row in enumerate(reader, start=2):
            rel = (row.get(path_col) or "").strip()
            if not rel:
                continue
            line = ",".join(str(v) for v in row.values())
            e = VideoEntry(_join(root, rel), rel)
            if label_col and (row.get(label_col) or "").strip():
                e.label = _int(list_file, lineno, line, row[label_col], "label")
            if start_col and (row.get(start_col) or "").strip():
                e.start = _int(list_file, lineno, line, row[start_col], "start")
            if total_col and (row.get(total_col) or "").strip():
                e.total = _int(list_file, lineno, line, row[total_col], "total")
            out.append(e)
    return out


def read_manifest(list_file: str, data_root: str = "", kind: str = "auto") -> List[VideoEntry]:
    """Read ``list_file`` (see the module docstring) into :class:`VideoEntry` records."""
    list_file = os.fspath(list_file)
    if kind not in KINDS:
        raise ValueError(f"unknown list kind {kind!r}; one of {', '.join(KINDS)}")
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"annotation list not found: {list_file}")
    if kind == "auto":
        kind = detect_kind(list_file)
    if kind == "csv":
        out = _read_csv(list_file, data_root)
    else:
        want = {"pretrain": (3, 4), "cls": (2,), "rawframes": (3,)}[kind]
        shape = {"pretrain": "path start_idx total_frames", "cls": "path label",
                 "rawframes": "frame_dir total_frames label"}[kind]
        out = []
        with open(list_file, "r", encoding="utf-8") as f:
            for lineno, raw in enumerate(f, start=1):
                line = raw.strip()
                if not line:
                    continue
                fields = line.split()
                if len(fields) not in want:
                    raise ValueError(f"{list_file}:{lineno}: expected '{shape}' ({kind} list), got "
                                     f"{len(fields)} field(s): {line!r}")
                e = VideoEntry(_join(data_root, fields[0]), fields[0])
                if kind == "pretrain":
                    e.start = _int(list_file, lineno, line, fields[1], "start_idx")
                    e.total = _int(list_file, lineno, line, fields[2], "total_frames")
                elif kind == "cls":
                    e.label = _int(list_file, lineno, line, fields[1], "label")
                else:
                    e.total = _int(list_file, lineno, line, fields[1], "total_frames")
                    e.label = _int(list_file, lineno, line, fields[2], "label")
                out.append(e)
    if not out:
        raise ValueError(f"annotation list {list_file} is empty")
    for e in out:
        if e.label is not None and e.label < 0:
            raise ValueError(f"{list_file}: label must be >= 0 ({e.rel} has {e.label})")
    return out
