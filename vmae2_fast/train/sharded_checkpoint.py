"""Checkpoints of FSDP runs (`--parallelism fsdp`): the AdamW state written sharded through
`torch.distributed.checkpoint` (DCP), the model consolidated, so that a run saved on N processes
resumes on M (one included) and every tool that reads checkpoints keeps working.

What a save writes, for ``checkpoint-7.pth`` at global step 420:
- ``checkpoint-7.g420.optim/``: the optimiser state, keyed by parameter name, each process
  writing its own shards (DCP's files plus its ``.metadata``). Written under a hidden temporary
  name and renamed when every process has finished;
- ``checkpoint-7.pth``, written by rank 0 as every other checkpoint (atomic, `save_checkpoint`)
  and only after the folder is complete (with ``--async-checkpoint`` both are written in the
  background, in that order: `ShardedSave`): the consolidated model under ``model`` (official key
  names, full fp32 tensors: `models.weights.read_checkpoint`, ``--init``, ``evaluate`` and the
  Hugging Face export read it like a DDP checkpoint), the run state (epoch, RNG, stage, records),
  and under ``sharded`` the folder's name. The ``.pth`` is the commit point: a kill before it
  leaves the previous checkpoint whole, and an orphaned folder is removed by the next save.

Why the model is consolidated and not sharded too: one copy of the weights per checkpoint (the
size a DDP checkpoint has), readable by every tool without a conversion step, and exact (the
sharded master weights are fp32 whatever `--fsdp-param-dtype` is). The optimiser state is twice
the model (AdamW's two moments) and is what would not fit one process's memory comfortably.

Resuming (`load_optimizer`) builds the optimiser's state dict for the model as it is now (FSDP on
M processes, or a plain model), and DCP reads into it whatever layout it was saved from.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import DiskFullError
from .parallelize import is_sharded
from .storage import is_no_space

__all__ = ["FORMAT", "full_model_state", "load_full_model_state", "save_optimizer", "ShardedSave", "load_optimizer",
           "load_optimizer_by_name", "remove_stale_shards"]

FORMAT = "torch.distributed.checkpoint"
_FOLDER = re.compile(r"^(checkpoint-(?:\d+|last))\.g(\d+)\.optim$")


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(**kw)


def full_model_state(model: nn.Module) -> dict:
    """The model's whole state dict as CPU tensors with the official key names: gathered from
    the shards under FSDP (a collective: every process calls it; only rank 0 gets the tensors,
    the others an empty dict), `state_dict()` otherwise."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    return get_model_state_dict(model, options=_options(full_state_dict=True, cpu_offload=True))


def load_full_model_state(model: nn.Module, state: dict) -> None:
    """Load a whole (consolidated) state dict, strictly; under FSDP each process keeps its shard."""
    if not is_sharded(model):
        model.load_state_dict(state, strict=True)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict
    set_model_state_dict(model, state, options=_options(full_state_dict=True, strict=True))


def _optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimiser's state keyed by parameter name (DTensor shards under FSDP); a fresh
    optimiser's state is first allocated by one step with zero gradients and lr 0."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    return get_optimizer_state_dict(model, optimizer)


def _folder_name(pth_name: str, global_step: int) -> str:
    return f"{Path(pth_name).stem}.g{global_step}.optim"


class ShardedSave:
    """The optimiser shards of one checkpoint being written; `finish` waits for every process's
    part and, on rank 0, gives the folder its final name."""

    def __init__(self, name: str, tmp: Path, out_dir: Path, dist, future=None):
        self.name, self.tmp, self.out_dir, self.dist, self.future = name, tmp, out_dir, dist, future

    def finish(self) -> str:
        """The folder's name, once complete; a failure removes the partial folder and a full
        disk is raised as `DiskFullError` (on every process)."""
        if self.future is not None:
            try:
                self.future.result()
            except Exception as exc:
                self._failed(exc)
        if self.dist.is_main:  # DCP's save ends on rank 0 once every process has written its part
            final = self.out_dir / self.name
            if final.exists():            # the same step saved again (a run resumed from earlier)
                shutil.rmtree(final)
            self.tmp.rename(final)
        return self.name

    def _failed(self, exc: Exception):
        if self.dist.is_main:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if _any_no_space(exc):
            raise DiskFullError(f"no space left on the device of {self.out_dir} while writing the "
                                f"optimiser shards {self.name}; the partial folder was removed") from None
        raise exc


def save_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, out_dir: Path, pth_name: str,
                   global_step: int, dist, background_group=None) -> ShardedSave:
    """Write the optimiser's shards for the checkpoint file `pth_name` (every process calls it);
    the returned `ShardedSave` gives the folder's name, to be recorded in that file, once
    finished. With `background_group` (``--async-checkpoint``: a gloo group of its own, so that
    the writers' collectives never interleave with training's) the shards are copied to host
    memory here and written by DCP's thread (`dcp.async_save`); call `finish` before the next."""
    import torch.distributed as tdist
    import torch.distributed.checkpoint as dcp
    name = _folder_name(pth_name, global_step)
    tmp = out_dir / f".{name}.tmp"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)           # left by a killed save
    if dist.enabled:
        tdist.barrier()
    state = {"optimizer": _optimizer_state(model, optimizer)}
    pending = ShardedSave(name, tmp, out_dir, dist)
    try:
        if background_group is None:
            dcp.save(state, checkpoint_id=str(tmp), no_dist=not dist.enabled)
        else:
            pending.future = dcp.async_save(state, checkpoint_id=str(tmp), no_dist=not dist.enabled,
                                            process_group=background_group if dist.enabled else None)
    except Exception as exc:
        pending._failed(exc)
    return pending


def _any_no_space(exc: BaseException) -> bool:
    """DCP gathers the failures of every process into one exception (`failures`: rank -> error)."""
    nested = list(getattr(exc, "failures", {}).values())
    return is_no_space(exc) or any(isinstance(e, BaseException) and is_no_space(e) for e in nested)


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, pth_path: Path, sharded: dict,
                   dist) -> None:
    """Read the optimiser shards a checkpoint file names into `optimizer`, whatever the number of
    processes (and FSDP or not) that wrote them."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    from ..models.weights import CheckpointError
    folder = Path(pth_path).parent / sharded["folder"]
    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"{pth_path} keeps its optimiser state in {folder}, which is missing or "
                              "incomplete; resume from another checkpoint, or copy the folder beside the file")
    state = {"optimizer": _optimizer_state(model, optimizer)}
    dcp.load(state, checkpoint_id=str(folder), no_dist=not dist.enabled)
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def load_optimizer_by_name(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load the state of a whole (DDP or one-process) optimiser, `optimizer.state_dict()` as
    saved, into an optimiser over sharded parameters. The saved state is keyed by position; the
    groups' ``param_names`` (`optim.param_groups`) give each position its parameter name."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    from ..models.weights import CheckpointError
    names = {}
    for group in saved["param_groups"]:
        if len(group.get("param_names", ())) != len(group["params"]):
            raise CheckpointError("this optimiser state has no parameter names (it was not written by "
                                  "vmae2_fast); resume it with --parallelism ddp")
        names.update(zip(group["params"], group["param_names"]))
    by_name = {"state": {names[i]: st for i, st in saved["state"].items()},
               "param_groups": [{**g, "params": list(g["param_names"])} for g in saved["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=_options(full_state_dict=True))


def remove_stale_shards(out_dir: Path, live: set[str]) -> list[Path]:
    """Delete the optimiser folders no checkpoint file refers to any longer: those of
    ``checkpoint-N.pth`` files that are gone (pruned, or a save killed before its file), and any
    ``checkpoint-<N|last>`` folder other than the `live` ones rank 0 has just written or linked.
    Returns what was deleted."""
    doomed = []
    for entry in Path(out_dir).iterdir():
        m = _FOLDER.match(entry.name)
        if not m or entry.name in live:
            continue
        stem = m.group(1)
        if any(n.startswith(stem + ".") for n in live) or not (Path(out_dir) / f"{stem}.pth").exists() \
                or stem == "checkpoint-last":
            shutil.rmtree(entry, ignore_errors=True)
            doomed.append(entry)
    return doomed
