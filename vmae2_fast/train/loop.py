"""The one training loop every stage shares: a stage is a model, a loss and a data source.

What the loop owns: precision (autocast, optional fp16 scaler), gradient accumulation, clipping,
the per-iteration lr / weight-decay schedule, skipping non-finite updates (on the device with a
fused torch optimiser, one decision for every process), atomic checkpoints and exact resume,
logging. The step itself makes no host syncs: losses, gradient
norms and skip counters stay on the device and are read only every `log_every` steps.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol

import torch
import torch.nn as nn

from ..errors import ConfigError, DataPlaneError, RunStopped
from ..models.weights import CheckpointError, read_checkpoint
from .checkpoint import capture_rng_state, restore_rng_state
from .checkpoint_writer import LAST, CheckpointWriter
from .distributed import (DEFAULT_TIMEOUT_S, DistInfo, Progress, all_gather_objects, all_reduce_sum,
                          collective_failure)
from .metrics import JsonlLogger, TensorBoardLogger, describe_interval, memory_record, throughput_record
from .optim import set_lr_and_wd
from .parallelize import full_tensor, grad_sync, is_sharded
from .sharded_checkpoint import (full_model_state, load_full_model_state, load_optimizer,
                                 load_optimizer_by_name)
from .records import METRICS, SkippedVideos, offsets, rewind

log = logging.getLogger("vmae2_fast")

MAX_RECOVERIES = 3                         # data-plane faults resumed in-process per run


class Stage(Protocol):
    model: nn.Module                       # the raw model (what checkpoints hold)

    def compute_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        """(loss, number of clips in the batch); `model` is the wrapper `parallelize` made, `batch`
        one of the loader's batches (`data.batches`)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def on_epoch_end(self, epoch: int, trainer: "Trainer") -> dict: ...


@dataclass
class LoopSettings:
    epochs: int
    steps_per_epoch: int                   # optimiser steps per epoch
    accum_steps: int = 1
    clip_grad: float | None = None
    precision: str = "fp32"                # resolved: bf16 | fp16 | fp32
    max_nonfinite: int = 20
    log_every: int = 20
    save_every: int = 1
    save_every_steps: int = 0
    keep_last: int = 0
    max_bad_fraction: float = 0.5
    output_dir: str = "runs/out"
    progress: bool = True
    tensorboard: bool = False
    max_steps: int = 0
    sharded: bool = False                  # FSDP: optimiser state saved by DCP (sharded_checkpoint.py)
    async_checkpoint: bool = False         # write checkpoints in the background (checkpoint_writer.py)
    dist_timeout: float = DEFAULT_TIMEOUT_S  # the process group's collective timeout (for its message)
    flops_per_clip: tuple | None = None    # (model, hardware) training FLOPs per clip: TFLOP/s, MFU, HFU
    peak_flops: float | None = None        # FLOP/s of one device: MFU and HFU in the log


def resolve_precision(requested: str, device: torch.device) -> str:
    if requested == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device (use fp32 or bf16 on the CPU)")
    return requested


class NonFiniteLossError(RuntimeError):
    pass


class Trainer:
    def __init__(self, stage: Stage, wrapped_model: nn.Module, optimizer: torch.optim.Optimizer,
                 make_loader: Callable[[int, int], Iterable], lr_schedule, wd_schedule,
                 settings: LoopSettings, device: torch.device, dist_info: DistInfo, run_config: dict,
                 ema=None):
        self.stage, self.model, self.optimizer = stage, wrapped_model, optimizer
        self.ema = ema                          # train.ema.ModelEma of stage.model, or None
        self.make_loader = make_loader          # (epoch, micro_steps_to_skip) -> batches
        self.lr_schedule, self.wd_schedule = lr_schedule, wd_schedule
        self.s, self.device, self.dist = settings, device, dist_info
        self.run_config = run_config
        self.out = Path(settings.output_dir)
        self.global_step = 0                    # optimiser steps done
        self.epoch, self.epoch_step = 0, 0      # epoch in progress, optimiser steps done in it
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.precision)
        self.scaler = torch.amp.GradScaler("cuda") if settings.precision == "fp16" else None
        self.params = [p for p in stage.model.parameters() if p.requires_grad]
        # A non-finite update is skipped on the device by an optimiser whose step reads
        # `found_inf` (torch's fused Adam/AdamW/SGD/Adagrad: the flag GradScaler relies on too);
        # any other optimiser would ignore it, so the step is then skipped from the host.
        self.skip_on_device = bool(getattr(optimizer, "_step_supports_amp_scaling", False))
        if not self.skip_on_device and settings.precision != "fp16" and dist_info.is_main:
            log.warning("the optimiser (%s) cannot skip a non-finite update on the device (not a fused "
                        "torch optimiser): each step reads one flag on the host to skip it",
                        type(optimizer).__name__)
        # device-side counters, read only when logging
        self.nonfinite_run = torch.zeros((), dtype=torch.int64, device=device)
        self.skipped_total = torch.zeros((), dtype=torch.int64, device=device)
        self.skips = SkippedVideos(self.out, dist_info, getattr(make_loader, "num_videos", 0),
                                   settings.max_bad_fraction)
        self.writer = CheckpointWriter(self.out, dist_info, device, background=settings.async_checkpoint,
                                       sharded=settings.sharded, keep_last=settings.keep_last,
                                       model=stage.model, optimizer=optimizer,
                                       timeout_s=settings.dist_timeout)
        self.progress = Progress(dist_info)     # where each rank is: names a rank that hangs
        self.recoveries, self._failed_at = 0, -1
        self.metrics = JsonlLogger(self.out / METRICS) if dist_info.is_main else None
        if dist_info.is_main:   # partial writes of a killed run: never read, only taking space
            for tmp in self.out.glob(".checkpoint-*.tmp"):
                tmp.unlink(missing_ok=True)
        self.tb = TensorBoardLogger(self.out / "tensorboard") if settings.tensorboard and dist_info.is_main else None

    @property
    def skipped_videos(self) -> int:
        """Distinct unreadable videos met so far in this run."""
        return len(self.skips.run)

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> dict:
        rng = all_gather_objects(capture_rng_state(), self.dist)
        if self.dist.enabled:
            self.skips.merge(self.epoch, self.global_step)
        return {
            "model": full_model_state(self.stage.model),     # collective under FSDP
            "optimizer": None if self.s.sharded else self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "epoch": self.epoch, "epoch_step": self.epoch_step, "global_step": self.global_step,
            "stage": self.stage.state_dict(), "rng_per_rank": rng, "config": self.run_config,
            "records": {"offsets": offsets(self.out) if self.dist.is_main else {},
                        "skipped": self.skips.state_dict()},
            **({"model_ema": self.ema.state_dict()} if self.ema is not None else {}),
        }

    def newest_checkpoint(self) -> Path | None:
        """What `--resume auto` picks: checkpoint-last.pth, else the highest checkpoint-N.pth."""
        return self.writer.newest()

    def save(self, numbered: bool) -> None:
        """Write the checkpoint (numbered: checkpoint-N.pth, with checkpoint-last.pth a hard link
        to it), in the background with --async-checkpoint (`CheckpointWriter`). A full disk
        removes the partial file, keeps the previous checkpoint and stops every rank with
        `DiskFullError`; any other failure is a bug and keeps its traceback."""
        name = f"checkpoint-{self.epoch}.pth" if numbered else LAST
        self.progress.mark(f"saving {name} of global step {self.global_step}")
        self.writer.save(self.checkpoint_state, name, numbered, self.global_step)   # collective

    def resume(self, how: str, trust_code: bool = False) -> bool:
        """`auto`: the newest checkpoint in the output dir if any; a path: that file; `none`.
        ``trust_code`` (--trust-checkpoint) lets a file with pickled code be unpickled."""
        if how in ("none", "", None):
            return False
        if how == "auto":
            path = self.newest_checkpoint()
            if path is None:
                return False
        else:
            path = Path(how)
        state = read_checkpoint(path, trust_code=trust_code)
        if "model" not in state or "optimizer" not in state:
            raise CheckpointError(f"{path} is not a training checkpoint of this engine (no model/optimizer "
                                  f"state); to initialise from weights use the stage's --finetune option")
        try:
            load_full_model_state(self.stage.model, state["model"])
        except RuntimeError as e:
            was = state.get("config", {}).get("model", "another model")
            raise CheckpointError(
                f"{path} does not fit this model (it was written by a run of {was}): "
                f"{str(e).splitlines()[0]} ... Use a fresh --output-dir, or --resume none.") from e
        if state.get("sharded"):                # written by an FSDP run, on any number of processes
            load_optimizer(self.stage.model, self.optimizer, path, state["sharded"], self.dist)
        elif is_sharded(self.stage.model):      # a DDP / one-process checkpoint, resumed under FSDP
            load_optimizer_by_name(self.stage.model, self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            if "model_ema" not in state:
                raise CheckpointError(f"{path} has no model_ema entry (it was written without "
                                      "--model-ema); resume it without --model-ema")
            self.ema.load_state_dict(state["model_ema"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.epoch_step = state["epoch"], state["epoch_step"]
        self.global_step = self.writer.saved_step = state["global_step"]
        records = state.get("records") or {}
        self.skips.load_state_dict(records.get("skipped", {}))
        if self.epoch_step >= self.s.steps_per_epoch:   # saved at the end of an epoch
            self.epoch, self.epoch_step = self.epoch + 1, 0
            self.skips.new_epoch()
        self.stage.load_state_dict(state["stage"])
        rngs = state["rng_per_rank"]
        restore_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])
        dropped = {}
        if self.dist.is_main and path.resolve().parent == self.out.resolve():
            # the records continue from the checkpoint: what was written after it is cut
            dropped = rewind(self.out, records.get("offsets"), self.global_step)
        log.info("resumed from %s: epoch %d, step %d of the epoch, global step %d%s", path, self.epoch,
                 self.epoch_step, self.global_step,
                 "; dropped what was logged after it: " + ", ".join(f"{n} lines of {k}" for k, n in
                                                                   dropped.items()) if dropped else "")
        return True

    def _recover(self, exc: DataPlaneError) -> None:
        """A data worker died or the decoder pipeline failed: resume from the newest checkpoint in
        this process, or stop cleanly with the command that resumes (under torchrun, where one
        process cannot rewind alone; with no checkpoint yet; when it fails again at the same
        step; after `MAX_RECOVERIES`)."""
        if not self.dist.enabled:               # (a collective: alone only, where it is used)
            self.writer.settle()                # a save in flight is the newest checkpoint
        last = self.newest_checkpoint()
        repeat = self.global_step <= self._failed_at
        self._failed_at = max(self._failed_at, self.global_step)
        self.recoveries += 1
        why = ("under torchrun one process cannot rewind alone" if self.dist.enabled else
               "no checkpoint has been written yet" if last is None else
               f"it failed again at global step {self.global_step}" if repeat else
               f"{MAX_RECOVERIES} recoveries already" if self.recoveries > MAX_RECOVERIES else "")
        if why:
            then = (f"run the same command again with --resume {last}" if last is not None else
                    "run the same command again to start over")
            raise RunStopped(f"{exc}. The run stopped ({why}); {then}.") from None
        self.resume(str(last))                  # cuts what was logged after the checkpoint,
        log.warning("%s; resumed from %s in this process (recovery %d of at most %d)", exc, last,
                    self.recoveries, MAX_RECOVERIES)        # so this line comes after

    # ---------------------------------------------------------------- one optimiser step
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, batches) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Forward/backward over `accum_steps` micro-batches and one (possibly skipped) update."""
        s = self.s
        set_lr_and_wd(self.optimizer, float(self.lr_schedule[self.global_step]),
                      float(self.wd_schedule[self.global_step]))
        loss_sum = torch.zeros((), device=self.device)
        clips = 0
        for i, batch in enumerate(batches):
            with grad_sync(self.model, sync=i == len(batches) - 1):
                with self._autocast():
                    loss, n = self.stage.compute_loss(self.model, batch)
                scaled = loss / len(batches)
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_sum += loss.detach().float()
            clips += n
        loss_mean = loss_sum / len(batches)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.params if p.grad is not None]
        if s.clip_grad:
            gnorm = torch.nn.utils.clip_grad_norm_(self.params, s.clip_grad, foreach=True)
        else:
            gnorm = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else torch.zeros((), device=self.device)
        gnorm = full_tensor(gnorm)             # FSDP: the norm of the sharded gradients, completed
        finite = torch.isfinite(loss_mean)
        if self.scaler:            # the scaler skips overflowing fp16 steps on its own
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            finite = finite & torch.isfinite(gnorm)
            if self.dist.enabled:      # one decision for all: a rank's inf loss may leave finite gradients
                finite = all_reduce_sum((~finite).float(), self.dist) == 0
            if self.skip_on_device:    # the fused step skips when found_inf is 1: no host sync
                self.optimizer.found_inf = (~finite).float()
                self.optimizer.step()
                del self.optimizer.found_inf
            elif finite.item():
                self.optimizer.step()
        if self.ema is not None:       # after every optimiser step, as the official engine
            self.ema.update(self.stage.model)
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_run = torch.where(finite, torch.zeros_like(self.nonfinite_run), self.nonfinite_run + 1)
        self.skipped_total += (~finite).long()
        return loss_mean, gnorm.detach().float(), clips

    # ---------------------------------------------------------------- the loop
    def fit(self) -> dict:
        """Train to the end (or `max_steps`); a data-plane fault resumes from the newest
        checkpoint (`_recover`)."""
        last_record: dict = {}
        try:
            while self.epoch < self.s.epochs:
                try:
                    last_record, stopped = self._epoch(last_record)
                except DataPlaneError as exc:
                    self._recover(exc)
                    continue
                except RuntimeError as exc:         # a worker's death, raised wherever we were
                    fault = getattr(self.make_loader, "data_plane_error", lambda e: None)(exc)
                    if fault is None:
                        failed = collective_failure(exc) if self.dist.enabled else None
                        if failed == "timeout":     # a rank hangs: say which
                            raise self.progress.timeout_error(exc, self.s.dist_timeout) from exc
                        if failed == "peer gone":
                            raise self.progress.peer_gone_error(exc) from exc
                        raise
                    self._recover(fault)
                    continue
                if stopped:
                    break
            self.writer.settle()                    # the last save, written and agreed on
        finally:
            self.writer.close()
        return last_record

    def _next_batches(self, loader) -> list:
        """The micro-batches of one optimiser step; their skipped videos are recorded. A batch is
        read by field (`data.batches`): ``skipped``, and ``video``, None when a video and all its
        replacements failed."""
        batches = [next(loader) for _ in range(self.s.accum_steps)]
        for b in batches:
            self.skips.add(b.skipped)
            if b.video is None:
                raise self.skips.none_readable(self.epoch)
        if not self.dist.enabled:               # alone: no collective needed, merge now
            self.skips.merge(self.epoch, self.global_step)
        return batches

    def _epoch(self, last_record: dict) -> tuple[dict, bool]:
        """The rest of the epoch in progress; returns (last log record, stopped at max_steps)."""
        s = self.s
        total_steps = s.epochs * s.steps_per_epoch
        loader = iter(self.make_loader(self.epoch, self.epoch_step * s.accum_steps))
        bar = None
        if s.progress and self.dist.is_main:
            from tqdm import tqdm
            # disable=None: a bar on a terminal, none in logs and CI
            bar = tqdm(total=s.steps_per_epoch, initial=self.epoch_step, desc=f"epoch {self.epoch}",
                       dynamic_ncols=True, leave=False, disable=None)
        try:
            win_loss = torch.zeros((), device=self.device)
            win_norm = torch.zeros((), device=self.device)
            win_steps, win_clips, win_data, t0 = 0, 0, 0.0, time.perf_counter()
            while self.epoch_step < s.steps_per_epoch:
                td = time.perf_counter()
                self.progress.mark(f"reading the batches of global step {self.global_step + 1}")
                batches = self._next_batches(loader)
                win_data += time.perf_counter() - td
                self.progress.mark(f"global step {self.global_step + 1}: forward, backward, update")
                loss, gnorm, clips = self.train_step(batches)
                win_loss += loss
                win_norm += gnorm
                win_steps += 1
                win_clips += clips
                self.global_step += 1
                self.epoch_step += 1
                if bar:
                    bar.update(1)
                last_step = self.global_step == total_steps or self.global_step == s.max_steps
                if self.global_step % s.log_every == 0 or self.epoch_step == s.steps_per_epoch or last_step:
                    last_record = self._log(win_loss, win_norm, win_steps, win_clips, win_data,
                                            time.perf_counter() - t0, bar)
                    win_loss.zero_()
                    win_norm.zero_()
                    win_steps, win_clips, win_data, t0 = 0, 0, 0.0, time.perf_counter()
                if s.save_every_steps and self.global_step % s.save_every_steps == 0:
                    self.save(numbered=False)
                if s.max_steps and self.global_step >= s.max_steps:
                    self.save(numbered=False)
                    log.info("stopped after --max-steps %d optimiser steps", s.max_steps)
                    return last_record, True
        finally:
            if bar:
                bar.close()
        if self.dist.enabled:
            self.skips.merge(self.epoch, self.global_step)
        extra = self.stage.on_epoch_end(self.epoch, self) or {}
        if extra and self.metrics:
            self.metrics.log({"epoch": self.epoch, "global_step": self.global_step, **extra})
        numbered = (self.epoch + 1) % s.save_every == 0 or self.epoch + 1 == s.epochs
        self.save(numbered=numbered)
        self.epoch, self.epoch_step = self.epoch + 1, 0
        self.skips.new_epoch()
        return last_record, False

    def _log(self, win_loss, win_norm, steps, clips, data_time, wall, bar) -> dict:
        if self.dist.enabled:                   # every rank logs at the same steps
            self.skips.merge(self.epoch, self.global_step)
        stats = torch.stack([win_loss, win_norm, self.skipped_total.float(), self.nonfinite_run.float()])
        if self.dist.enabled:
            stats[:2] = all_reduce_sum(stats[:2].clone(), self.dist) / self.dist.world_size
        loss, norm, skipped, run = (stats / torch.tensor([steps, steps, 1, 1], device=stats.device)).tolist()
        if run >= self.s.max_nonfinite:
            raise NonFiniteLossError(
                f"{int(run)} non-finite losses in a row at step {self.global_step}; the last good "
                f"checkpoint is in {self.out}. Lower the lr, enable --clip-grad, or use bf16/fp32.")
        rec = {"epoch": self.epoch, "step": self.epoch_step, "global_step": self.global_step,
               "loss": loss, "grad_norm": norm, "lr": self.optimizer.param_groups[0]["lr"]
               / self.optimizer.param_groups[0].get("lr_scale", 1.0),
               "skipped_updates": int(skipped), "skipped_videos": len(self.skips.epoch),
               "skipped_videos_run": self.skipped_videos,
               "clips_per_s": clips * self.dist.world_size / max(wall, 1e-9),
               "data_wait_frac": data_time / max(wall, 1e-9),
               "ckpt_wait_s": self.writer.take_waited()}
        rec.update(throughput_record(clips, wall, self.s.flops_per_clip, self.s.peak_flops))
        rec.update(memory_record(self.device))
        if self.dist.is_main:
            if bar:
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{rec['lr']:.2e}", refresh=False)
            if self.metrics:
                self.metrics.log(rec)
            if self.tb:
                self.tb.scalars({f"train/{k}": v for k, v in rec.items() if isinstance(v, float)},
                                self.global_step)
            msg = (f"epoch {self.epoch} step {self.epoch_step}/{self.s.steps_per_epoch} loss {loss:.4f} "
                   f"lr {rec['lr']:.3e} grad_norm {norm:.3f} {rec['clips_per_s']:.1f} clips/s"
                   + describe_interval(rec))
            if skipped:
                msg += f" skipped_updates {int(skipped)}"
            if self.skips.epoch:
                msg += f" skipped_videos {len(self.skips.epoch)} (this epoch)"
            log.info(msg)
        if not math.isfinite(loss):
            log.warning("non-finite loss at step %d: the update was skipped", self.global_step)
        return rec
