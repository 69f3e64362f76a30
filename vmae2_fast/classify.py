"""The classification stages on the shared loop: post-pre-training (stage 2), specific
fine-tuning (stage 3) and distillation. `post_pretrain.py`, `finetune.py` and `distill.py` are
thin front doors to `main` here; they differ only in their config class and presets.

A stage = the official-parity classifier + (mixup/cutmix -> soft-target CE | smoothed CE |
KL to a frozen teacher) + single-view validation after each epoch, keeping checkpoint-best.pth.
Every bad input (lists, class counts, labels, checkpoint sizes, teacher classes) is checked
before the first forward pass.
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
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from .models.weights import checkpoint_class_names, load_classifier_weights
from .cli import add_config_flags, exit_code, given_flags, setup_logging
from .config import replace
from .finetune_config import DistillConfig, FinetuneConfig
from .models import build_classifier, count_parameters
from .presets import classify_preset
from .train.checkpoint import save_checkpoint
from .train.distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from .train.loop import LoopSettings, Trainer, resolve_precision
from .train.mixup import VideoMixup, soft_target_cross_entropy
from .train.optim import build_adamw
from .train.sampler import EpochIndexed, GlobalBatchSampler
from .train.schedule import run_schedules

log = logging.getLogger("vmae2_fast")
BEST = "checkpoint-best.pth"


# ------------------------------------------------------------------------------------ data
def resolve_lists(cfg) -> tuple[str, str, str, list | None]:
    """(train list, val list, data root, class names or None)."""
    from .data import ensure_synthetic_dataset
    root = cfg.data_root
    if cfg.train_list or cfg.val_list:
        if not (cfg.train_list and cfg.val_list):
            raise ValueError("pass both --train-list and --val-list (or --data FOLDER with train.csv "
                             "and val.csv)")
        train, val, folder = cfg.train_list, cfg.val_list, os.path.dirname(cfg.train_list)
    elif cfg.data:
        train, val, folder = os.path.join(cfg.data, "train.csv"), os.path.join(cfg.data, "val.csv"), cfg.data
    else:
        synth = ensure_synthetic_dataset()
        log.info("no --data given: using the embedded synthetic dataset in %s", synth.root)
        return synth.train_list, synth.val_list, synth.root, list(synth.class_names)
    names_file = os.path.join(folder, "classes.txt")
    names = None
    if os.path.isfile(names_file):
        names = [x.strip() for x in open(names_file, encoding="utf-8") if x.strip()]
    return train, val, root, names


def check_lists(train_items, val_items, num_classes: int, names, train_path, val_path) -> int:
    """The class count, checked against the lists; returns it."""
    max_label = max(y for _, y in train_items)
    implied = max_label + 1
    if names is not None and num_classes == 0:
        num_classes = len(names)
    if num_classes == 0:
        num_classes = implied
    for path, items in ((train_path, train_items), (val_path, val_items)):
        for i, (video, y) in enumerate(items):
            if y >= num_classes:
                raise ValueError(f"{path}: label {y} of {video} is outside the {num_classes} classes "
                                 f"(labels must be 0..{num_classes - 1}); fix the list or pass "
                                 f"--num-classes {max(max_label, y) + 1}")
    if implied != num_classes:
        raise ValueError(f"--num-classes is {num_classes} but {train_path} uses labels 0..{max_label} "
                         f"({implied} classes); pass --num-classes {implied}, or use the list that "
                         "goes with this class set")
    if names is not None and len(names) != num_classes:
        raise ValueError(f"classes.txt names {len(names)} classes but the lists have {num_classes}")
    return num_classes


def build_datasets(cfg, train_items, val_items):
    from .data.finetune_dataset import VideoClsDataset
    common = dict(num_frames=cfg.num_frames, sampling_rate=cfg.sampling_rate,
                  input_size=cfg.input_size, short_side_size=cfg.short_side_size,
                  sparse=cfg.sparse_sample, seed=cfg.seed)
    train = VideoClsDataset(train_items, True, num_sample=cfg.num_sample, flip=cfg.flip, aa=cfg.aa,
                            reprob=cfg.reprob, min_crop_scale=cfg.min_crop_scale, **common)
    val = VideoClsDataset(val_items, False, **common)
    return train, val


# ------------------------------------------------------------------------------------ stage
class ClassifyStage:
    def __init__(self, model, cfg, device, dist: DistInfo, val_dataset=None, teacher=None,
                 run_config=None):
        self.model, self.cfg, self.device, self.dist = model, cfg, device, dist
        self.mixup = VideoMixup(model.num_classes, cfg.mixup, cfg.cutmix, cfg.mixup_prob,
                                cfg.mixup_switch_prob, cfg.smoothing, seed=cfg.seed)
        self.val_dataset, self.teacher = val_dataset, teacher
        self.run_config = run_config or {}
        self.best_top1 = -1.0
        self.temperature = getattr(cfg, "distill_temperature", 1.0)

    def compute_loss(self, model, batch):
        video = batch[0].to(self.device, non_blocking=True)
        labels = batch[1].to(self.device, non_blocking=True)
        target = None
        if self.mixup.active:
            video, target = self.mixup(video, labels)
        logits = model(video)
        if self.teacher is not None:
            with torch.no_grad():
                t_logits = self.teacher(video.to(next(self.teacher.parameters()).dtype))
            tau = self.temperature
            loss = F.kl_div(F.log_softmax(logits.float() / tau, -1), F.log_softmax(t_logits.float() / tau, -1),
                            reduction="batchmean", log_target=True) * tau * tau
        elif target is not None:
            loss = soft_target_cross_entropy(logits, target)
        else:
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.cfg.smoothing)
        return loss, video.shape[0]

    def state_dict(self):
        return {"mixup": self.mixup.state_dict(), "best_top1": self.best_top1}

    def load_state_dict(self, state):
        self.mixup.load_state_dict(state["mixup"])
        self.best_top1 = float(state["best_top1"])

    @torch.no_grad()
    def validate(self, autocast) -> dict:
        from .data.finetune_dataset import cls_collate
        ds = self.val_dataset
        idx = list(range(self.dist.rank, len(ds), self.dist.world_size))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(ds, idx), batch_size=max(1, int(1.5 * self.cfg.batch_size)),
            num_workers=self.cfg.num_workers, collate_fn=cls_collate)
        was = self.model.training
        self.model.eval()
        stats = torch.zeros(4, dtype=torch.float64, device=self.device)   # n, top1, top5, loss
        for clips, labels, _ in loader:
            if clips is None:
                continue
            clips, labels = clips.to(self.device), labels.to(self.device)
            with autocast():
                logits = self.model(clips).float()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            stats += torch.stack([torch.tensor(float(len(labels)), device=self.device),
                                  (top[:, 0] == labels).sum().double(),
                                  (top == labels[:, None]).any(1).sum().double(),
                                  F.cross_entropy(logits, labels, reduction="sum").double()])
        self.model.train(was)
        if self.dist.enabled:
            stats = all_reduce_sum(stats, self.dist)
        n, top1, top5, loss = stats.tolist()
        n = max(n, 1.0)
        return {"val_top1": 100 * top1 / n, "val_top5": 100 * top5 / n, "val_loss": loss / n,
                "val_videos": int(n)}

    def on_epoch_end(self, epoch, trainer):
        if self.val_dataset is None or not self.cfg.validate:
            return {}
        res = self.validate(trainer._autocast)
        improved = res["val_top1"] > self.best_top1
        if improved:
            self.best_top1 = res["val_top1"]
            if self.dist.is_main:
                save_checkpoint(Path(self.cfg.output_dir) / BEST, {
                    "model": self.model.state_dict(), "epoch": epoch, "val_top1": res["val_top1"],
                    "val_top5": res["val_top5"], "config": self.run_config})
        if self.dist.is_main:
            log.info("epoch %d validation (single view): top-1 %.2f %%, top-5 %.2f %%, loss %.4f, "
                     "%d videos%s", epoch, res["val_top1"], res["val_top5"], res["val_loss"],
                     res["val_videos"], " (best so far, saved)" if improved else "")
        return {**res, "best_top1": self.best_top1}


# ------------------------------------------------------------------------------------ config
HELP = {
    "model": "vit_s | vit_b | vit_l | vit_h | vit_g | vit_micro",
    "init": "checkpoint to start from: stage-1 (decoder dropped), stage-2, official or ours",
    "head_map": "JSON list mapping each class to a row of the checkpoint's head (K710 -> K400/600)",
    "data": "folder with train.csv and val.csv (`path label`); omit for the embedded dataset",
    "num_classes": "0: from the lists (max label + 1); otherwise must match them",
    "lr": "base lr per 256 videos of total batch (repeated-augmentation views not counted)",
    "resume": "auto (newest checkpoint in --output-dir) | PATH | none",
    "teacher": "the frozen teacher's checkpoint (a classifier over the same classes)",
}


def build_parser(stage: str, cls) -> argparse.ArgumentParser:
    from .presets import CLASSIFY_PRESETS
    p = argparse.ArgumentParser(prog=f"python -m vmae2_fast.{stage}",
                                description=sys.modules[f"vmae2_fast.{stage}"].__doc__
                                if f"vmae2_fast.{stage}" in sys.modules else None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(p, cls, {**HELP, "preset": " | ".join(CLASSIFY_PRESETS[stage])})
    return p


def make_config(stage: str, cls, argv=None):
    import dataclasses
    flags = given_flags(build_parser(stage, cls).parse_args(argv))
    model = flags.get("model", cls.model)
    names = {f.name for f in dataclasses.fields(cls)}
    preset = {k: v for k, v in classify_preset(stage, flags.get("preset", cls.preset), model).items()
              if k in names}
    cfg = replace(replace(cls(), **preset), **flags)
    if cfg.clip_grad == 0:
        cfg = replace(cfg, clip_grad=None)
    cfg.validate_fields()
    return cfg


# ------------------------------------------------------------------------------------ run
def pick_device(name: str, dist: DistInfo | None = None) -> torch.device:
    from .pretrain import pick_device as pick
    return pick(name, dist)


def build_model(cfg, num_classes: int, model_name: str | None = None, drop_path=None):
    return build_classifier(
        model_name or cfg.model, num_classes, img_size=cfg.input_size, num_frames=cfg.num_frames,
        tubelet_size=cfg.tubelet_size, drop_rate=cfg.drop, attn_drop_rate=cfg.attn_drop,
        drop_path_rate=cfg.drop_path if drop_path is None else drop_path,
        head_drop_rate=cfg.head_drop, init_scale=cfg.init_scale,
        activation_checkpointing=cfg.activation_checkpointing)


def load_teacher(cfg, num_classes: int, class_names, device, precision: str):
    if not cfg.teacher:
        raise ValueError("distillation needs --teacher CHECKPOINT (a classifier over the same classes)")
    t_names = checkpoint_class_names(cfg.teacher)
    if t_names is not None and class_names is not None and list(t_names) != list(class_names):
        raise ValueError(f"the teacher {cfg.teacher} was trained on another class set "
                         f"({len(t_names)} classes: {', '.join(t_names[:4])}, ...) than the data "
                         f"({len(class_names)}: {', '.join(class_names[:4])}, ...); distil on the "
                         "teacher's classes")
    teacher = build_model(cfg, num_classes, cfg.teacher_model, drop_path=0.0)
    report = load_classifier_weights(teacher, cfg.teacher)
    if report.head != "loaded":
        raise ValueError(f"the teacher {cfg.teacher} has no {num_classes}-class head (its head "
                         f"status: {report.head}); the teacher must classify the same "
                         f"{num_classes} classes as the student")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    teacher = teacher.to(device=device, dtype=dtype).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def run(cfg, stage: str) -> dict:
    device = pick_device(cfg.device)
    dist = init_distributed(device.type)
    device = pick_device(cfg.device, dist)
    setup_logging(cfg.output_dir, dist.is_main)
    try:
        return _run(cfg, stage, device, dist)
    finally:
        cleanup(dist)


def _run(cfg, stage: str, device, dist: DistInfo) -> dict:
    from .data import read_cls_list
    from .data.finetune_dataset import cls_collate
    t0 = time.time()
    torch.manual_seed(cfg.seed + dist.rank)
    np.random.seed(cfg.seed + dist.rank)
    precision = resolve_precision(cfg.precision, device)

    # --- every check that can fail runs before any compute
    if not dist.is_main:
        barrier(dist)
    train_path, val_path, root, names = resolve_lists(cfg)
    if dist.is_main:
        barrier(dist)
    train_items, val_items = read_cls_list(train_path, root), read_cls_list(val_path, root)
    num_classes = check_lists(train_items, val_items, cfg.num_classes, names, train_path, val_path)
    for path, _ in train_items[:1]:
        if not os.path.exists(path):
            raise FileNotFoundError(f"the first video of {train_path}, {path}, does not exist; is "
                                    f"--data-root ({root or 'not set'}) right?")
    model = build_model(cfg, num_classes)
    if cfg.init:
        load_classifier_weights(model, cfg.init, cfg.head_map)
    elif cfg.head_map:
        raise ValueError("--head-map needs --init (the checkpoint whose head it selects from)")
    run_config = {**cfg.to_dict(), "num_classes": num_classes, "class_names": names, "stage": stage}
    teacher = load_teacher(cfg, num_classes, names, device, precision) if stage == "distill" else None
    model = model.to(device)
    train_ds, val_ds = build_datasets(cfg, train_items, val_items)
    sampler = GlobalBatchSampler(len(train_ds), cfg.batch_size, dist.world_size, dist.rank, cfg.seed)
    steps_per_epoch = sampler.steps_per_epoch // cfg.accum_steps
    if steps_per_epoch == 0:
        raise ValueError(f"{sampler.steps_per_epoch} micro-batches per epoch is fewer than "
                         f"--accum-steps {cfg.accum_steps}")
    lr, lr_schedule, wd_schedule, total_batch = run_schedules(cfg, steps_per_epoch, dist.world_size)
    optimizer = build_adamw(model, lr, cfg.weight_decay, tuple(cfg.betas), cfg.opt_eps,
                            layer_decay=cfg.layer_decay, num_layers=model.get_num_layers())
    wrapped = torch.compile(model) if cfg.compile else model
    if dist.enabled:
        wrapped = DistributedDataParallel(wrapped, device_ids=[device.index] if device.type == "cuda" else None)
    loader_ds = EpochIndexed(train_ds)

    def make_loader(epoch, skip):
        sampler.set_epoch(epoch, skip)
        return torch.utils.data.DataLoader(
            loader_ds, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=cls_collate,
            pin_memory=device.type == "cuda", prefetch_factor=4 if cfg.num_workers else None)

    cls_stage = ClassifyStage(model, cfg, device, dist, val_ds if cfg.validate else None, teacher,
                              run_config)
    settings = LoopSettings(
        epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, accum_steps=cfg.accum_steps,
        clip_grad=cfg.clip_grad, precision=precision, max_nonfinite=cfg.max_nonfinite,
        log_every=cfg.log_every, save_every=cfg.save_every, keep_last=cfg.keep_last,
        output_dir=cfg.output_dir, progress=cfg.progress, tensorboard=cfg.tensorboard,
        max_steps=cfg.max_steps)
    trainer = Trainer(cls_stage, wrapped, optimizer, make_loader, lr_schedule, wd_schedule, settings,
                      device, dist, run_config)
    if dist.is_main:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.output_dir) / "config.json").write_text(json.dumps(run_config, indent=2))
        log.info("%s: model %s, %.3fM parameters, %d classes, %d train / %d val videos, %d steps/epoch, "
                 "total batch %d videos x %d views, lr %.3e (base %.2e per 256 videos), layer decay "
                 "%.2f, precision %s", stage, cfg.model, count_parameters(model) / 1e6, num_classes,
                 len(train_ds), len(val_ds), steps_per_epoch, total_batch, cfg.num_sample, lr, cfg.lr,
                 cfg.layer_decay, precision)
    trainer.resume(cfg.resume)
    record = trainer.fit()
    summary = {"final_loss": record.get("loss"), "best_top1": cls_stage.best_top1,
               "global_step": trainer.global_step, "wall_s": time.time() - t0,
               "output_dir": cfg.output_dir, "num_classes": num_classes}
    if dist.is_main:
        log.info("done: %d steps in %.0f s, best single-view top-1 %.2f %%, checkpoints in %s",
                 trainer.global_step, summary["wall_s"], cls_stage.best_top1, cfg.output_dir)
    return summary


def main(stage: str, cls=FinetuneConfig, argv=None) -> int:
    return exit_code(lambda: run(make_config(stage, cls, argv), stage))


__all__ = ["ClassifyStage", "make_config", "run", "main", "DistillConfig", "FinetuneConfig"]
