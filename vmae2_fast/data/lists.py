"""Annotation lists in the official VideoMAE V2 formats (plain text, space-separated, no header).

* Pre-training (``--data_path`` of ``run_mae_pretraining.py``): ``path start_idx total_frames``,
  e.g. ``videos/a.mp4 0 -1``; ``total_frames < 0`` means "count the frames when decoding". A
  fourth field (seen in the official docs) is accepted and ignored.
* Classification (``train.csv`` / ``val.csv``): ``path label``.

Relative paths are joined to ``data_root``. Reading does not touch the listed files (a list can
hold millions of entries); a missing or unsupported file is reported by the dataset that opens it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, List, Tuple

__all__ = ["PretrainItem", "read_pretrain_list", "read_cls_list"]


@dataclass
class PretrainItem:
    path: str    # video file (joined to data_root)
    start: int   # first frame index; only meaningful for raw-frame folders (not supported yet)
    total: int   # frame count, or <= 0 when unknown (then the frames are counted on load)


def _join(data_root: str, path: str) -> str:
    return path if (not data_root or os.path.isabs(path)) else os.path.join(data_root, path)


def _lines(list_file: str) -> Iterator[Tuple[int, str, List[str]]]:
    """Yield ``(line_number, raw_line, fields)`` for non-blank lines."""
    list_file = os.fspath(list_file)
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"annotation list not found: {list_file}")
    with open(list_file, "r", encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if line:
                yield lineno, line, line.split()


def _bad(list_file: str, lineno: int, line: str, why: str) -> ValueError:
    return ValueError(f"{list_file}:{lineno}: {why}: {line!r}")


def read_pretrain_list(list_file: str, data_root: str = "") -> List[PretrainItem]:
    """Parse a pre-training list ``path start_idx total_frames [ignored]``."""
    items = []
    for lineno, line, fields in _lines(list_file):
        if len(fields) not in (3, 4):
            raise _bad(list_file, lineno, line,
                       f"expected 'path start_idx total_frames' (3 fields, optionally a 4th), "
                       f"got {len(fields)} field(s)")
        try:
            start, total = int(fields[1]), int(fields[2])
        except ValueError:
            raise _bad(list_file, lineno, line,
                       "start_idx and total_frames must be integers") from None
        items.append(PretrainItem(_join(data_root, fields[0]), start, total))
    if not items:
        raise ValueError(f"annotation list {list_file} is empty")
    return items


def read_cls_list(list_file: str, data_root: str = "") -> List[Tuple[str, int]]:
    """Parse a classification list ``path label``."""
    items = []
    for lineno, line, fields in _lines(list_file):
        if len(fields) != 2:
            raise _bad(list_file, lineno, line,
                       f"expected 'path label' (2 fields), got {len(fields)} field(s)")
        try:
            label = int(fields[1])
        except ValueError:
            raise _bad(list_file, lineno, line, "label must be an integer") from None
        if label < 0:
            raise _bad(list_file, lineno, line, "label must be >= 0")
        items.append((_join(data_root, fields[0]), label))
    if not items:
        raise ValueError(f"annotation list {list_file} is empty")
    return items
