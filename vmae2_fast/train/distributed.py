"""Process-group set-up from torchrun's environment (or Slurm's, under a bare ``srun``), and small
helpers that are no-ops alone.

Two launches reach the same process group (README "Several nodes"):
* ``torchrun`` on every node (``srun`` one task per node, c10d rendezvous): torchrun sets
  RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, as on one node;
* ``srun`` one task per GPU without torchrun (the official scripts' way): the task's SLURM_PROCID,
  SLURM_STEP_NUM_TASKS and SLURM_LOCALID give the rank, world size and local rank; MASTER_ADDR
  defaults to the first node of the job (``scontrol show hostnames``) and MASTER_PORT to 29500.
"""
from __future__ import annotations

import datetime
import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError


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


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (RANK/WORLD_SIZE/LOCAL_RANK), or the one a bare
    ``srun`` step of several tasks describes (`slurm_environment`); alone, do nothing.

    NCCL on CUDA, gloo on the CPU (which is how the multi-process tests run here).
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
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank, world, local)


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
