"""Stage 1: self-supervised pre-training with dual masking.

    python -m vmae2_fast.pretrain --model vit_g --data train.csv --data-root /videos
    torchrun --nproc-per-node 8 -m vmae2_fast.pretrain --model vit_b --data train.csv
    python -m vmae2_fast.pretrain --model vit_s --preset cpu_demo      # embedded dataset, CPU

Without --data the embedded synthetic dataset is generated (once) and used.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from . import ops
from .cli import add_config_flags, exit_code, given_flags, setup_logging
from .config import PretrainConfig, replace
from .masking import DualMasking
from .models import build_pretrain_model, count_parameters
from .presets import PRETRAIN_PRESETS, pretrain_preset
from .train.distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from .train.loop import LoopSettings, Trainer, resolve_precision
from .train.optim import build_adamw
from .train.sampler import EpochIndexed, GlobalBatchSampler
from .train.schedule import run_schedules

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

    def compute_loss(self, model, batch):
        video = batch[0].to(self.device, non_blocking=True)
        b = video.shape[0]
        vis, dec = self.masking(b * self.dist.world_size, self.mask_gen)
        denominator = None
        if self.dist.enabled:
            lo = self.dist.rank * b
            vis, dec = vis[lo:lo + b], dec[lo:lo + b]
            # Token-weighted mean over the global batch (see reference.masked_mse).
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
        every = self.cfg.preview_every
        if not every or (epoch + 1) % every or not self.dist.is_main or self.preview_source is None:
            return {}
        from .train.preview import save_reconstruction_preview
        clips, _ = self.preview_source()
        video = clips[:1].to(self.device)
        vis, dec = self.masking(1, torch.Generator(device=self.device).manual_seed(1234))
        was_training = self.model.training
        self.model.eval()
        pred = self.model(video, vis, dec).float()
        self.model.train(was_training)
        path = Path(self.cfg.output_dir) / f"preview-epoch{epoch}.png"
        save_reconstruction_preview(path, video[0].cpu(), vis[0].cpu(), dec[0].cpu(), pred[0].cpu(),
                                    patch_size=self.model.patch_size, tubelet_size=self.model.tubelet_size)
        log.info("reconstruction preview: %s", path)
        return {"preview": str(path)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vmae2_fast.pretrain",
        description="VideoMAE V2 stage-1 pre-training (dual masking). Flags override the preset, "
                    "which defaults to the paper's Table 10 recipe for --model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_flags(p, PretrainConfig, {
        "model": "vit_s | vit_b | vit_l | vit_h | vit_g",
        "data": "pre-training list, lines `path start total` (official format); omit for the embedded "
                "synthetic dataset",
        "data_root": "folder that relative paths in --data are joined to",
        "preset": f"recipe: {' | '.join(PRETRAIN_PRESETS)}",
        "lr": "base lr per 256 videos of total batch (views of repeated augmentation not counted)",
        "batch_size": "videos per process per micro-batch (each gives --num-sample views)",
        "resume": "auto (newest checkpoint in --output-dir) | PATH | none",
        "max_steps": "stop after N optimiser steps (smoke tests)",
        "decoder": "auto (DALI on a GPU, PyAV otherwise) | dali | pyav; DALI needs the list's index "
                   "(python -m vmae2_fast.data.index LIST --data-root DIR)",
        "dali_instances": "independent DALI pipelines per process, fed batches in turn (same "
                          "batches, same order); raise on GPUs with several NVDEC engines",
    })
    return p


def make_config(argv=None) -> PretrainConfig:
    flags = given_flags(build_parser().parse_args(argv))
    model = flags.get("model", PretrainConfig.model)
    preset = flags.get("preset", PretrainConfig.preset)
    cfg = replace(PretrainConfig(), **pretrain_preset(preset, model))
    cfg = replace(cfg, **flags)
    if cfg.clip_grad == 0:
        cfg = replace(cfg, clip_grad=None)
    cfg.validate()
    return cfg


def pick_device(name: str, dist: DistInfo | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was requested but no CUDA device is available")
        if name == "cuda" and dist is not None:
            name = f"cuda:{dist.local_rank}"
    return torch.device(name)


def build_dataset(cfg: PretrainConfig, dist: DistInfo):
    from .data import PretrainVideoDataset, ensure_synthetic_dataset, read_pretrain_list
    data, root = cfg.data, cfg.data_root
    if data is None:
        if not dist.is_main:          # rank 0 generates the embedded dataset once, the others wait
            barrier(dist)
        synth = ensure_synthetic_dataset()
        if dist.is_main:
            barrier(dist)
        data, root = synth.pretrain_list, synth.root
        log.info("no --data given: using the embedded synthetic dataset in %s", root)
    items = read_pretrain_list(data, root)
    from .data.select import apply_index, index_items
    # A list's index (if any, required for DALI) gives frame counts and drops unusable files;
    # a stale one is refused with the command that rebuilds it.
    index = apply_index(items, data, root, required=cfg.decoder == "dali", build=cfg.data is None)
    if index is not None:
        if index.excluded:
            log.warning("%d videos of %s are excluded by its index (unreadable, truncated, ...)",
                        len(index.excluded), data)
        items = index_items(index)
    first = items[0].path
    if not os.path.exists(first):
        raise FileNotFoundError(f"the first video of {data}, {first}, does not exist; is --data-root "
                                f"({root or 'not set'}) right?")
    dataset = PretrainVideoDataset(items, num_frames=cfg.num_frames, sampling_rate=cfg.sampling_rate,
                                   input_size=cfg.input_size, num_sample=cfg.num_sample, seed=cfg.seed)
    dataset.index = index
    return dataset


def run(cfg: PretrainConfig) -> dict:
    device = pick_device(cfg.device)
    dist = init_distributed(device.type)
    device = pick_device(cfg.device, dist)
    setup_logging(cfg.output_dir, dist.is_main)
    try:
        return _run(cfg, device, dist)
    finally:
        cleanup(dist)


def _run(cfg: PretrainConfig, device: torch.device, dist: DistInfo) -> dict:
    from .data import pretrain_collate
    t_start = time.time()
    torch.manual_seed(cfg.seed + dist.rank)
    np.random.seed(cfg.seed + dist.rank)
    precision = resolve_precision(cfg.precision, device)
    ops.use_backend(cfg.kernels)  # fused ops: logs which face runs, once

    # Everything that can fail on bad input is checked before any compute is spent.
    model = build_pretrain_model(
        cfg.model, img_size=cfg.input_size, num_frames=cfg.num_frames, tubelet_size=cfg.tubelet_size,
        decoder_depth=cfg.decoder_depth, drop_path_rate=cfg.drop_path,
        normalize_target=cfg.normalize_target,
        activation_checkpointing=cfg.activation_checkpointing).to(device)
    from .data.select import choose_decoder, pretrain_dali_loader
    decoder = choose_decoder(cfg.decoder, device, log_choice=dist.is_main)
    dataset = build_dataset(replace(cfg, decoder=decoder), dist)
    sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, dist.world_size, dist.rank, cfg.seed)
    dali_loader = (pretrain_dali_loader(dataset.index.videos, cfg, dist, device)
                   if decoder == "dali" else None)
    steps_per_epoch = (dali_loader or sampler).steps_per_epoch // cfg.accum_steps
    if steps_per_epoch == 0:
        raise ValueError(f"{sampler.steps_per_epoch} micro-batches per epoch is fewer than "
                         f"--accum-steps {cfg.accum_steps}")
    lr, lr_schedule, wd_schedule, total_batch = run_schedules(cfg, steps_per_epoch, dist.world_size)
    optimizer = build_adamw(model, lr, cfg.weight_decay, tuple(cfg.betas), cfg.opt_eps)

    wrapped = model
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    if dist.enabled:
        wrapped = DistributedDataParallel(wrapped, device_ids=[device.index] if device.type == "cuda" else None)

    loader_ds = EpochIndexed(dataset)

    def make_loader(epoch, skip):
        if dali_loader is not None:       # (video, n_skipped) batches, same order rules
            return dali_loader(epoch, skip)
        sampler.set_epoch(epoch, skip)
        return torch.utils.data.DataLoader(
            loader_ds, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=pretrain_collate,
            pin_memory=device.type == "cuda", prefetch_factor=4 if cfg.num_workers else None)

    stage = PretrainStage(model, cfg, device, dist,
                          preview_source=lambda: (dataset.set_epoch(0), dataset[0])[1])
    settings = LoopSettings(
        epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, accum_steps=cfg.accum_steps,
        clip_grad=cfg.clip_grad, precision=precision, max_nonfinite=cfg.max_nonfinite,
        log_every=cfg.log_every, save_every=cfg.save_every, save_every_steps=cfg.save_every_steps,
        keep_last=cfg.keep_last, output_dir=cfg.output_dir, progress=cfg.progress,
        tensorboard=cfg.tensorboard, max_steps=cfg.max_steps)
    trainer = Trainer(stage, wrapped, optimizer, make_loader, lr_schedule, wd_schedule, settings, device,
                      dist, cfg.to_dict())
    if dist.is_main:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.output_dir) / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        log.info("model %s: %.3fM parameters, %d tokens (%d visible, %d decoded) on %s, precision %s, "
                 "fused ops: %s", cfg.model, count_parameters(model) / 1e6, model.num_tokens,
                 stage.masking.num_visible, stage.masking.num_decoded, device, precision,
                 ops.active_backend())
        log.info("data: %d videos, %d optimiser steps/epoch, total batch %d videos x %d views, "
                 "lr %.3e (base %.2e per 256 videos)", len(dataset), steps_per_epoch, total_batch,
                 cfg.num_sample, lr, cfg.lr)
    trainer.resume(cfg.resume)
    record = trainer.fit()
    summary = {"final_loss": record.get("loss"), "global_step": trainer.global_step,
               "skipped_videos": trainer.skipped_videos, "wall_s": time.time() - t_start,
               "output_dir": cfg.output_dir}
    if dist.is_main:
        log.info("done: %d steps in %.0f s, last loss %s, checkpoints in %s", trainer.global_step,
                 summary["wall_s"], f"{summary['final_loss']:.4f}" if summary["final_loss"] is not None
                 else "n/a", cfg.output_dir)
    return summary


def main(argv=None) -> int:
    return exit_code(lambda: run(make_config(argv)))


if __name__ == "__main__":
    sys.exit(main())
