"""What each sample of the DALI loader decodes, decided on the host: the file, the frames, the
crop boxes, the mirror flags and the erasing rectangles, with the rules of `clip_sampling` and
the randomness of the PyAV datasets (``default_rng([seed, epoch, index, attempt])``, the draws in
the same order), so both decoders see the same clips for the same seed.

The planner also remembers the files found unreadable in this run, and applies the CPU path's
replacement rule to them: a training sample whose file is known bad becomes a random other video;
an evaluation sample is dropped (metrics stay per video).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from ...errors import BadDataError
from ..clip_sampling import (finetune_frame_indices, multiscale_crop_box, pretrain_frame_indices,
                             random_erasing_box, random_resized_crop_box, sparse_frame_indices,
                             test_crop_boxes, test_frame_indices)
from ..index import IndexedVideo

__all__ = ["MODES", "EVAL_MODES", "Sample", "InFlight", "SamplePlanner"]

log = logging.getLogger("vmae2_fast")
MODES = ("pretrain", "finetune", "val", "test")
EVAL_MODES = ("val", "test")      # every video of the shard once, bad files dropped (not replaced)


@dataclass
class Sample:
    index: int             # the position in the epoch's order it fills (a replacement keeps it)
    video: IndexedVideo
    frames: np.ndarray
    boxes: list            # K boxes (x0, y0, cw, ch) in source pixels
    mirror: list           # K flags
    erase: list            # K (y0, x0, h, w) or None
    rng: np.random.Generator
    skips: list = field(default_factory=list)   # (path, reason) of bad files passed over
    pyav: bool = False                          # decoded by the PyAV fallback, not by DALI
    future: object = None                       # the fallback's Future


@dataclass
class InFlight:
    """A batch in flight: its samples in output order (DALI decodes those with ``pyav`` False,
    on pipeline ``pipe``, None when it has none), and the videos dropped before it (evaluation)."""
    pipe: Optional[int]
    samples: List[Sample]
    dropped: list


class SamplePlanner:
    """``sample(epoch, index, attempt)``: the draws of one sample; ``resolve(epoch, index)``: the
    first usable one; ``forget(sample, why)``: remember its file as bad (``bad``, ``reasons``)."""

    def __init__(self, videos: Sequence[IndexedVideo], mode: str, *, num_frames: int,
                 sampling_rate: int, input_size: int, views: int, segments: int, seed: int,
                 flip: bool, erase_prob: float, sparse: bool, min_crop_scale: float,
                 short_side: int, max_retries: int, pyav_paths: set):
        self.videos, self.mode = videos, mode
        self.T, self.rate, self.size, self.views, self.segments = num_frames, sampling_rate, input_size, views, segments
        self.seed, self.flip, self.erase_prob, self.sparse = seed, flip, erase_prob, sparse
        self.min_crop_scale, self.short_side, self.max_retries = min_crop_scale, short_side, max_retries
        self.pyav_paths = pyav_paths
        self.bad: set = set()
        self.reasons: dict = {}       # bad path -> DALI's (or PyAV's) error

    def sample(self, epoch: int, index: int, attempt: int) -> Sample:
        rng = np.random.default_rng([self.seed, epoch, index, attempt])
        v = self.videos[index]
        K, boxes, mirror, erase = self.views, [], [0] * self.views, [None] * self.views
        if self.mode == "pretrain":
            frames = pretrain_frame_indices(v.frames, self.T, self.rate, rng)
            boxes = [multiscale_crop_box(v.width, v.height, self.size, rng) for _ in range(K)]
        elif self.mode == "finetune":
            frames = (sparse_frame_indices(v.frames, self.T, rng) if self.sparse else
                      finetune_frame_indices(v.frames, self.T, self.rate, rng))
            for k in range(K):
                boxes.append(random_resized_crop_box(v.width, v.height, rng, scale=(self.min_crop_scale, 1.0)))
                mirror[k] = int(self.flip and rng.random() < 0.5)
                erase[k] = random_erasing_box(self.size, self.size, rng, self.erase_prob)
        elif self.mode == "val":        # the official single-view validation: centred window and crop
            frames = (sparse_frame_indices(v.frames, self.T, None, train=False) if self.sparse else
                      finetune_frame_indices(v.frames, self.T, self.rate, None, train=False))
            boxes = test_crop_boxes(v.width, v.height, self.size, 1, self.short_side)
        else:
            frames = test_frame_indices(v.frames, self.T, self.rate, self.segments, self.sparse).reshape(-1)
            boxes = test_crop_boxes(v.width, v.height, self.size, K, self.short_side)
        return Sample(index, v, np.asarray(frames, np.int64), boxes, mirror, erase, rng,
                      pyav=v.path in self.pyav_paths)

    def resolve(self, epoch: int, index: int) -> Optional[Sample]:
        """The first usable sample for ``index``, skipping files known to be bad (counted in
        ``skips``), with the CPU path's replacement rule: a random other video. Evaluation modes
        never replace: None for a known-bad file."""
        if self.mode in EVAL_MODES:
            s = self.sample(epoch, index, 0)
            return None if s.video.path in self.bad else s
        current, skips = index, []
        for attempt in range(self.max_retries + 1):
            s = self.sample(epoch, current, attempt)
            if s.video.path not in self.bad:
                s.index, s.skips = index, skips
                return s
            skips.append((s.video.path, self.reasons.get(s.video.path, "DALI cannot decode it")))
            current = int(s.rng.integers(len(self.videos)))
        raise BadDataError(f"no readable video found: item {index} and its {self.max_retries} random "
                           f"replacements all failed to decode ({len(self.bad)} distinct files of "
                           f"{len(self.videos)} failed so far); check the list and the index")

    def forget(self, s: Sample, why: str) -> None:
        """Remember ``s``'s file as unreadable, with why."""
        # training: the trainer lists each file once; evaluation has no trainer: warn here
        (log.warning if self.mode in EVAL_MODES else log.debug)("skipping %s (%s)", s.video.path, why)
        self.bad.add(s.video.path)
        self.reasons[s.video.path] = why
