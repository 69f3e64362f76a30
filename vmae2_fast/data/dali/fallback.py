"""Per-file fallback of the DALI loader: the samples whose file DALI cannot decode (its codec or
pixel format, as the index recorded them: `index.dali_cannot_decode`) are decoded with PyAV
instead, in a thread pool, while DALI decodes the rest of the batch; their clips are put back in
their places of the batch, so the global order is the one DALI alone would give.

A fallback clip is what the DALI graph computes for the same sample, with PyAV and torch doing
DALI's work: the sample's frames decoded (`video_io.decode_frames`), then, per view, [RandAugment
with the magnitude fixed, as DALI's], the view's box cropped and resized to S x S in uint8
(`transforms.crop_resize`, antialiased bilinear like DALI's resize) and mirrored when the view
says so; uint8 ``(K, 3, T', S, S)`` like a DALI row. In pre-training the frames and boxes of a
sample are those `PretrainVideoDataset` draws for it, so a fallback clip equals the PyAV loader's.
The frames differ from DALI's by the colour conversion only (see the README's decoder table).

PyAV and torch release the GIL while they decode and resize, so the threads run in parallel with
the main thread and with DALI's own threads.
"""
from __future__ import annotations

import collections
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Tuple

import torch

from ...errors import DataError
from ..index import IndexedVideo, dali_cannot_decode
from ..media import VideoDecodeError
from ..pyav.randaugment import VideoRandAugment
from ..pyav.video_io import decode_frames
from ..transforms import crop_resize
from .samples import InFlight, Sample, SamplePlanner
from .transfer import pinned_copy

__all__ = ["route", "PyAVFallback"]

log = logging.getLogger("vmae2_fast")


def route(videos: List[IndexedVideo], device: str, fallback: bool,
          hint: Optional[str]) -> Tuple[List[IndexedVideo], set]:
    """``(the videos the loader serves, the paths of those PyAV decodes)``: the files DALI on
    ``device`` cannot decode go to PyAV with ``fallback``, else they are left out with a warning
    naming ``hint``, the re-encode command."""
    why = {v.path: dali_cannot_decode(v, device) for v in videos}
    refused = [v for v in videos if why[v.path]]
    reasons = collections.Counter(why[v.path].split(" (")[0] for v in refused)
    summary = ", ".join(f"{k}: {n}" for k, n in reasons.most_common(4))
    pyav_paths = {v.path for v in refused} if fallback else set()
    if refused and fallback:
        log.info("DALI (%s) decodes %d of %d videos; PyAV decodes the other %d (%s)", device,
                 len(videos) - len(refused), len(videos), len(refused), summary)
    elif refused:
        log.warning("DALI (%s) cannot decode %d of %d videos (%s); they are left out. Decode "
                    "them with PyAV with --decoder auto, or re-encode the list: %s", device,
                    len(refused), len(videos), summary,
                    hint or "python -m vmae2_fast.data.tools.reencode LIST --data-root DIR --out-root NEW_DIR")
        videos = [v for v in videos if not why[v.path]]
    if not videos:
        raise DataError(f"no video that DALI can decode on the {device} is left")
    return videos, pyav_paths


class PyAVFallback:
    """Decodes the batch's fallback samples and puts their clips in DALI's output.

    Handed what it needs: the clip size and thread count, DALI's RandAugment settings (n, m),
    the loader's `SamplePlanner` (a file PyAV cannot read either is forgotten there and its sample
    replaced by the planner's rule), and where a batch lives: ``transfer`` (`transfer.transfer_plan`)
    and ``device``, where a batch with no DALI row is stacked."""

    def __init__(self, size: int, threads: int, rand_augment: Optional[tuple], planner: SamplePlanner,
                 transfer: str, device: torch.device):
        self.size = int(size)
        self.threads = max(1, int(threads))
        # DALI's RandAugment applies magnitude m to every op (no magnitude noise); so does this
        self.rand_aug = (VideoRandAugment(magnitude=rand_augment[1], num_ops=rand_augment[0],
                                          magnitude_std=0.0) if rand_augment else None)
        self.planner, self.transfer, self.device = planner, transfer, device
        self._pool: Optional[ThreadPoolExecutor] = None

    def decode(self, sample: Sample) -> torch.Tensor:
        """The sample's uint8 ``(K, 3, T', S, S)`` clip, in this thread; a file PyAV cannot read
        raises `media.VideoDecodeError`."""
        frames = decode_frames(sample.video.path, sample.frames)       # (T', H, W, 3) uint8
        views = []
        for k, box in enumerate(sample.boxes):
            src = self.rand_aug(frames, sample.rng) if self.rand_aug is not None else frames
            v = crop_resize(src, box, self.size)                       # (3, T', S, S) uint8
            views.append(v.flip(-1) if sample.mirror[k] else v)
        return torch.stack(views)

    def submit(self, sample: Sample) -> None:
        """Start decoding ``sample`` in the pool (its ``future``)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="pyav-fallback")
        sample.future = self._pool.submit(self.decode, sample)

    def _clips(self, epoch: int, batch: InFlight) -> list:
        """``(position, clip)`` of the fallback samples, in order; a file PyAV cannot read either
        is forgotten and replaced (training, decoded here by PyAV) or dropped (evaluation: clip
        None, the file added to ``batch.dropped``)."""
        clips = []
        for i, s in enumerate(batch.samples):
            if not s.pyav:
                continue
            while True:
                try:
                    clip = s.future.result() if s.future is not None else self.decode(s)
                    break
                except VideoDecodeError as exc:
                    why = f"PyAV cannot decode it either: {exc}"
                    self.planner.forget(s, why)
                    fresh = self.planner.resolve(epoch, s.index)
                    if fresh is None:
                        batch.dropped.append((s.video.path, why))
                        clip = None
                        break
                    s = batch.samples[i] = fresh
                    s.pyav, s.future = True, None     # decoded by PyAV here, whatever its codec
            clips.append((i, clip))
        return clips

    def assemble(self, video: Optional[torch.Tensor], epoch: int, batch: InFlight) -> Optional[torch.Tensor]:
        """The batch's clips ``(B, K, 3, T', S, S)`` in sample order: DALI's rows (``video``, None
        when DALI decoded none of the batch) where DALI decoded, the fallback's elsewhere, on the
        device of DALI's output. Samples dropped here leave ``batch.samples``; None when none is
        left (evaluation)."""
        clips = self._clips(epoch, batch)
        if not clips:
            return video
        dali_rows = iter(video) if video is not None else iter(())
        by_pos = dict(clips)
        rows, kept = [], []
        for i, s in enumerate(batch.samples):
            clip = by_pos[i] if i in by_pos else next(dali_rows)
            if clip is not None:
                rows.append(clip)
                kept.append(s)
        batch.samples[:] = kept
        if not rows:                                    # evaluation: every video dropped
            return None
        dev = video.device if video is not None else self.device
        if dev.type == "cuda":
            rows = [r.pin_memory().to(dev, non_blocking=True) if r.device.type == "cpu" else r for r in rows]
        out = torch.stack(rows)
        return pinned_copy(out.numpy()) if self.transfer == "pinned" else out
