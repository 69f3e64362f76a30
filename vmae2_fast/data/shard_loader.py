"""Training and evaluation batches streamed from a shard set (`shard_store.ShardSet`).

Training order of epoch ``e`` (a pure function of the seed, the epoch, the number of processes
and of DataLoader workers):

1. the shards are permuted (seed, e), and each shard's samples are permuted (seed, e, shard);
   concatenated, this is the epoch's sequence, cut after ``steps * G`` samples (G the global
   batch; the rest is dropped, as the official loader drops its last partial batch);
2. rank r takes the r-th contiguous ``steps * B`` samples (B its batch), so a rank reads a few
   shards of its own rather than a slice of every shard;
3. within a rank, batch j is made by worker ``j % K`` (the order in which a DataLoader collects
   an iterable dataset's batches), and worker w's batches are a contiguous stretch of the rank's
   samples: each worker streams its own shards, one ranged GET per run of samples from a shard,
   the next run fetched while the current one is decoded.

Resuming at step s, the maker of batches ``w, w + K, ...`` skips the ``len(range(w, s, K))``
batches it had made, and the DataLoader's worker ``(w - s) mod K`` plays that part (the DataLoader
asks worker 0 first, and batch s comes first). Runs before them are not fetched at all, so a resumed run sees exactly the samples, in exactly the order, of
an uninterrupted one with the same processes and workers (a different count gives another
order; the run says so). Per-sample randomness (frames, crops, augmentation) is the file
reader's: ``default_rng([seed, epoch, id, attempt])`` with the sample's id in the manifest.

A record that does not decode is replaced by a random other sample of the same run (already in
memory), at most ``max_retries`` times, and reported like an unreadable file (`skipped.jsonl`
names it by its list path and shard). Evaluation reads every sample once in manifest order: rank
r a contiguous part, batch j of it by worker ``j % K`` (one ranged GET per batch).
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import DataError
from .device_feed import to_device_ahead
from .lists import VideoEntry
from .media import EncodedVideo, VideoDecodeError
from .shard_store import ShardSet

__all__ = ["epoch_sequence", "worker_stretch", "ShardTrainLoader", "ShardEvalLoader", "shard_entries",
           "head_entries"]

log = logging.getLogger("vmae2_fast")


def shard_entries(shards: ShardSet) -> List[VideoEntry]:
    """One `VideoEntry` per sample (list path, frame count, label): what the stages count and
    check labels with; the bytes are fetched by the loaders."""
    return [VideoEntry(src, 0, int(n), None if lab < 0 else int(lab), src)
            for src, n, lab in zip(shards.sources, shards.frames.tolist(), shards.labels.tolist())]


def head_entries(shards: ShardSet, limit: int) -> List[VideoEntry]:
    """The first ``limit`` samples of the first shard with their bytes (one ranged GET): what the
    pre-training preview decodes."""
    source = _Source(shards)
    fetched = source.fetch(np.arange(min(limit, len(shards.shards[0]))))
    return [source.entry(i, fetched) for i in sorted(fetched["data"])]


def epoch_sequence(shards: ShardSet, seed: int, epoch: int) -> np.ndarray:
    """The epoch's sample ids: shards permuted, each shard's samples permuted (step 1 above)."""
    order = np.random.default_rng([seed, epoch, 0x5A4D]).permutation(len(shards.shards))
    parts = []
    for s in order.tolist():
        shard = shards.shards[s]
        perm = np.random.default_rng([seed, epoch, 0x5A4D, s]).permutation(len(shard))
        parts.append(shard.first_id + perm)
    return np.concatenate(parts)


def worker_stretch(steps: int, batch: int, rank: int, workers: int, worker: int) -> tuple[int, int]:
    """``(first, count)``: worker's batches are rank batches ``worker, worker + K, ...``; it makes
    them from samples ``[first, first + count * batch)`` of the rank's part (step 3 above)."""
    counts = [len(range(w, steps, workers)) for w in range(workers)]
    first = rank * steps * batch + sum(counts[:worker]) * batch
    return first, counts[worker]


def _runs(ids: np.ndarray, shard_of: np.ndarray) -> List[np.ndarray]:
    """Split ``ids`` where the shard changes."""
    if len(ids) == 0:
        return []
    cut = np.flatnonzero(np.diff(shard_of[ids])) + 1
    return np.split(ids, cut)


class _Source:
    """Fetches the bytes of runs of samples (one ranged GET each) and makes their entries."""

    def __init__(self, shards: ShardSet):
        self.shards, self.shard_of = shards, shards.shard_of()

    def fetch(self, run: np.ndarray) -> dict:
        shard = self.shards.shards[int(self.shard_of[run[0]])]
        local = run - shard.first_id
        lo = int(shard.offsets[local].min())
        hi = int((shard.offsets[local] + shard.sizes[local]).max())
        blob = self.shards.store.read(shard.name, lo, hi)
        if len(blob) != hi - lo:
            raise DataError(f"{self.shards.store.url(shard.name)}: read {len(blob)} bytes of the "
                            f"{hi - lo} its manifest promises (a shard rewritten after shards.json?)")
        view = memoryview(blob)
        out = {}
        for i, k in zip(run.tolist(), local.tolist()):
            a = int(shard.offsets[k]) - lo
            out[i] = view[a: a + int(shard.sizes[k])]
        return {"shard": shard, "data": out}

    def entry(self, i: int, fetched: dict) -> VideoEntry:
        """The sample as the file datasets take it: named by its list path (what predictions and
        `skipped.jsonl` show, as for a file run), its bytes in memory."""
        s = self.shards
        lab = int(s.labels[i])
        return VideoEntry(EncodedVideo(s.sources[i], fetched["data"][i]), 0, int(s.frames[i]),
                          None if lab < 0 else lab, s.sources[i])

    def where(self, i: int) -> str:
        shard = self.shards.shards[int(self.shard_of[i])]
        return f"record {i:09d} of {self.shards.store.url(shard.name)}"


def _prefetched(source: _Source, runs: Sequence[np.ndarray]) -> Iterator[tuple]:
    """``(run, fetched)`` with the next run's bytes fetched in a thread meanwhile."""
    if not runs:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="shard-fetch") as pool:
        ahead = pool.submit(source.fetch, runs[0])
        for k, run in enumerate(runs):
            fetched = ahead.result()
            if k + 1 < len(runs):
                ahead = pool.submit(source.fetch, runs[k + 1])
            yield run, fetched


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class _TrainStream(IterableDataset):
    """One worker's batches of the epoch (module docstring); ``load(dataset, id, rng)`` makes an
    item of the file dataset's kind or raises `VideoDecodeError`; ``failed(skipped)`` is the item
    for a sample none of whose tries decoded."""

    def __init__(self, shards: ShardSet, dataset, load: Callable, failed: Callable, collate: Callable,
                 steps: int, batch: int, world: int, rank: int):
        self.shards, self.dataset, self.load, self.failed = shards, dataset, load, failed
        self.collate, self.steps, self.batch, self.world, self.rank = collate, steps, batch, world, rank
        self.epoch, self.skip = 0, 0

    def __iter__(self):
        loader_worker, workers = _worker()
        # The DataLoader asks its workers in turn, starting with worker 0; the first batch wanted
        # is batch `skip`, whose maker is `skip % K`: so DataLoader worker d makes the batches of
        # role (d + skip) % K.
        worker = (loader_worker + self.skip) % workers
        seq = epoch_sequence(self.shards, self.dataset.seed, self.epoch)
        first, count = worker_stretch(self.steps, self.batch, self.rank, workers, worker)
        done = len(range(worker, self.skip, workers))             # batches made before the resume
        ids = seq[first + done * self.batch: first + count * self.batch]
        self.dataset.set_epoch(self.epoch)
        source = _Source(self.shards)
        items = []
        for run, fetched in _prefetched(source, _runs(ids, source.shard_of)):
            for i in run.tolist():
                items.append(self._item(source, i, run, fetched))
                if len(items) == self.batch:
                    yield self.collate(items)
                    items = []

    def _item(self, source: _Source, i: int, run: np.ndarray, fetched: dict):
        """The item of sample ``i``; an undecodable record is replaced by a random other of the
        same run (as the file reader replaces an unreadable file by a random other)."""
        current, skipped = i, []
        for attempt in range(self.dataset.max_retries + 1):
            rng = self.dataset.rng(i, attempt)
            entry = source.entry(current, fetched)
            try:
                with self.dataset.reading(entry.path):
                    return self.load(self.dataset, entry, rng) + (tuple(skipped),)
            except VideoDecodeError as exc:
                skipped.append((str(entry.path), f"{exc} ({source.where(current)})"))
                current = int(run[rng.integers(len(run))])
        return self.failed(tuple(skipped))


class ShardTrainLoader:
    """Training batches of a shard set, the `loaders.PyAVLoader` interface."""

    def __init__(self, shards: ShardSet, dataset, load, failed, collate, cfg, dist, device: torch.device,
                 num_workers: int, board=None):
        self.global_batch = cfg.batch_size * dist.world_size
        self.steps_per_epoch = shards.num_samples // self.global_batch
        if self.steps_per_epoch == 0:
            raise DataError(f"the shard set at {shards.location} has {shards.num_samples} videos, fewer "
                            f"than one global batch ({cfg.batch_size} per process x {dist.world_size} "
                            "processes); lower --batch-size")
        self.num_videos = shards.num_samples
        self.stream = _TrainStream(shards, dataset, load, failed, collate, self.steps_per_epoch,
                                   cfg.batch_size, dist.world_size, dist.rank)
        self.num_workers, self.device, self.board = num_workers, device, board

    def data_plane_error(self, exc: BaseException):
        from .loaders import dead_worker_error
        return dead_worker_error(exc, self.board)

    def __call__(self, epoch: int = 0, skip: int = 0):
        from .loaders import guarded
        self.stream.epoch, self.stream.skip = epoch, skip
        return to_device_ahead(guarded(_loader(self.stream, self.num_workers, self.device), self.board),
                               self.device)


def _loader(stream, num_workers: int, device: torch.device):
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers,
                                       pin_memory=device.type == "cuda",
                                       prefetch_factor=2 if num_workers else None)


class _EvalStream(IterableDataset):
    """Batch j of the rank's part (manifest order) from worker ``j % K``."""

    def __init__(self, shards: ShardSet, dataset, collate, part: range, batch: int):
        self.shards, self.dataset, self.collate = shards, dataset, collate
        self.part, self.batch, self.skip = part, batch, 0

    def __iter__(self):
        worker, workers = _worker()
        source = _Source(self.shards)
        n_batches = -(-len(self.part) // self.batch)
        chunks = [np.arange(self.part.start + j * self.batch, min(self.part.stop, self.part.start + (j + 1) * self.batch))
                  for j in range(self.skip + worker, n_batches, workers)]
        runs = [r for c in chunks for r in _runs(c, source.shard_of)]
        ends = {int(c[-1]) for c in chunks}
        items = []
        for run, fetched in _prefetched(source, runs):
            for i in run.tolist():
                listed = self.dataset.items[i]
                self.dataset.items[i] = source.entry(i, fetched)   # the file dataset reads items[i]
                try:
                    clip, label, skipped, path = self.dataset[i]
                    # plain strings: an `EncodedVideo` would carry its bytes to the main process
                    items.append((clip, label, tuple((str(p), r) for p, r in skipped), str(path)))
                finally:
                    self.dataset.items[i] = listed                 # the bytes go with the run
                if i in ends:
                    yield self.collate(items)
                    items = []


class ShardEvalLoader:
    """Every sample of this process's part once (val / test), the `PyAVEvalLoader` interface."""

    def __init__(self, shards: ShardSet, dataset, collate, batch_size: int, num_workers: int, dist,
                 device: torch.device):
        per_rank = -(-shards.num_samples // dist.world_size)
        part = range(dist.rank * per_rank, min(shards.num_samples, (dist.rank + 1) * per_rank))
        self.stream = _EvalStream(shards, dataset, collate, part, batch_size)
        self.steps_per_epoch = -(-len(part) // batch_size)
        self.num_videos = len(part)
        self.num_workers, self.device = num_workers, device

    def __call__(self, epoch: int = 0, skip: int = 0):
        self.stream.skip = skip
        return to_device_ahead(_loader(self.stream, self.num_workers, self.device), self.device)


# ------------------------------------------------------------------------------ the DALI path
class ShardRecord(EncodedVideo):
    """A sample whose bytes a `ShardBytes` fetches when they are first read: the DALI loader's
    ``video.path`` (it feeds ``data`` to DALI's decoder; the PyAV fallback opens it like a file)."""

    def __new__(cls, name: str, cache: "ShardBytes", sample: int) -> "ShardRecord":
        self = str.__new__(cls, name)
        self.cache, self.sample = cache, sample
        return self

    @property
    def data(self):
        return self.cache.bytes_of(self.sample)


class ShardBytes:
    """The bytes of one process's samples in the order it will read them (`plan`): one ranged GET
    per run, the next run fetched in a thread while this one is read, two runs kept. A sample
    outside the plan (a replacement for a bad one, a batch decoded again) is fetched alone."""

    def __init__(self, shards: ShardSet):
        import threading
        self.source = _Source(shards)
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="shard-fetch")
        self.plan([])

    def plan(self, ids) -> None:
        ids = np.asarray(list(ids), dtype=np.int64)
        with self.lock:
            self.runs = _runs(ids, self.source.shard_of)
            self.run_of = {int(i): k for k, r in enumerate(self.runs) for i in r.tolist()}
            self.loaded: dict = {}                     # run number -> fetched bytes
            self.ahead = None                          # (run number, future)
            self.current = -1

    def _load(self, k: int) -> dict:
        if self.ahead is not None and self.ahead[0] == k:
            fetched = self.ahead[1].result()
        else:
            fetched = self.source.fetch(self.runs[k])
        self.loaded = {j: f for j, f in self.loaded.items() if j >= k - 1}
        self.loaded[k], self.current = fetched, k
        self.ahead = (k + 1, self.pool.submit(self.source.fetch, self.runs[k + 1])) if k + 1 < len(self.runs) else None
        return fetched

    def bytes_of(self, i: int):
        with self.lock:
            k = self.run_of.get(int(i))
            if k is not None and k in self.loaded:
                return self.loaded[k]["data"][i]
            if k is not None and k > self.current:
                return self._load(k)["data"][i]
        return self.source.fetch(np.array([i]))["data"][i]      # outside the plan, or gone


class ShardFeed:
    """What the DALI loader needs of a shard set: its samples as `IndexedVideo` records whose
    paths fetch their bytes, and the batches of an epoch in the streaming order (one stream per
    process: DALI has no DataLoader workers), the bytes planned accordingly."""

    def __init__(self, shards: ShardSet, batch: int, world: int, rank: int):
        from .index import IndexedVideo
        self.shards, self.batch, self.world, self.rank = shards, batch, world, rank
        self.bytes = ShardBytes(shards)
        v = shards.video
        self.videos = [IndexedVideo(ShardRecord(src, self.bytes, i), src, int(shards.frames[i]), 0.0,
                                    v["codec"][i], int(v["width"][i]), int(v["height"][i]),
                                    None if shards.labels[i] < 0 else int(shards.labels[i]), 0,
                                    v["pix_fmt"][i])
                       for i, src in enumerate(shards.sources)]

    def train_batches(self, seed: int, epoch: int, skip: int, steps: int) -> List[List[int]]:
        seq = epoch_sequence(self.shards, seed, epoch)
        first, _ = worker_stretch(steps, self.batch, self.rank, 1, 0)
        ids = seq[first + skip * self.batch: first + steps * self.batch]
        self.bytes.plan(ids)
        return [ids[j: j + self.batch].tolist() for j in range(0, len(ids), self.batch)]

    def eval_batches(self, batches: List[List[int]]) -> List[List[int]]:
        self.bytes.plan([i for b in batches for i in b])
        return batches
