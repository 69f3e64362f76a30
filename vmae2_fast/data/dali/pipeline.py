"""Video loading with NVIDIA DALI: our sampling, DALI's decoder, augmentation on the device.

DALI's own video reader does not follow VideoMAE's epoch (one random clip per video) and only
shuffles in a buffer, so here DALI only *decodes and transforms*: the host decides, per sample,
which file, which frames and which crop boxes, and feeds them through ``external_source``:

    encoded bytes ─ decoders.video(frames=idx, device="mixed"|"cpu")      one decode per video
                  ─ [RandAugment, same op for every frame of a clip]       fine-tuning only
                  ─ K x resize(roi=box_k) ─ crop_mirror_normalize(CFHW)    K views of one decode
                  ─ stack                                                  (B, K, 3, T, S, S) uint8

* Pixels: the output stays uint8 (DALI's resize rounds to uint8; ``crop_mirror_normalize`` only
  lays out and mirrors): the stage normalises on the device (`pixels.normalize_on_device`), and
  fine-tuning's cube erasing travels as boxes (`pixels.Erasure`, noise drawn on the device).

* Order: :class:`~vmae2_fast.data.sampler.GlobalBatchSampler` (one permutation per (seed, epoch),
  rank r takes its slice of every global batch, resume skips consumed batches).
* Randomness: sample ``index`` of ``epoch`` draws from ``default_rng([seed, epoch, index,
  attempt])`` in the same order as :class:`PretrainVideoDataset`, so both decoders see the same
  frames and boxes for the same seed (:mod:`.samples`).
* Bad files: DALI invalidates the pipeline on a decode error. The loader then rebuilds it, decodes
  the failed batch's samples one by one to find the culprits, remembers them, replaces each by a
  random other video (as the CPU path does) and reports them, with DALI's reason, in the batch's
  ``skipped`` ``(path, reason)`` pairs. A failed batch whose files all decode alone is a pipeline
  fault, not a bad file: it raises `errors.DataPlaneError` naming the files (the trainer resumes
  from its last checkpoint).
* Prefetch: ``prefetch`` batches per pipeline are scheduled ahead, so decoding (on DALI's threads
  and, on the GPU, its own CUDA stream) overlaps the training step.
* Files DALI cannot decode (codec, pixel format: `index.dali_cannot_decode`): left out with a
  warning naming the re-encode command, or, with ``fallback=True`` (``--decoder auto``), decoded
  by PyAV in a thread pool and put back in their places of the batch (:mod:`.fallback`, an object
  the loader hands its sample planner and its output placement).
* An epoch's progress is one object (`EpochState`): the batches in flight, the pipeline whose
  turn is next, the videos dropped since the last batch; every step of the epoch takes it.
* Several instances (``decoder_instances=N``): N independent pipelines, each with its own thread
  pool and (on the GPU) its own CUDA stream and video decoder, so several NVDEC engines of one GPU
  can work at once. Consecutive batches of the one global order go to the pipelines in turn and
  are collected in that order, so the batches are the same as with one pipeline. (The one
  exception is fine-tuning with RandAugment, whose op choice is drawn by DALI's own per-pipeline
  random generator: it differs with N, as it already differs across a resume.)
* Host to device: see :mod:`.transfer` (CPU decode for CUDA training goes through pinned memory
  and a non-blocking copy on a side stream, one batch ahead: `device_feed.to_device_ahead`; a GPU
  decode is copied on the compute stream and its DALI output held until that copy has run:
  `transfer.HeldOutputs`).
* Frame folders (index codec ``rawframes``): the host reads the clip's frame files (named by
  ``fname_tmpl`` from the folder's start number) and DALI's image decoder decodes each one
  (``device="mixed"``: nvJPEG on the GPU; ``"cpu"`` on the host), stacked into the same
  ``(T, H, W, C)`` sequence the video decoder gives, so everything after it is shared. A list
  must be all videos or all frame folders (one graph per loader).
"""
from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch

from ...errors import DataError, DataPlaneError
from ..batches import ClassifyBatch, EvalBatch, PretrainBatch
from ..device_feed import to_device_ahead
from ..index import RAWFRAMES, IndexedVideo
from ..media import DEFAULT_TEMPLATE, EncodedVideo, frame_file
from ..sampler import GlobalBatchSampler
from .fallback import PyAVFallback, route
from .graph import build_pipeline
from .samples import EVAL_MODES, MODES, InFlight, Sample, SamplePlanner
from .transfer import HeldOutputs, device_copy, pinned_copy, transfer_plan

__all__ = ["dali_status", "DaliVideoLoader", "MODES"]

log = logging.getLogger("vmae2_fast")


def _encoded(path) -> np.ndarray:
    """A video's bytes for DALI's decoder: a file's, or those a shard record holds."""
    if isinstance(path, EncodedVideo):
        return np.frombuffer(path.data, dtype=np.uint8)
    return np.fromfile(path, dtype=np.uint8)


def dali_status():
    """``(True, version)`` if DALI imports, else ``(False, reason)``.

    The reason tells a package that is not installed from one that is installed but fails to
    import (a broken wheel, a missing system library): the second needs fixing, not installing,
    and the tests fail on it instead of skipping (tests/needs.py)."""
    try:
        import nvidia.dali as dali
        import nvidia.dali.fn  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name in ("nvidia", "nvidia.dali"):
            return False, "nvidia-dali is not installed"
        return False, f"nvidia-dali is installed but broken ({type(exc).__name__}: {exc})"
    except Exception as exc:  # a broken install can raise anything at import
        return False, f"nvidia-dali is installed but broken ({type(exc).__name__}: {exc})"
    return True, dali.__version__


@dataclass
class EpochState:
    """One epoch in progress: the order's batches not yet scheduled, the batches in flight (in
    output order; each pipeline is FIFO), the pipeline the next batch goes to, and (evaluation)
    the videos dropped since the last emitted batch, reported with the next one."""
    epoch: int
    order: Iterator[List[int]]
    counted: collections.Counter                 # the loader's decode counts when the epoch began
    pending: collections.deque = field(default_factory=collections.deque)
    turn: int = 0
    dropped: list = field(default_factory=list)

    def take_dropped(self) -> list:
        out, self.dropped = self.dropped, []
        return out


class DaliVideoLoader:
    """Batches of the `batches` types: `PretrainBatch` (pretrain), `ClassifyBatch` (finetune),
    `EvalBatch` (val, test: one label and path per video). ``video`` is uint8 pixels
    ``(B * K, 3, T, S, S)`` (views sample-major; test: ``K = S_t * C``; val: one centred view) on
    the loader's target device, not normalised. Call ``loader(epoch, skip_micro_steps)`` for one
    epoch.

    Training modes replace an unreadable video by a random other one (as the CPU path does);
    evaluation modes drop it from its batch and count it, so that metrics stay per video.
    ``fallback``: decode the files DALI cannot (codec, pixel format) with PyAV instead of leaving
    them out; ``reencode_hint``: the command named when they are left out."""

    def __init__(self, videos: Sequence[IndexedVideo], *, batch_size: int, mode: str = "pretrain",
                 num_frames: int = 16, sampling_rate: int = 4, input_size: int = 224,
                 num_views: int = 1, test_segments: int = 1, seed: int = 0, world_size: int = 1,
                 rank: int = 0, device: str = "cpu", device_id: Optional[int] = None,
                 num_threads: int = 2, prefetch: int = 2,
                 flip: bool = True, rand_augment: Optional[tuple] = None, erase_prob: float = 0.0,
                 sparse: bool = False, max_retries: int = 10, decoder_instances: int = 1,
                 target_device=None, min_crop_scale: float = 0.08, short_side: Optional[int] = None,
                 fname_tmpl: str = DEFAULT_TEMPLATE, fallback: bool = False,
                 reencode_hint: Optional[str] = None, shard_feed=None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        # a shard set (`shard_loader.ShardFeed`): its records' bytes instead of files, its
        # streaming order instead of the sampler's; every record kept (PyAV decodes what DALI
        # cannot), so that sample ids stay the manifest's
        self.shard_feed = shard_feed
        if shard_feed is not None:
            videos, fallback = shard_feed.videos, True
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        if int(decoder_instances) < 1:
            raise ValueError(f"decoder_instances must be at least 1, got {decoder_instances}")
        ok, why = dali_status()
        if not ok:
            raise RuntimeError(why)
        self.videos, self.pyav_paths = route(list(videos), device, fallback, reencode_hint)
        kinds = {v.codec == RAWFRAMES for v in self.videos}
        if len(kinds) > 1:
            raise DataError("the list mixes video files and frame folders, which DALI decodes with "
                             "different graphs: split the list, or use --decoder pyav")
        self.raw_frames, self.fname_tmpl = kinds == {True}, fname_tmpl
        self.mode, self.batch_size, self.seed = mode, int(batch_size), int(seed)
        self.T, self.size = int(num_frames), int(input_size)
        self.segments = int(test_segments) if mode == "test" else 1
        self.views = int(num_views)
        self.device, self.device_id = device, device_id
        self.num_threads, self.prefetch = num_threads, max(1, prefetch)
        self.rand_aug = rand_augment if mode == "finetune" else None
        self.rank = rank
        self.planner = SamplePlanner(
            self.videos, mode, num_frames=self.T, sampling_rate=int(sampling_rate), input_size=self.size,
            views=self.views, segments=self.segments, seed=self.seed, flip=flip and mode == "finetune",
            erase_prob=erase_prob if mode == "finetune" else 0.0, sparse=sparse,
            min_crop_scale=float(min_crop_scale), short_side=int(short_side or input_size),
            max_retries=max_retries, pyav_paths=self.pyav_paths)
        if mode in EVAL_MODES:
            per_rank = -(-len(self.videos) // world_size)
            self.shard = list(range(rank * per_rank, min(len(self.videos), (rank + 1) * per_rank)))
            self.steps_per_epoch = -(-len(self.shard) // self.batch_size)
        else:
            self.sampler = GlobalBatchSampler(len(self.videos), self.batch_size, world_size, rank, seed)
            self.steps_per_epoch = self.sampler.steps_per_epoch
        self.skipped_total = 0
        self.num_videos = len(self.videos)
        self.instances = int(decoder_instances)
        self._pipes: List = [None] * self.instances
        self.transfer = transfer_plan(device, target_device)
        self.held = HeldOutputs(limit=self.prefetch * self.instances + 2)   # outputs whose copy is queued
        self.target_device = torch.device(target_device) if target_device is not None else None
        self.decoded = collections.Counter()          # videos decoded by "dali" / "pyav", this run
        host_or_device = (torch.device("cuda", device_id or 0) if self.transfer == "device"
                          else torch.device("cpu"))
        self.fallback = (PyAVFallback(self.size, num_threads, self.rand_aug, self.planner, self.transfer,
                                      host_or_device) if self.pyav_paths else None)

    @property
    def bad(self) -> set:
        """The files found unreadable in this run."""
        return self.planner.bad

    @property
    def reasons(self) -> dict:
        """Why each file of ``bad`` is unreadable."""
        return self.planner.reasons

    def batch_indices(self, epoch: int, skip: int) -> Iterator[List[int]]:
        """The video indices of each batch of the epoch from batch ``skip`` on: this rank's part
        of the global order (training), or its shard in list order (evaluation)."""
        if self.mode in EVAL_MODES:
            batches = [self.shard[s * self.batch_size:(s + 1) * self.batch_size]
                       for s in range(skip, self.steps_per_epoch)]
            yield from (self.shard_feed.eval_batches(batches) if self.shard_feed else batches)
            return
        if self.shard_feed is not None:
            yield from self.shard_feed.train_batches(self.seed, epoch, skip, self.steps_per_epoch)
            return
        self.sampler.set_epoch(epoch, skip)
        for batch in self.sampler:
            yield [i for _, i in batch]

    # ------------------------------------------------------------------ DALI plumbing
    def _new_pipe(self, batch_size=None, instance: int = 0):
        images = self.T * self.segments if self.raw_frames else 0
        return build_pipeline(batch_size or self.batch_size, self.device,
                              self.device_id if self.device == "gpu" else None, self.num_threads,
                              self.size, self.views, self.rand_aug,
                              self.seed + 7919 * self.rank + 104729 * instance, images)

    def _feed(self, pipe, samples: List[Sample]):
        if self.raw_frames:         # a missing frame file fails here, a corrupt one in DALI: both bad
            for j in range(self.T * self.segments):
                pipe.feed_input(f"img{j}", [self._frame_bytes(s, j) for s in samples])
        else:
            pipe.feed_input("enc", [_encoded(s.video.path) for s in samples])
            pipe.feed_input("frames", [s.frames.astype(np.int32) for s in samples])
        for k in range(self.views):
            # resize's roi follows the (H, W) order of the frames
            pipe.feed_input(f"roi_start{k}", [np.array([s.boxes[k][1], s.boxes[k][0]], np.float32)
                                              for s in samples])
            pipe.feed_input(f"roi_end{k}", [np.array([s.boxes[k][1] + s.boxes[k][3],
                                                      s.boxes[k][0] + s.boxes[k][2]], np.float32)
                                            for s in samples])
            pipe.feed_input(f"mirror{k}", [np.array(s.mirror[k], np.int32) for s in samples])
        pipe.schedule_run()

    def _frame_bytes(self, s: Sample, j: int) -> np.ndarray:
        path = frame_file(s.video.path, self.fname_tmpl, s.video.start + int(s.frames[j]))
        try:
            return np.fromfile(path, dtype=np.uint8)
        except OSError:             # missing: an empty buffer, which the image decoder rejects
            return np.zeros(0, dtype=np.uint8)

    def _schedule(self, batch: InFlight, pipe: Optional[int]) -> None:
        """Start decoding ``batch``: its DALI samples on pipeline ``pipe`` (when it has any), its
        fallback samples in the PyAV threads (those not started yet)."""
        mine = [s for s in batch.samples if not s.pyav]
        batch.pipe = pipe if mine else None
        if mine:
            self._feed(self._pipes[pipe], mine)
        for s in batch.samples:
            if s.pyav and s.future is None:
                self.fallback.submit(s)

    def _decode_error(self, s: Sample) -> Optional[str]:
        """Decode ``s`` alone in a fresh pipeline: None if DALI accepts the file, else why not."""
        pipe = self._new_pipe(batch_size=1)
        try:
            self._feed(pipe, [s])
            pipe.outputs()
            return None
        except Exception as exc:  # DALI raises RuntimeError/IndexError subclasses
            return "DALI cannot decode it: " + str(exc).strip().splitlines()[0][:200]
        finally:
            del pipe

    def _repair(self, epoch: int, samples: List[Sample]) -> tuple:
        """After a failed batch: find the files DALI rejects and remember them; replace them
        (training) or drop them (evaluation). Returns (samples, the dropped (path, reason))."""
        out, dropped = [], []
        for s in samples:
            while s is not None and not s.pyav:     # a fallback replacement is PyAV's to decode
                why = self._decode_error(s)
                if why is None:
                    break
                self.planner.forget(s, why)
                path, s = s.video.path, self.planner.resolve(epoch, s.index)
                if s is None:
                    dropped.append((path, why))
            if s is not None:
                out.append(s)
        return out, dropped

    def _refresh(self, epoch: int, samples: List[Sample]) -> tuple:
        """Samples scheduled before a file was found bad: the same rule as `_repair`, without
        decoding again (the file is known)."""
        bad = self.planner.bad
        fresh = [self.planner.resolve(epoch, s.index) if s.video.path in bad else s for s in samples]
        dropped = [(s.video.path, self.planner.reasons[s.video.path])
                   for s, f in zip(samples, fresh) if f is None]
        return [s for s in fresh if s is not None], dropped

    def _to_torch(self, out) -> torch.Tensor:
        if self.transfer == "device":           # queued on the compute stream; `out` held until it ran
            return device_copy(out, self.target_device or torch.device("cuda", self.device_id or 0), self.held)
        t = out.as_tensor()
        if self.transfer == "pinned":          # DALI buffer -> pinned memory (copied ahead later)
            return pinned_copy(np.asarray(t))
        return torch.from_numpy(np.array(t))   # a copy: DALI reuses its buffers

    def _emit(self, video: torch.Tensor, samples: List[Sample], skipped: list):
        """The batch of the loader's mode from the clips ``(B, K, 3, T', S, S)`` of ``samples``."""
        K = self.views
        b, _, ch, t, h, w = video.shape
        skipped = tuple(skipped)
        if self.mode == "test":
            # (B, C, 3, S*T, H, W) -> (B, S, C, 3, T, H, W): one decode, S x C views
            video = video.view(b, K, ch, self.segments, self.T, h, w).permute(0, 3, 1, 2, 4, 5, 6)
            video = video.reshape(b * self.segments * K, ch, self.T, h, w)
        else:
            video = video.reshape(b * K, ch, t, h, w)
        if self.mode == "pretrain":
            return PretrainBatch(video, skipped)
        labels = torch.tensor([s.video.label if s.video.label is not None else -1 for s in samples],
                              dtype=torch.int64)
        if self.mode in EVAL_MODES:
            return EvalBatch(video, labels, [str(s.video.path) for s in samples], skipped)
        # per-pixel N(0, 1) noise drawn on the device, one rectangle for every frame (cube erasing)
        erasures = [(i * K + k, *box, None) for i, s in enumerate(samples)
                    for k, box in enumerate(s.erase) if box is not None]
        return ClassifyBatch(video, labels.repeat_interleave(K), erasures, skipped)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __call__(self, epoch: int = 0, skip_micro_steps: int = 0):
        batches = self.epoch(epoch, skip_micro_steps)
        # CPU decode for CUDA training: pinned host batches, copied one batch ahead on a side stream
        return to_device_ahead(batches, self.target_device) if self.transfer == "pinned" else batches

    def epoch(self, epoch: int, skip_micro_steps: int = 0):
        state = EpochState(epoch, self.batch_indices(epoch, skip_micro_steps), self.decoded.copy())
        for k in range(self.instances):
            if self._pipes[k] is None:
                self._pipes[k] = self._new_pipe(instance=k)
        self._fill(state)
        try:
            yield from self._drain(state)
        finally:
            if state.pending:     # left mid-epoch: drop the pipelines' stale work, rebuild next time
                self.held.release_all()
                self._pipes = [None] * self.instances

    def _fill(self, state: EpochState) -> None:
        """Schedule batches of the order until ``prefetch`` per pipeline are in flight."""
        while len(state.pending) < self.prefetch * self.instances:
            idxs = next(state.order, None)
            if idxs is None:
                return
            resolved = [self.planner.resolve(state.epoch, i) for i in idxs]
            samples = [s for s in resolved if s is not None]
            state.dropped += [(self.videos[i].path, self.planner.reasons.get(self.videos[i].path, ""))
                              for i, s in zip(idxs, resolved) if s is None]
            if not samples:         # evaluation: every video of the batch is known bad
                continue
            batch = InFlight(None, samples, state.take_dropped())
            self._schedule(batch, state.turn)
            if batch.pipe is not None:
                state.turn = (state.turn + 1) % self.instances    # round robin
            state.pending.append(batch)

    def _drain(self, state: EpochState):
        while state.pending:
            batch = state.pending[0]
            k = batch.pipe
            try:
                out = self._pipes[k].outputs()[0] if k is not None else None
            except Exception as exc:
                self._recover(state, k, exc)
                continue
            state.pending.popleft()
            video = self._to_torch(out) if out is not None else None
            self._fill(state)
            if video is not None and self.views == 1:
                video = video.unsqueeze(1)                  # (B, K, 3, T', S, S) with K = 1
            if self.fallback is not None:
                video = self.fallback.assemble(video, state.epoch, batch)
            skipped = [x for s in batch.samples for x in s.skips] + batch.dropped
            if not batch.samples:                       # evaluation: all dropped
                state.dropped += skipped
                continue
            self.skipped_total += len(skipped)
            n_pyav = sum(s.pyav for s in batch.samples)
            self.decoded.update(dali=len(batch.samples) - n_pyav, pyav=n_pyav)
            if not state.pending and self.pyav_paths:   # before the last batch: the trainer stops there
                done = self.decoded - state.counted
                log.info("epoch %d: DALI (%s) decoded %d videos, PyAV %d (files DALI cannot "
                         "decode)", state.epoch, self.device, done["dali"], done["pyav"])
            yield self._emit(video, batch.samples, skipped)
        self.skipped_total += len(state.dropped)

    def _recover(self, state: EpochState, k: int, exc: Exception) -> None:
        """DALI invalidates the pipeline on a decode error: rebuild this one and redo what it had
        in flight, the failed batch repaired, the others with newly known bad files replaced. The
        other pipelines keep their work; order is unchanged."""
        self._pipes[k] = None
        mine = [b for b in state.pending if b.pipe == k]
        known = len(self.planner.bad)
        for i, batch in enumerate(mine):
            dali = [s for s in batch.samples if not s.pyav]
            fixed, dropped = (self._repair if i == 0 else self._refresh)(state.epoch, dali)
            if i == 0 and len(self.planner.bad) == known:    # no file is to blame
                files = [s.video.path for s in dali]
                why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise DataPlaneError("the DALI pipeline failed on a batch whose files all decode alone "
                                     f"({why}) while reading {', '.join(files)}", files) from None
            by_index = {s.index: s for s in fixed}
            # keep the order: each DALI sample becomes its replacement (or goes, if dropped)
            batch.samples = [s if s.pyav else by_index.get(s.index) for s in batch.samples]
            batch.samples = [s for s in batch.samples if s is not None]
            batch.dropped = batch.dropped + dropped
        for batch in [b for b in mine if not b.samples]:     # evaluation: nothing left to decode
            state.pending.remove(batch)
            state.dropped += batch.dropped
        self._pipes[k] = self._new_pipe(instance=k)
        for batch in mine:
            if batch.samples:
                self._schedule(batch, k)
