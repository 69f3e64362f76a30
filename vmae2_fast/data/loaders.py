"""How a stage gets its batches: the decoder choice, the list and its index, and one loader
interface over both decoders.

A loader has ``steps_per_epoch`` and ``num_videos`` and is called as ``loader(epoch, skip_steps)``;
it yields the batch types of `batches`, whichever decoder made them:

* ``pretrain``: `PretrainBatch`;
* ``finetune``: `ClassifyBatch`;
* ``val`` / ``test`` (every video of this process's shard once, in list order; unreadable videos
  dropped and reported): `EvalBatch`, V views per video.

A batch's ``video`` holds pixels in 0..255, not normalised (uint8; float32 for the PyAV
classification views), and a `ClassifyBatch`'s ``erasures`` fine-tuning's cube-erasing boxes: the
stage makes the model's input on the device with `pixels.normalize_on_device` (see that module).
On a CUDA device the batches come already on it, copied one batch ahead on a side stream
(`device_feed.to_device_ahead`). A DataLoader worker that dies (killed, out of memory) raises
`errors.DataPlaneError` naming the file it was reading, never a hang.

Training order comes from `sampler.GlobalBatchSampler` on both paths, so a run's batches do not
depend on the decoder or on the number of processes. ``dist`` is anything with ``rank`` and
``world_size``; ``cfg`` anything with the config fields used below.
"""
from __future__ import annotations

import logging
import os
import re
from typing import List, Optional

import torch

from ..errors import BadDataError, ConfigError, DataError, DataPlaneError, MissingFileError
from .device_feed import to_device_ahead
from .index import VideoIndex, build_index, index_path, load_index, rebuild_hint, reencode_hint
from .lists import VideoEntry, detect_kind, read_list
from .media import FrameLayout
from .sampler import EpochIndexed, GlobalBatchSampler
from .shard_store import ShardSet, is_shard_location, parse_storage_options

__all__ = ["DECODERS", "choose_decoder", "load_list", "pretrain_loader", "finetune_loader",
           "eval_loader", "PyAVLoader", "PyAVEvalLoader"]

log = logging.getLogger("vmae2_fast")
DECODERS = ("auto", "dali", "pyav")


def choose_decoder(requested: str, device: torch.device, log_choice: bool = True) -> str:
    """``auto``: DALI when training on a GPU and DALI imports, PyAV otherwise; logs the choice."""
    from .dali.pipeline import dali_status
    if requested not in DECODERS:
        raise ConfigError(f"--decoder must be one of {', '.join(DECODERS)}, got {requested!r}")
    ok, info = dali_status()
    if requested == "dali":
        if not ok:
            raise ConfigError(f"--decoder dali: {info}; install it with "
                             f"`pip install nvidia-dali-cuda130` or use --decoder pyav")
        choice, why = "dali", f"requested (DALI {info}, decoding on the {_dali_dev(device)})"
    elif requested == "pyav":
        choice, why = "pyav", "requested"
    elif device.type != "cuda":
        # DALI's CPU decoder handles only VP8/VP9/MJPEG (most datasets are H.264), and on a CPU
        # run the decoder competes with the model for the same cores anyway.
        choice, why = "pyav", ("auto: training on the CPU, where DALI's CPU decoder reads only "
                               "VP8/VP9/MJPEG; use --decoder dali for such files")
    elif not ok:
        choice, why = "pyav", f"auto: {info}"
    else:
        choice, why = "dali", f"auto: training on a GPU with DALI {info} (GPU decoding)"
    if log_choice:
        log.info("video decoder: %s (%s)", choice, why)
    return choice


def _dali_dev(device: torch.device) -> str:
    return "gpu" if device.type == "cuda" else "cpu"


def apply_index(list_file: str, data_root: str, *, required: bool, build: bool = False,
                labels: bool = False, layout: FrameLayout | None = None) -> Optional[VideoIndex]:
    """Load the list's index if there is one (a stale index raises with the rebuild command).

    ``required``: a missing index is an error naming the command that builds it; ``build``:
    build a missing or stale index instead (used for the embedded synthetic dataset). Returns
    None when there is no index and none is required. ``labels`` and ``layout`` say how the list
    is read (see `index.build_index`)."""
    layout = layout or FrameLayout()
    opts = dict(fname_tmpl=layout.template, start_idx=layout.start_idx, labels=labels)
    if build:
        try:
            return load_index(list_file, data_root, **opts)
        except (FileNotFoundError, ValueError):
            log.info("indexing %s", list_file)
            return build_index(list_file, data_root, progress=False, **opts)
    if not os.path.isfile(index_path(list_file)):
        if required:
            hint = rebuild_hint(list_file, data_root, layout.template, layout.start_idx,
                                detect_kind(list_file, labels))
            raise MissingFileError(
                f"--decoder dali needs the frame counts of every video: build the index with `{hint}`")
        return None
    return load_index(list_file, data_root, **opts)


def load_list(list_file: str, data_root: str, *, decoder: str, labels: bool, build: bool = False,
              layout: FrameLayout | None = None, storage_options: str | dict = ""):
    """The list's entries and its index. With an index (required for DALI; built on the spot when
    ``build``), the entries are the index's usable videos, with their frame counts; a stale index
    is refused with the command that rebuilds it. Frame folders are named by ``layout``.

    A shard set (a URL, or a folder with ``shards.json``) gives its samples' entries and the
    `ShardSet` in place of the index (``storage_options``: fsspec options, JSON or a dict)."""
    if is_shard_location(list_file):
        shards = ShardSet.open(list_file, parse_storage_options(storage_options))
        if labels and shards.kind != "classify":
            raise DataError(f"the shard set at {list_file} has no labels (it was packed from a "
                            "pre-training list); pack the classification list")
        from .shard_loader import shard_entries
        return shard_entries(shards), shards
    layout = layout or FrameLayout()
    entries = read_list(list_file, data_root, labels=labels, start_idx=layout.start_idx)
    index = apply_index(list_file, data_root, required=decoder == "dali", build=build, labels=labels,
                        layout=layout)
    if index is None:
        require_some_video(entries, list_file, data_root)
        return entries, None
    if index.excluded:
        log.warning("%d videos of %s are excluded by its index (unreadable, truncated, ...)",
                    len(index.excluded), list_file)
    if not index.videos:
        raise DataError(f"no usable video is left in {list_file}: its index excludes all "
                         f"{len(index.excluded)} (first: {index.excluded[0]})")
    return [VideoEntry(v.path, v.start, v.frames, v.label, v.rel) for v in index.videos], index


def require_some_video(entries: List[VideoEntry], list_file: str, data_root: str,
                       sample: int = 64) -> None:
    """Refuse a list none of whose videos exists (a wrong --data-root, the usual cause), before
    any compute. Missing files among others are skipped during training like any bad video, so
    only ``sample`` entries spread over the list are looked at, and the whole list only when none
    of those exists."""
    step = max(1, len(entries) // sample)
    if any(os.path.exists(e.path) for e in entries[::step]):
        return
    if any(os.path.exists(e.path) for e in entries):
        return
    raise BadDataError(f"none of the {len(entries)} videos of {list_file} exists (first: "
                       f"{entries[0].path}); is --data-root ({data_root or 'not set'}) right?")


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                   # macOS, Windows
        return os.cpu_count() or 1


def capped_workers(requested: int) -> int:
    """`--num-workers`, at most the cores this process may use (torch warns past that, and the
    extra workers only compete with each other and with the model for the same cores); says so
    when it caps."""
    cores = usable_cores()
    if requested <= cores:
        return requested
    log.info("--num-workers %d is more than the %d CPU cores this process may use: %d DataLoader "
             "workers", requested, cores, cores)
    return cores


_DEAD_WORKER = re.compile(r"DataLoader worker \(pids?(?:\(s\))? ([\d, ]+)\)")


def dead_worker_error(exc: BaseException, board=None) -> Optional[DataPlaneError]:
    """The `DataPlaneError` for torch's "DataLoader worker (pid ...) is killed / exited
    unexpectedly" error, naming the file the worker was reading (from ``board``, a
    `pyav.base.WorkerBoard`); None for any other exception. torch raises that error within
    seconds of the death (its SIGCHLD handler, asynchronously, wherever the main thread is; or
    its status check while waiting for a batch), so nothing hangs."""
    found = _DEAD_WORKER.search(str(exc)) if isinstance(exc, RuntimeError) else None
    if found is None:
        return None
    pids = {int(p) for p in found.group(1).replace(",", " ").split()}
    files = board.files_of(pids) if board is not None else []
    what = (f"while reading {', '.join(files)}" if files else
            "(not while reading a video of this loader)")
    return DataPlaneError(f"a data loader worker died {what} "
                          f"({str(exc).splitlines()[0].strip().rstrip('.')})", files)


def worker_message(exc: BaseException) -> str:
    """The message an exception was raised with in a DataLoader worker (torch re-raises it in
    the main process as "Caught X in DataLoader worker process N. Original Traceback ...",
    ending with the original ``X: message`` line)."""
    text = str(exc)
    if "DataLoader worker" not in text.split("\n", 1)[0]:
        return text
    name = type(exc).__name__ + ": "
    last = [line for line in text.splitlines() if name in line]
    return last[-1].split(name, 1)[1] if last else text.splitlines()[-1]


def guarded(batches, board=None):
    """Iterate a DataLoader, a dead worker raised as `dead_worker_error`."""
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except DataPlaneError as exc:            # raised in a worker (a store that stays down):
            del it                               # torch re-raises it with the worker's traceback
            raise DataPlaneError(worker_message(exc), exc.files) from None
        except RuntimeError as exc:
            err = dead_worker_error(exc, board)
            if err is None:
                raise
            del it                               # shuts the other workers down
            raise err from None
        yield batch


def _board(dataset, num_workers: int):
    """A `WorkerBoard` for the dataset's workers (PyAV datasets only; None without workers)."""
    from .pyav.base import VideoDataset, WorkerBoard
    if not num_workers or not isinstance(dataset, VideoDataset):
        return None
    dataset.board = WorkerBoard(num_workers)
    return dataset.board


class PyAVLoader:
    """Training batches of a map-style dataset (PyAV decoding in DataLoader workers), in the
    global batch order."""

    def __init__(self, dataset, collate, cfg, dist, device: torch.device):
        self.dataset, self.collate = EpochIndexed(dataset), collate
        self.sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, dist.world_size, dist.rank, cfg.seed)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.num_videos = len(dataset)
        self.num_workers, self.pin = capped_workers(cfg.num_workers), device.type == "cuda"
        self.device = device
        self.board = _board(dataset, self.num_workers)

    def data_plane_error(self, exc: BaseException) -> Optional[DataPlaneError]:
        """For the trainer: torch may raise a worker's death anywhere in the main thread."""
        return dead_worker_error(exc, self.board)

    def __call__(self, epoch: int = 0, skip: int = 0):
        self.sampler.set_epoch(epoch, skip)
        return to_device_ahead(guarded(torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.sampler, num_workers=self.num_workers,
            collate_fn=self.collate, pin_memory=self.pin,
            prefetch_factor=4 if self.num_workers else None), self.board), self.device)


class PyAVEvalLoader:
    """Every video of this process's contiguous shard once, in list order (val / test)."""

    def __init__(self, dataset, batch_size: int, num_workers: int, dist,
                 device: torch.device = torch.device("cpu")):
        from .pyav.classify import eval_collate
        per_rank = -(-len(dataset) // dist.world_size)
        shard = range(dist.rank * per_rank, min(len(dataset), (dist.rank + 1) * per_rank))
        num_workers = capped_workers(num_workers)
        self.board = _board(dataset, num_workers)
        self.dataset = torch.utils.data.Subset(dataset, list(shard))
        self.batch_size, self.num_workers, self.collate = batch_size, num_workers, eval_collate
        self.steps_per_epoch = -(-len(self.dataset) // batch_size)
        self.num_videos = len(self.dataset)
        self.device = device

    def __call__(self, epoch: int = 0, skip: int = 0):
        return to_device_ahead(guarded(torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.dataset, list(range(skip * self.batch_size, len(self.dataset)))),
            batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=self.collate,
            pin_memory=self.device.type == "cuda"), self.board), self.device)


def frame_layout(cfg) -> FrameLayout:
    """The frame-folder naming of a config (``fname_tmpl``, ``start_idx``; defaults if absent)."""
    default = FrameLayout()
    start = getattr(cfg, "start_idx", None)
    return FrameLayout(getattr(cfg, "fname_tmpl", None) or default.template,
                       default.start_idx if start is None else start)


def _dali(index, mode: str, cfg, dist, device: torch.device, **kw):
    """The DALI loader of the list; with ``--decoder auto`` the files DALI cannot decode (codec,
    pixel format) are decoded by PyAV within it, with ``--decoder dali`` they are left out (the
    warning names the re-encode command). A shard set streams its records' bytes to DALI."""
    from .dali.pipeline import DaliVideoLoader
    if isinstance(index, ShardSet):
        from .shard_loader import ShardFeed
        feed = ShardFeed(index, kw["batch_size"], dist.world_size, dist.rank)
        videos, source = feed.videos, dict(shard_feed=feed)
    else:
        videos, source = index.videos, dict(
            fname_tmpl=frame_layout(cfg).template, fallback=getattr(cfg, "decoder", "dali") == "auto",
            reencode_hint=reencode_hint(index.list_file, index.data_root))
    return DaliVideoLoader(
        videos, mode=mode, num_frames=cfg.num_frames, sampling_rate=cfg.sampling_rate,
        input_size=cfg.input_size, seed=cfg.seed, world_size=dist.world_size, rank=dist.rank,
        device=_dali_dev(device), device_id=device.index if device.type == "cuda" else None,
        target_device=device, num_threads=max(1, min(cfg.num_workers, usable_cores())),
        decoder_instances=cfg.dali_instances, **source, **kw)


def _pretrain_load(dataset, entry, rng):
    return (dataset.clips_of(entry, rng),)


def _pretrain_failed(skipped):
    return None, skipped


def _classify_load(dataset, entry, rng):
    return dataset.train_item_of(entry, rng)


def _classify_failed(skipped):
    return None, -1, [], skipped


def _shard_train(index: ShardSet, dataset, load, failed, collate, cfg, dist, device: torch.device):
    from .shard_loader import ShardTrainLoader
    workers = capped_workers(cfg.num_workers)
    return ShardTrainLoader(index, dataset, load, failed, collate, cfg, dist, device, workers,
                            _board(dataset, workers))


def pretrain_loader(entries: List[VideoEntry], index, cfg, dist, device: torch.device, decoder: str):
    """Stage-1 clips: one decode per video, ``cfg.num_sample`` multi-scale crops of it."""
    if decoder == "dali":
        return _dali(index, "pretrain", cfg, dist, device, batch_size=cfg.batch_size,
                     num_views=cfg.num_sample)
    from .pyav.pretrain import PretrainVideoDataset, pretrain_collate
    dataset = PretrainVideoDataset(entries, num_frames=cfg.num_frames, sampling_rate=cfg.sampling_rate,
                                   input_size=cfg.input_size, num_sample=cfg.num_sample, seed=cfg.seed,
                                   layout=frame_layout(cfg))
    if isinstance(index, ShardSet):
        return _shard_train(index, dataset, _pretrain_load, _pretrain_failed, pretrain_collate, cfg, dist,
                            device)
    return PyAVLoader(dataset, pretrain_collate, cfg, dist, device)


def finetune_loader(entries: List[VideoEntry], index, cfg, dist, device: torch.device, decoder: str):
    """Stages 2/3 training clips: official sampling and augmentation, ``cfg.num_sample`` views."""
    if decoder == "dali":
        from .pyav.randaugment import parse_policy
        policy = parse_policy(cfg.aa)
        if policy and policy.get("mstd"):
            log.info("DALI RandAugment: magnitude %g for every op (DALI has no magnitude noise; the "
                     "CPU path draws it from N(m, %g))", policy["m"], policy["mstd"])
        return _dali(index, "finetune", cfg, dist, device, batch_size=cfg.batch_size,
                     num_views=cfg.num_sample, flip=cfg.flip, erase_prob=cfg.reprob,
                     rand_augment=(policy["n"], int(round(policy["m"]))) if policy else None,
                     sparse=cfg.sparse_sample, min_crop_scale=cfg.min_crop_scale)
    from .pyav.classify import VideoClsDataset, cls_collate
    dataset = VideoClsDataset(entries, True, num_frames=cfg.num_frames, layout=frame_layout(cfg),
                              sampling_rate=cfg.sampling_rate, input_size=cfg.input_size,
                              short_side_size=cfg.short_side_size, num_sample=cfg.num_sample,
                              flip=cfg.flip, aa=cfg.aa, reprob=cfg.reprob,
                              min_crop_scale=cfg.min_crop_scale, sparse=cfg.sparse_sample, seed=cfg.seed)
    if isinstance(index, ShardSet):
        return _shard_train(index, dataset, _classify_load, _classify_failed, cls_collate, cfg, dist, device)
    return PyAVLoader(dataset, cls_collate, cfg, dist, device)


def eval_loader(entries: List[VideoEntry], index, cfg, dist, device: torch.device, decoder: str, *,
                batch_size: int, mode: str = "val", segments: int = 1, crops: int = 1):
    """Every video once: ``val`` is the official single centred view, ``test`` the
    ``segments x crops`` views of ``final_test`` from one decode."""
    if mode not in ("val", "test"):
        raise ValueError(f"mode must be 'val' or 'test', got {mode!r}")
    if decoder == "dali":
        extra = dict(num_views=crops, test_segments=segments) if mode == "test" else {}
        return _dali(index, mode, cfg, dist, device, batch_size=batch_size, sparse=cfg.sparse_sample,
                     short_side=cfg.short_side_size, **extra)
    from .pyav.classify import VideoClsDataset, VideoTestDataset
    common = dict(num_frames=cfg.num_frames, sampling_rate=cfg.sampling_rate, input_size=cfg.input_size,
                  short_side_size=cfg.short_side_size, sparse=cfg.sparse_sample, layout=frame_layout(cfg))
    dataset = (VideoClsDataset(entries, False, seed=cfg.seed, **common) if mode == "val" else
               VideoTestDataset(entries, segments=segments, crops=crops, **common))
    if isinstance(index, ShardSet):
        from .pyav.classify import eval_collate
        from .shard_loader import ShardEvalLoader
        workers = capped_workers(cfg.num_workers)
        _board(dataset, workers)
        return ShardEvalLoader(index, dataset, eval_collate, batch_size, workers, dist, device)
    return PyAVEvalLoader(dataset, batch_size, cfg.num_workers, dist, device)
