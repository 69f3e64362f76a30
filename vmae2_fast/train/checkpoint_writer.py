"""Writing the loop's checkpoints: in the loop's thread, or (``--async-checkpoint``) in the
background while training goes on.

Saving ViT-g's state (1 B parameters: about 16 GB with AdamW) takes minutes, during which every
rank would wait. With ``background`` the step pays only for a copy of the state in host memory
(one process and DDP: rank 0 copies its state and a thread writes it; FSDP2: DCP's `async_save`
copies each process's shards and writes them in its thread, and rank 0's thread then writes the
``.pth`` that commits them), and training continues while the copy is written.

What does not change:
- at most one save is in flight: a save first waits for the previous one (so host memory holds
  at most one copy), and so does the end of the run;
- the same files, written the same atomic way (`checkpoint.save_checkpoint`: temp file, fsync,
  rename): a kill at any moment leaves the previous complete checkpoint or the new one;
- a failure (a full disk) stops every rank, at the first save after it or at the end of the run,
  where the ranks agree on it (a collective: every rank calls `settle` at the same points).

`waited_s` is the time the loop spent blocked by saves (the copy, and waiting for the previous
save; the whole write without ``background``); the loop logs it in ``metrics.jsonl``
(``ckpt_wait_s``).
"""
from __future__ import annotations

import datetime
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch

from ..errors import DiskFullError, RunStopped
from .checkpoint import latest_checkpoint, link_or_copy, prune_checkpoints, save_checkpoint
from .distributed import DistInfo, all_reduce_sum
from .sharded_checkpoint import FORMAT, remove_stale_shards, save_optimizer

log = logging.getLogger("vmae2_fast")

__all__ = ["CheckpointWriter", "host_copy", "LAST"]

LAST = "checkpoint-last.pth"


def host_copy(obj, skip: tuple = ()):
    """A copy of a state dict whose tensors live in host memory and share nothing with the
    training state (which the next steps change in place); keys in `skip` (top level) are kept
    as they are. CUDA tensors go through pinned memory, one synchronisation at the end."""
    cuda = []

    def copy(x):
        if isinstance(x, torch.Tensor):
            if x.device.type == "cuda":
                out = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
                out.copy_(x.detach(), non_blocking=True)
                cuda.append(x.device)
                return out
            return x.detach().clone()
        if isinstance(x, dict):
            return type(x)((k, copy(v)) for k, v in x.items())
        if isinstance(x, (list, tuple)):
            return type(x)(copy(v) for v in x)
        return x

    out = {k: (v if k in skip else copy(v)) for k, v in obj.items()}
    for device in set(cuda):
        torch.cuda.synchronize(device)
    return out


class CheckpointWriter:
    """Writes checkpoints for one run (every rank has one; rank 0 writes the files)."""

    def __init__(self, out: Path, dist: DistInfo, device: torch.device, *, background: bool,
                 sharded: bool, keep_last: int, model=None, optimizer=None, timeout_s: float = 1800.0):
        self.out, self.dist, self.device = Path(out), dist, device
        self.background, self.sharded, self.keep_last = background, sharded, keep_last
        self.model, self.optimizer = model, optimizer
        self.saved_step: int | None = None       # global step of the newest checkpoint written or read
        self.waited_s = 0.0                      # time the loop was blocked by saves, since last read
        self._pending: Future | None = None
        self._pending_what: tuple[str, int, float] | None = None   # (file, global step, start time)
        self._failure: BaseException | None = None
        self._warned_copy = False
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vmae2_fast-ckpt") if background else None
        self._group = None
        if background and sharded and dist.enabled:
            import torch.distributed as tdist
            # DCP's thread runs collectives (gathering the write plans): on a group of their own
            self._group = tdist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))

    def take_waited(self) -> float:
        waited, self.waited_s = self.waited_s, 0.0
        return waited

    def newest(self) -> Path | None:
        """What `--resume auto` picks: checkpoint-last.pth, else the highest checkpoint-N.pth."""
        return self.out / LAST if (self.out / LAST).exists() else latest_checkpoint(self.out)

    # ------------------------------------------------------------------------------ saving
    def save(self, make_state: Callable[[], dict], name: str, numbered: bool, global_step: int) -> None:
        """Checkpoint `name` (checkpoint-N.pth with `numbered`, checkpoint-last.pth a hard link to
        it; else checkpoint-last.pth alone) of the state `make_state` builds, a collective."""
        t0 = time.perf_counter()
        self.settle()                            # at most one save in flight
        t_settled = time.perf_counter()
        state = make_state()
        shards = None
        if self.sharded:                         # collective; the .pth below commits it
            shards = save_optimizer(self.model, self.optimizer, self.out, name, global_step, self.dist,
                                    background_group=self._group if self.background else None)
            state["sharded"] = {"format": FORMAT, "folder": shards.name, "world_size": self.dist.world_size}
        if self.background and self.dist.is_main:
            # FSDP's consolidated model is already a fresh host copy, gathered from the shards
            state = host_copy(state, skip=("model",) if self.sharded and self.dist.enabled else ())
        job = lambda: self._commit(state, name, numbered, shards)  # noqa: E731
        if self.background:
            self._pending, self._pending_what = self._pool.submit(job), (name, global_step, time.perf_counter())
            waited = time.perf_counter() - t0
            if self.dist.is_main:
                log.info("writing %s (global step %d) in the background; the step waited %.2f s "
                         "(%.2f s for the previous save, %.2f s copying the state)", name, global_step,
                         waited, t_settled - t0, waited - (t_settled - t0))
        else:
            self._pending_what = (name, global_step, t0)
            try:
                job()
            except BaseException as exc:         # agreed on by every rank in `settle`
                self._failure = exc
            self.settle()
            waited = time.perf_counter() - t0
        self.waited_s += waited

    def _commit(self, state: dict, name: str, numbered: bool, shards) -> None:
        """The writes of one save: the optimiser shards complete (FSDP), then, on rank 0, the
        .pth file that commits them, the link and the pruning."""
        if shards is not None:
            shards.finish()
        if not self.dist.is_main:
            return
        path = save_checkpoint(self.out / name, state)
        if numbered:
            if link_or_copy(path, self.out / LAST) == "copy" and not self._warned_copy:
                self._warned_copy = True
                log.warning("%s has no hard links: %s is a full copy of the newest numbered checkpoint "
                            "(twice the disk space)", self.out, LAST)
            if self.keep_last:
                prune_checkpoints(self.out, self.keep_last)
        if self.sharded:
            remove_stale_shards(self.out, {state["sharded"]["folder"]})

    def settle(self) -> None:
        """Wait for the save in flight, if any, and agree with every rank on its outcome: a full
        disk stops every rank with `DiskFullError` (on rank 0) / `RunStopped`; any other failure
        is a bug and keeps its traceback on the rank where it happened."""
        if self._pending is not None:
            try:
                self._pending.result()
            except BaseException as exc:
                self._failure = exc
            self._pending = None
        what, self._pending_what = self._pending_what, None
        failure, self._failure = self._failure, None
        if what is not None and failure is None:
            self.saved_step = what[1]
            if self.background and self.dist.is_main:
                log.info("%s (global step %d) written in the background in %.1f s", what[0], what[1],
                         time.perf_counter() - what[2])
        if isinstance(failure, DiskFullError) and self.dist.is_main:
            prev = (f"{self.newest()} (global step {self.saved_step})" if self.saved_step is not None
                    else "none: no checkpoint was written yet")
            failure = DiskFullError(
                f"no space left on the device of {self.out} while writing the checkpoint of global "
                f"step {what[1]}; the partial file was removed and the previous checkpoint is intact: "
                f"{prev}. Free some space (--keep-last K keeps only the newest K numbered "
                "checkpoints), then run the same command again to resume.")
        if self.dist.enabled:                    # also the barrier that ends a synchronous save
            flags = torch.zeros(self.dist.world_size, device=self.device)
            flags[self.dist.rank] = float(failure is not None)
            failed = all_reduce_sum(flags, self.dist).nonzero().flatten().tolist()
            if failed and failure is None:
                raise RunStopped(f"rank {', '.join(map(str, failed))} could not write its part of the "
                                 "checkpoint; its log says why and how to resume")
        if failure is not None:
            raise failure

    def close(self) -> None:
        """Let a save in flight finish (a run that stops on an error keeps its newest checkpoint);
        no collective, so it is safe on any exit path."""
        if self._pending is not None:
            try:
                self._pending.result()
            except BaseException as exc:
                log.warning("the checkpoint written in the background failed: %s", exc)
            self._pending = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
