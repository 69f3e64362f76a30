"""Annotation lists: every format a user may bring, read by one reader into one record type.

Formats (paths relative to ``data_root`` unless absolute; blank lines are skipped):

* ``pretrain``  -- ``path start_idx total_frames [ignored]``, space-separated, no header
  (``run_mae_pretraining.py``); ``total_frames < 0`` means "count the frames when decoding";
* ``cls``       -- ``path label`` (``VideoClsDataset``: Kinetics, UCF101, HMDB51, ...);
* ``rawframes`` -- ``frame_dir total_frames label`` (``RawFrameClsDataset``: SSv2 frames);
* ``csv``       -- comma-separated, either with a header naming the columns (``path`` or
  ``video``/``filename``/``file`` required; ``label``, ``start``, ``total``/``frames`` optional)
  or without one, as ``path,label`` or ``path,start,total`` rows.

``kind="auto"`` reads the format off the first line: a comma makes it CSV; two fields ``cls``;
three or four ``pretrain``, except that a reader that needs labels (``labels=True``) takes three
fields as ``rawframes`` (the only three-field format with a label). Reading does not touch the
listed files: a missing or unreadable video is reported by whoever opens it.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ..errors import DataError, MissingFileError

__all__ = ["VideoEntry", "KINDS", "read_list", "read_cls_list", "detect_kind"]

KINDS = ("auto", "pretrain", "cls", "rawframes", "csv")
PATH_COLUMNS = ("path", "video", "filename", "file")
TOTAL_COLUMNS = ("total", "frames", "total_frames", "num_frames")
_SHAPES = {"pretrain": ((3, 4), "path start_idx total_frames"), "cls": ((2,), "path label"),
           "rawframes": ((3,), "frame_dir total_frames label")}


@dataclass
class VideoEntry:
    path: str                 # as joined to data_root
    start: int = 0            # first frame (official lists; frame folders count from it)
    total: int = -1           # frame count from the list; <= 0: unknown (decode or index gives it)
    label: Optional[int] = None
    rel: str = ""             # as written in the list (default: path)

    def __post_init__(self):
        self.rel = self.rel or self.path


def _join(root: str, path: str) -> str:
    return path if (not root or os.path.isabs(path)) else os.path.join(root, path)


def _first_line(list_file: str) -> tuple[int, str]:
    with open(list_file, "r", encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            if raw.strip():
                return lineno, raw.strip()
    raise DataError(f"annotation list {list_file} is empty")


def detect_kind(list_file: str, labels: bool = False) -> str:
    """The format of ``list_file`` from its first line (see the module docstring)."""
    lineno, line = _first_line(list_file)
    if "," in line:
        return "csv"
    n = len(line.split())
    if n == 2:
        return "cls"
    if n == 3 and labels:
        return "rawframes"
    if n in (3, 4):
        return "pretrain"
    raise DataError(f"{list_file}:{lineno}: cannot tell the list format from this first line {line!r} "
                     f"(expected 'path label', 'path start total', 'frame_dir total label' or a CSV)")


def is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def _int(where: str, line: str, value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{where}: {what} must be an integer: {line!r}") from None


def _read_csv(list_file: str, root: str, default_start: int = 0) -> List[VideoEntry]:
    with open(list_file, "r", encoding="utf-8", newline="") as f:
        rows = [(n, row) for n, row in enumerate(csv.reader(f), start=1) if any(c.strip() for c in row)]
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0][1]]
    # A first row without any integer is a header; a header must name the path column.
    named = not any(is_int(c) for c in header)
    if named and not any(c in PATH_COLUMNS for c in header):
        raise DataError(f"{list_file}: the CSV header {rows[0][1]} has no path column "
                         f"(one of {', '.join(PATH_COLUMNS)})")
    if named:
        col = {c: i for i, c in enumerate(header)}
        path_i = next(col[c] for c in PATH_COLUMNS if c in col)
        label_i, start_i = col.get("label"), col.get("start")
        total_i = next((col[c] for c in TOTAL_COLUMNS if c in col), None)
        rows = rows[1:]
    out = []
    for lineno, row in rows:
        cells = [c.strip() for c in row]
        line, where = ",".join(row), f"{list_file}:{lineno}"
        if not named:                      # headerless: path,label or path,start,total
            if len(cells) not in (2, 3):
                raise DataError(f"{where}: expected 'path,label' or 'path,start,total' (a CSV "
                                 f"without header), got {len(cells)} field(s): {line!r}")
            e = VideoEntry(_join(root, cells[0]), start=default_start, rel=cells[0])
            if len(cells) == 2:
                e.label = _int(where, line, cells[1], "label")
            else:
                e.start = _int(where, line, cells[1], "start")
                e.total = _int(where, line, cells[2], "total")
            out.append(e)
            continue

        def cell(i):
            return cells[i] if i is not None and i < len(cells) else ""
        if not cell(path_i):
            continue
        e = VideoEntry(_join(root, cell(path_i)), start=default_start, rel=cell(path_i))
        if cell(label_i):
            e.label = _int(where, line, cell(label_i), "label")
        if cell(start_i):
            e.start = _int(where, line, cell(start_i), "start")
        if cell(total_i):
            e.total = _int(where, line, cell(total_i), "total")
        out.append(e)
    return out


def _read_plain(list_file: str, root: str, kind: str, default_start: int = 0) -> List[VideoEntry]:
    want, shape = _SHAPES[kind]
    out = []
    with open(list_file, "r", encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            fields, where = line.split(), f"{list_file}:{lineno}"
            if len(fields) not in want:
                raise DataError(f"{where}: expected '{shape}' ({kind} list), got {len(fields)} "
                                 f"field(s): {line!r}")
            e = VideoEntry(_join(root, fields[0]), start=default_start, rel=fields[0])
            if kind == "pretrain":
                e.start = _int(where, line, fields[1], "start_idx")
                e.total = _int(where, line, fields[2], "total_frames")
            elif kind == "cls":
                e.label = _int(where, line, fields[1], "label")
            else:
                e.total = _int(where, line, fields[1], "total_frames")
                e.label = _int(where, line, fields[2], "label")
            out.append(e)
    return out


def read_list(list_file, data_root: str = "", kind: str = "auto", *,
              labels: bool = False, start_idx: int = 0) -> List[VideoEntry]:
    """Read ``list_file`` (any format of the module docstring) into :class:`VideoEntry` records.

    ``labels=True``: every entry must carry a label (classification); ``kind="auto"`` then reads a
    three-field list as raw frames. ``start_idx``: the first frame number of a frame folder where
    the list has no start column (the official ``--start_idx``, 1 for the official frame lists;
    pre-training lines carry their own)."""
    list_file = os.fspath(list_file)
    if kind not in KINDS:
        raise ValueError(f"unknown list kind {kind!r}; one of {', '.join(KINDS)}")
    if not os.path.isfile(list_file):
        raise MissingFileError(f"annotation list not found: {list_file}")
    if kind == "auto":
        kind = detect_kind(list_file, labels)
    out = (_read_csv(list_file, data_root, start_idx) if kind == "csv"
           else _read_plain(list_file, data_root, kind, start_idx))
    if not out:
        raise DataError(f"annotation list {list_file} is empty")
    for e in out:
        if e.label is not None and e.label < 0:
            raise DataError(f"{list_file}: label must be >= 0 ({e.rel} has {e.label})")
        if labels and e.label is None:
            raise DataError(f"{list_file}: {e.rel} has no label; a classification list needs "
                             "'path label' lines (or a label column)")
    return out


def read_cls_list(list_file, data_root: str = "") -> List[Tuple[str, int]]:
    """A classification list as ``(path, label)`` pairs."""
    return [(e.path, e.label) for e in read_list(list_file, data_root, labels=True)]
