"""Process-group set-up from torchrun's environment (or Slurm's, under a bare ``srun``), and small
helpers that are no-ops alone.

Two launches reach the same process group (docs/reliability.md "Several nodes"):
* ``torchrun`` on every node (``srun`` one task per node, c10d rendezvous): torchrun sets
  RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, as on one node;
* ``srun`` one task per GPU without torchrun (the official scripts' way): the task's SLURM_PROCID,
  SLURM_STEP_NUM_TASKS and SLURM_LOCALID give the rank, world size and local rank; MASTER_ADDR
  defaults to the first node of the job (``scontrol show hostnames``) and MASTER_PORT to 29500.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError, RunStopped

# The longest a collective may wait for the other processes (--dist-timeout). A rank writing a
# synchronous checkpoint keeps the others waiting for the length of the write: keep it above that.
DEFAULT_TIMEOUT_S = 1800.0


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def slurm_environment(env=os.environ) -> dict:
    """torchrun's variables from those ``srun`` gives each task (empty when torchrun already set
    them, or outside an ``srun`` step of several tasks)."""
    if "WORLD_SIZE" in env or "SLURM_PROCID" not in env or int(env.get("SLURM_STEP_NUM_TASKS", "1")) <= 1:
        return {}
    out = {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_STEP_NUM_TASKS"],
           "LOCAL_RANK": env.get("SLURM_LOCALID", "0"), "MASTER_PORT": env.get("MASTER_PORT", "29500")}
    addr = env.get("MASTER_ADDR")
    if not addr:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
        try:
            addr = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True,
                                  text=True, check=True).stdout.split()[0]
        except (OSError, subprocess.CalledProcessError, IndexError) as exc:
            raise ConfigError(f"under srun without torchrun, set MASTER_ADDR to the first node of the "
                             f"job (scontrol could not list {nodes!r}: {exc})") from None
    out["MASTER_ADDR"] = addr
    return out


def init_distributed(device_type: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistInfo:
    """Join the process group torchrun describes (RANK/WORLD_SIZE/LOCAL_RANK), or the one a bare
    ``srun`` step of several tasks describes (`slurm_environment`); alone, do nothing.

    NCCL on CUDA, gloo on the CPU (which is how the multi-process tests run here). A collective
    that waits longer than `timeout_s` (``--dist-timeout``) fails instead of hanging: gloo raises
    it in the waiting process (`CollectiveTimeout` names the late rank), NCCL's watchdog ends the
    process with the collective and its rank.
    """
    os.environ.update(slurm_environment())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        timeout = datetime.timedelta(seconds=timeout_s)
        store = _attempt_store(world, timeout)
        if store is None:
            dist.init_process_group(backend, timeout=timeout)
        else:
            dist.init_process_group(backend, timeout=timeout, store=store, rank=rank, world_size=world)
    return DistInfo(rank, world, local)


def _attempt_store(world: int, timeout: datetime.timedelta):
    """Under a one-node torchrun, the agent's store seen through a prefix of this attempt of the
    group (``TORCHELASTIC_RESTART_COUNT``); None elsewhere.

    torchrun (2.13) keeps one store for all the attempts of a group (``--max-restarts``) and gives
    each the same MASTER_PORT, while the keys the process group writes there (gloo's peer
    addresses, NCCL's unique id) name no attempt: a restarted group reads the dead attempt's
    addresses and fails to connect ("Gloo connectFullMesh failed ... Connection refused") or
    hangs. With one agent its restart count numbers the attempts. With several, each agent counts
    its own restarts (one whose workers did not fail restarts them without counting), so no
    prefix is common to the group: there ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` in torchrun's
    environment gives every attempt a store of its own (scripts/slurm/multinode.sbatch sets it)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if os.environ.get("GROUP_WORLD_SIZE", "1") != "1":
        if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 and os.environ.get("RANK") == "0":
            warnings.warn("torchrun --max-restarts on several nodes restarts a failed group on the "
                          "store of the dead attempt, where it fails to connect (torch 2.13): launch "
                          "torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in its environment")
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=False, timeout=timeout)
    return dist.PrefixStore(f"vmae2_fast/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In-place sum over ranks (an asynchronous device op on NCCL: no host sync)."""
    if info.enabled:
        dist.all_reduce(t)
    return t


def all_gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


class CollectiveTimeout(RunStopped):
    """A collective waited longer than --dist-timeout: a rank is stuck (I/O, a dead device) or gone."""


# gloo: "Timed out waiting 5000ms for recv operation"; NCCL: "Watchdog caught collective operation timeout"
_TIMEOUT = re.compile(r"timed out waiting \d+ ?ms for \w+ operation|collective operation timeout", re.IGNORECASE)
# gloo, when the other end of a collective has died
_PEER_GONE = re.compile(r"connection (closed|reset) by peer", re.IGNORECASE)


def collective_failure(exc: BaseException) -> str | None:
    """``"timeout"`` (a collective waited longer than --dist-timeout), ``"peer gone"`` (another
    process of the group died), or None for any other error."""
    if not isinstance(exc, RuntimeError):
        return None
    text = str(exc)
    return "timeout" if _TIMEOUT.search(text) else "peer gone" if _PEER_GONE.search(text) else None


class Progress:
    """Where each rank last was, kept in the process group's store (torchrun's agent store, or
    rank 0's under a bare srun; it lives outside the collectives), so that a rank whose
    collective timed out can name the rank that did not come. Every rank marks the same points
    in the same order; a mark is one small write to the store."""

    def __init__(self, info: DistInfo):
        self.info, self.seq, self.store = info, 0, None
        if info.enabled and dist.is_initialized():
            from torch.distributed.distributed_c10d import _get_default_store
            self.store = _get_default_store()
        self.prefix = "vmae2_fast/progress/"   # the store is this attempt's (`_attempt_store`)

    def mark(self, where: str) -> None:
        if self.store is not None:
            self.seq += 1
            self.store.set(self.prefix + str(self.info.rank), json.dumps([self.seq, where, time.time()]))

    def where(self) -> dict[int, tuple[int, str, float]]:
        """Each rank's last mark (ranks that never marked are left out)."""
        if self.store is None:
            return {}
        keys = [self.prefix + str(r) for r in range(self.info.world_size)]
        out = {}
        for r, key in enumerate(keys):
            try:
                if self.store.check([key]):
                    out[r] = tuple(json.loads(self.store.get(key)))
            except (RuntimeError, ValueError):   # the store is gone too: say what we can
                break
        return out

    def peer_gone_error(self, exc: BaseException) -> RunStopped:
        """The error of a collective whose other end died (its own log says why)."""
        return RunStopped(
            f"rank {self.info.rank}: another process of the group died during a collective "
            f"({str(exc).splitlines()[0][:200]}); see the log of the first rank that failed. Run the "
            "same command again to resume from the newest checkpoint (under torchrun --max-restarts "
            "the group restarts by itself)")

    def timeout_error(self, exc: BaseException, timeout_s: float) -> CollectiveTimeout:
        """The error of a timed-out collective, naming the ranks behind this one."""
        marks = self.where()
        now = time.time()
        me = self.info.rank
        ahead = max((m[0] for m in marks.values()), default=0)
        late = [r for r in range(self.info.world_size) if marks.get(r, (0,))[0] < ahead]
        if late:
            said = "; ".join(
                f"rank {r} " + (f"last reached '{marks[r][1]}' {now - marks[r][2]:.0f} s ago" if r in marks
                                else "never reached the first step")
                for r in late)
            where = next(m[1] for m in marks.values() if m[0] == ahead)
            who = (f"rank{'s' if len(late) > 1 else ''} {', '.join(map(str, late))} did not come ({said}; "
                   f"the others are at '{where}'): stuck (I/O, a dead device) or gone; see its log")
        else:
            where = marks.get(me, (0, "the start", now))[1]
            who = (f"every rank reached '{where}' and one of them is stuck inside it (I/O, a dead device)")
        return CollectiveTimeout(
            f"rank {me}: a collective waited longer than --dist-timeout {timeout_s:g} s: {who}. "
            f"({str(exc).splitlines()[0][:200]}) Run the same command again to resume from the newest "
            "checkpoint (under torchrun --max-restarts the group restarts by itself)")
