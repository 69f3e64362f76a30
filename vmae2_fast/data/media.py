"""What a list line names, whichever decoder reads it: a video file, or a frame folder (one image
per frame, the official raw-frame layout), and the one error an unreadable one raises.

Frame ``i`` (0-based) of a folder is ``folder / template.format(start + i)``; the official defaults
are ``img_{:05}.jpg`` and start 1 (``--fname_tmpl``, ``--start_idx``), and a pre-training list gives
the start per line (``frame_dir start_idx total_frames``). The PyAV datasets, the DALI loader and
the index name frame files with these rules, so a folder means the same frames to all three.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List

__all__ = ["VideoDecodeError", "EncodedVideo", "DEFAULT_TEMPLATE", "DEFAULT_START", "FrameLayout",
           "frame_file", "scan_frame_folder"]

DEFAULT_TEMPLATE = "img_{:05}.jpg"
DEFAULT_START = 1


class VideoDecodeError(RuntimeError):
    """A video or frame folder could not be opened, decoded, or has fewer frames than requested;
    the message names the file. Datasets catch this one type to skip and count a bad clip."""


class EncodedVideo(str):
    """A video held in memory (a record of a shard): the string is the name every message and
    `skipped.jsonl` line uses (``shard-url#key``), ``data`` the encoded file's bytes. Being a
    string, it travels through the datasets wherever a path does; the PyAV opener reads ``data``
    instead of a file."""

    data: bytes

    def __new__(cls, name: str, data) -> "EncodedVideo":
        self = super().__new__(cls, name)
        self.data = data
        return self


@dataclass(frozen=True)
class FrameLayout:
    """How frame folders name their files; ``start_idx`` is the default first number (lists
    without a start column), a pre-training list's own start wins."""
    template: str = DEFAULT_TEMPLATE
    start_idx: int = DEFAULT_START


def frame_file(folder: str, template: str, number: int) -> str:
    return os.path.join(folder, template.format(number))


def _names(folder: str) -> set:
    try:
        return set(os.listdir(folder))
    except OSError as exc:
        raise VideoDecodeError(f"cannot list the frame folder {folder}: {exc}") from exc


def scan_frame_folder(folder: str, template: str, start: int, listed: int = -1) -> tuple[int, List[str]]:
    """``(frames, missing)``: with a listed count, that count and the listed frames that are
    absent; without one, the number of consecutive frames from ``start`` (none missing)."""
    names = _names(folder)
    if listed > 0:
        expected = [template.format(start + i) for i in range(listed)]
        return listed, [n for n in expected if n not in names]
    n = 0
    while template.format(start + n) in names:
        n += 1
    return n, []
