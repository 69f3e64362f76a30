"""Stage 1: self-supervised pre-training with dual masking.

The stage draws the masks on the device (index tensors, no host sync), runs the autoencoder and
the masked MSE, and renders a reconstruction preview every `preview_every` epochs; everything
else is the shared set-up (`build.py`) and loop (`train/loop.py`).
"""
from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import torch

from .. import ops
from ..config import PretrainConfig
from ..data.loaders import choose_decoder, frame_layout, load_list, pretrain_loader
from ..data.shard_loader import head_entries
from ..data.shard_store import ShardSet
from ..data.pixels import normalize_on_device
from ..masking import DualMasking
from ..models import build_pretrain_model, count_parameters
from ..models.zoo import model_options
from ..train.distributed import DistInfo, all_reduce_sum
from ..train.parallelize import is_sharded
from .build import (apply_attention, build_trainer, embedded_dataset, model_checkpointing,
                    resolve_checkpointing, seed_everything, session)

log = logging.getLogger("vmae2_fast")


class PretrainStage:
    """Masks on the device, the autoencoder forward, the masked MSE, the preview."""

    def __init__(self, model, cfg: PretrainConfig, device, dist: DistInfo, preview_source=None):
        self.model, self.cfg, self.device, self.dist = model, cfg, device, dist
        self.masking = DualMasking(model.grid, cfg.mask_ratio, cfg.decoder_mask_ratio, device=device)
        # One generator, seeded identically on every rank, draws the masks of the GLOBAL batch;
        # each rank takes its slice, so a run's masks do not depend on the number of processes.
        self.mask_gen = torch.Generator(device=device).manual_seed(cfg.seed)
        self.preview_source = preview_source
        # the loaders deliver pixels; the model's input is made here, in its parameters' dtype
        self.input_dtype = next(model.parameters()).dtype

    def compute_loss(self, model, batch):
        video = normalize_on_device(batch.video.to(self.device, non_blocking=True), self.input_dtype)
        b = video.shape[0]
        vis, dec = self.masking(b * self.dist.world_size, self.mask_gen)
        denominator = None
        if self.dist.enabled:
            lo = self.dist.rank * b
            vis, dec = vis[lo:lo + b], dec[lo:lo + b]
            # Token-weighted mean over the global batch (see ops.masked_loss.reference).
            count = ops.loss_token_count(vis, dec, self.model.num_tokens).float()
            denominator = all_reduce_sum(count, self.dist) / self.dist.world_size
        pred = model(video, vis, dec)
        return self.model.loss(pred, video, vis, dec, denominator), b

    def state_dict(self):
        return {"mask_gen": self.mask_gen.get_state()}

    def load_state_dict(self, state):
        self.mask_gen.set_state(state["mask_gen"])

    @torch.no_grad()
    def on_epoch_end(self, epoch, trainer):
        # every `preview_every` epochs, and after the last one (so a run shorter than the period
        # still leaves the picture it promises)
        every = self.cfg.preview_every
        # under FSDP the forward is a collective: every rank runs it, rank 0 draws
        if not every or not (self.dist.is_main or is_sharded(self.model)) or self.preview_source is None:
            return {}
        if (epoch + 1) % every and epoch + 1 != self.cfg.epochs:
            return {}
        from .preview import save_reconstruction_preview
        clips = self.preview_source()
        if clips is None:
            log.warning("no reconstruction preview for epoch %d: %s", epoch, self.preview_source.why_none)
            return {}
        video = normalize_on_device(clips[:1].to(self.device), self.input_dtype)
        vis, dec = self.masking(1, torch.Generator(device=self.device).manual_seed(1234))
        was_training = self.model.training
        self.model.eval()
        pred = self.model(video, vis, dec).float()
        self.model.train(was_training)
        if not self.dist.is_main:
            return {}
        path = Path(self.cfg.output_dir) / f"preview-epoch{epoch}.png"
        save_reconstruction_preview(path, video[0].cpu(), vis[0].cpu(), dec[0].cpu(), pred[0].cpu(),
                                    patch_size=self.model.patch_size, tubelet_size=self.model.tubelet_size)
        log.info("reconstruction preview: %s", path)
        return {"preview": str(path)}


class PreviewClip:
    """The clip the preview shows: decoded on the CPU (whatever the training decoder) from the
    first readable video among the list's first `limit` lines, the same video every epoch. The
    list may begin with bad files that training skipped; they are passed over here too, and when
    none of those lines is readable the call returns None (`why_none` says why) instead of
    failing a run that trained to the end."""

    def __init__(self, entries, cfg: PretrainConfig, limit: int = 32):
        """``entries``: the list's entries, or a function of ``limit`` that gives them (a shard
        set's first records, fetched at the first preview)."""
        self.entries, self.cfg, self.limit = entries, cfg, limit
        self.dataset = None
        self.found: int | None = None
        self.why_none = ""

    def _dataset(self):
        from ..data.pyav.pretrain import PretrainVideoDataset
        cfg = self.cfg
        entries = self.entries(self.limit) if callable(self.entries) else self.entries[:self.limit]
        # max_retries 0: an unreadable line gives None here instead of a random replacement, so
        # the search below decides which video is shown, in list order
        return PretrainVideoDataset(entries, num_frames=cfg.num_frames, sampling_rate=cfg.sampling_rate,
                                    input_size=cfg.input_size, seed=cfg.seed, max_retries=0,
                                    layout=frame_layout(cfg))

    def __call__(self) -> torch.Tensor | None:
        if self.dataset is None:
            self.dataset = self._dataset()
        n = len(self.dataset)
        order = range(n) if self.found is None else [self.found, *range(n)]
        for i in order:
            clips, _ = self.dataset[i]
            if clips is not None:
                self.found = i
                return clips
        self.why_none = f"none of the first {n} videos of the list could be read (see skipped.jsonl)"
        return None


def build_model(cfg: PretrainConfig, device: torch.device | None = None):
    """The stage-1 model of `cfg`; with `device`, its attention backend is set for that device
    and the run's precision (`--attention`)."""
    model = build_pretrain_model(
        cfg.model, img_size=cfg.input_size, num_frames=cfg.num_frames, tubelet_size=cfg.tubelet_size,
        decoder_depth=cfg.decoder_depth, drop_path_rate=cfg.drop_path,
        normalize_target=cfg.normalize_target, activation_checkpointing=model_checkpointing(cfg),
        **model_options(cfg))
    return model if device is None else apply_attention(model, cfg.attention, device, cfg.precision)


def run(cfg: PretrainConfig) -> dict:
    """Train stage 1 as `cfg` says; returns a summary (final loss, steps, skipped videos, ...)."""
    with session(cfg.device, cfg.output_dir, exclusive=True,
                 dist_timeout=cfg.dist_timeout) as (device, dist):
        t_start = time.time()
        seed_everything(cfg.seed, dist.rank, cfg.threads)
        ops.use_backend(cfg.kernels)  # fused ops: logs which backend runs, once
        cfg = resolve_checkpointing(cfg, device, dist)

        # Everything that can fail on bad input is checked before any compute is spent.
        model = build_model(cfg, device).to(device)
        decoder = choose_decoder(cfg.decoder, device, log_choice=dist.is_main)
        list_file, root = cfg.data, cfg.data_root
        if list_file is None:
            synth = embedded_dataset(dist)
            list_file, root = synth.pretrain_list, synth.root
        entries, index = load_list(list_file, root, decoder=decoder, labels=False, layout=frame_layout(cfg),
                                   build=cfg.data is None, storage_options=cfg.storage_options)
        # cfg.decoder stays as requested: "auto" lets DALI hand the files it cannot decode to PyAV
        loader = pretrain_loader(entries, index, cfg, dist, device, decoder)

        preview = (PreviewClip(entries, cfg) if not isinstance(index, ShardSet) else
                   PreviewClip(functools.partial(head_entries, index), cfg))
        stage = PretrainStage(model, cfg, device, dist, preview)
        trainer, info = build_trainer(cfg, stage, model, loader, device, dist, cfg.to_dict())
        if dist.is_main:
            log.info("model %s: %.3fM parameters, %d tokens (%d visible, %d decoded) on %s, precision %s, "
                     "fused ops: %s", cfg.model, count_parameters(model) / 1e6, model.num_tokens,
                     stage.masking.num_visible, stage.masking.num_decoded, device, info["precision"],
                     ops.active_backend())
            log.info("data: %d videos, %d optimiser steps/epoch, total batch %d videos x %d views, "
                     "lr %.3e (base %.2e per 256 videos)", len(entries), info["steps_per_epoch"],
                     info["total_batch"], cfg.num_sample, info["lr"], cfg.lr)
        trainer.resume(cfg.resume, trust_code=cfg.trust_checkpoint)
        record = trainer.fit()
        summary = {"final_loss": record.get("loss"), "global_step": trainer.global_step,
                   "skipped_videos": trainer.skipped_videos, "wall_s": time.time() - t_start,
                   "output_dir": cfg.output_dir}
        if dist.is_main:
            loss = summary["final_loss"]
            log.info("done: %d steps in %.0f s, last loss %s, checkpoints in %s", trainer.global_step,
                     summary["wall_s"], f"{loss:.4f}" if loss is not None else "n/a", cfg.output_dir)
        return summary
