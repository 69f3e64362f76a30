"""The classification stages: post-pre-training (stage 2), specific fine-tuning (stage 3) and
distillation, on the shared set-up and loop.

A stage = the official-parity classifier + (mixup/cutmix -> soft-target CE | smoothed CE | KL to a
frozen teacher) + single-view validation after each epoch, keeping checkpoint-best.pth. Every bad
input (lists, class counts, labels, checkpoint sizes, teacher classes) is checked before the first
forward pass.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import FinetuneConfig
from ..data.label_maps import kinetics_head_map
from ..data.loaders import choose_decoder, eval_loader, finetune_loader, frame_layout, load_list
from ..data.shard_store import ShardSet, is_shard_location, join
from ..data.pixels import normalize_on_device
from ..errors import CheckpointMismatchError, ConfigError, DataError
from ..models import build_classifier, count_parameters
from ..models.zoo import model_options
from ..models.weights import checkpoint_class_names, load_classifier_weights
from ..train.checkpoint import save_checkpoint
from ..train.ema import ModelEma
from ..train.distributed import DistInfo, all_reduce_sum
from ..train.loop import resolve_precision
from ..train.mixup import VideoMixup, soft_target_cross_entropy
from .build import (apply_attention, build_trainer, embedded_dataset, model_checkpointing,
                    resolve_checkpointing, seed_everything, session)
from .evaluate import video_log_probs

log = logging.getLogger("vmae2_fast")
BEST = "checkpoint-best.pth"
BEST_EMA = "checkpoint-best-ema.pth"     # the EMA weights (under "model") at the EMA's best epoch


# ------------------------------------------------------------------------------------ data
def resolve_lists(cfg, dist: DistInfo) -> tuple[str, str, str, list | None]:
    """(train list, val list, data root, class names or None)."""
    root = cfg.data_root
    if cfg.train_list or cfg.val_list:
        if not (cfg.train_list and cfg.val_list):
            raise ConfigError("pass both --train-list and --val-list (or --data FOLDER with train.csv "
                             "and val.csv)")
        train, val, folder = cfg.train_list, cfg.val_list, os.path.dirname(cfg.train_list)
    elif is_shard_location(cfg.data):
        # shard sets: DATA/train and DATA/val; the class names travel in the manifest
        return join(cfg.data, "train"), join(cfg.data, "val"), root, None
    elif cfg.data:
        train, val, folder = os.path.join(cfg.data, "train.csv"), os.path.join(cfg.data, "val.csv"), cfg.data
    else:
        synth = embedded_dataset(dist)
        return synth.train_list, synth.val_list, synth.root, list(synth.class_names)
    names_file = os.path.join(folder, "classes.txt")
    names = None
    if os.path.isfile(names_file):
        names = [x.strip() for x in open(names_file, encoding="utf-8") if x.strip()]
    return train, val, root, names


def check_lists(train_items, val_items, num_classes: int, names, train_path, val_path) -> int:
    """The class count, checked against the lists; returns it."""
    max_label = max(e.label for e in train_items)
    implied = max_label + 1
    if names is not None and num_classes == 0:
        num_classes = len(names)
    if num_classes == 0:
        num_classes = implied
    for path, items in ((train_path, train_items), (val_path, val_items)):
        for e in items:
            if e.label >= num_classes:
                raise DataError(f"{path}: label {e.label} of {e.path} is outside the {num_classes} "
                                 f"classes (labels must be 0..{num_classes - 1}); fix the list or pass "
                                 f"--num-classes {max(max_label, e.label) + 1}")
    if implied != num_classes:
        raise DataError(f"--num-classes is {num_classes} but {train_path} uses labels 0..{max_label} "
                         f"({implied} classes); pass --num-classes {implied}, or use the list that "
                         "goes with this class set")
    if names is not None and len(names) != num_classes:
        raise DataError(f"classes.txt names {len(names)} classes but the lists have {num_classes}")
    return num_classes


def kinetics_rows(cfg, num_classes: int, names, train_path: str):
    """For ``load_classifier_weights``: when a K710 checkpoint starts a Kinetics-400/600/700 run
    (``--dataset``), the file that selects the head's rows (found or generated, see
    `data.label_maps`); otherwise None (a fresh head, or the head as it is)."""
    from ..config.datasets import DATASETS
    subset = DATASETS[cfg.dataset].k710_subset if cfg.dataset else None

    def choose(rows: int, ckpt_cfg: dict):
        if rows != 710 or num_classes == 710 or subset is None:
            return None
        if subset != num_classes:
            raise DataError(f"--dataset {cfg.dataset} has {subset} classes, the run {num_classes}")
        folders = [cfg.data, os.path.dirname(train_path), ckpt_cfg.get("data"),
                   os.path.dirname(os.path.abspath(cfg.init))]
        return kinetics_head_map(subset, folders, ckpt_cfg.get("class_names"), names, cfg.output_dir)
    return choose


# ------------------------------------------------------------------------------------ stage
class ClassifyStage:
    def __init__(self, model, cfg, device, dist: DistInfo, val_loader=None, teacher=None,
                 run_config=None):
        self.model, self.cfg, self.device, self.dist = model, cfg, device, dist
        self.mixup = VideoMixup(model.num_classes, cfg.mixup, cfg.cutmix, cfg.mixup_prob,
                                cfg.mixup_switch_prob, cfg.smoothing, seed=cfg.seed)
        self.val_loader, self.teacher = val_loader, teacher
        self.run_config = run_config or {}
        self.best_top1 = self.best_ema_top1 = -1.0
        self.temperature = getattr(cfg, "distill_temperature", 1.0)
        # the loaders deliver pixels; the model's input is made here, in its parameters' dtype
        self.input_dtype = next(model.parameters()).dtype

    def compute_loss(self, model, batch):
        # erasing writes N(0, 1) noise into the normalised clip, then mixup mixes the clips, as in
        # the official order
        batch = batch.to(self.device, non_blocking=True)
        video = normalize_on_device(batch.video, self.input_dtype, erase=batch.erasures)
        labels = batch.labels
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
        return {"mixup": self.mixup.state_dict(), "best_top1": self.best_top1,
                "best_ema_top1": self.best_ema_top1}

    def load_state_dict(self, state):
        self.mixup.load_state_dict(state["mixup"])
        self.best_top1 = float(state["best_top1"])
        self.best_ema_top1 = float(state.get("best_ema_top1", -1.0))

    @torch.no_grad()
    def validate(self, autocast, model=None) -> dict:
        """Single-view top-1 / top-5 / loss of ``model`` (default: the trained one) over the
        validation list (every video once)."""
        model = self.model if model is None else model
        was = model.training
        model.eval()
        stats = torch.zeros(4, dtype=torch.float64, device=self.device)   # n, top1, top5, loss
        chunk = max(1, int(1.5 * self.cfg.batch_size))
        for batch in self.val_loader(0):
            if batch.video is None:      # no readable video in this batch
                continue
            batch = batch.to(self.device, non_blocking=True)
            labels = batch.labels
            video = normalize_on_device(batch.video, self.input_dtype)
            with autocast():
                log_probs = video_log_probs(model, video, len(labels), chunk)
            top = log_probs.topk(min(5, log_probs.shape[1]), dim=1).indices
            stats += torch.stack([torch.tensor(float(len(labels)), device=self.device),
                                  (top[:, 0] == labels).sum().double(),
                                  (top == labels[:, None]).any(1).sum().double(),
                                  F.nll_loss(log_probs, labels, reduction="sum").double()])
        model.train(was)
        if self.dist.enabled:
            stats = all_reduce_sum(stats, self.dist)
        n, top1, top5, loss = stats.tolist()
        n = max(n, 1.0)
        return {"val_top1": 100 * top1 / n, "val_top5": 100 * top5 / n, "val_loss": loss / n,
                "val_videos": int(n)}

    def on_epoch_end(self, epoch, trainer):
        if self.val_loader is None or not self.cfg.validate:
            return {}
        res = self._validate_and_keep(epoch, trainer, ema=False)
        if trainer.ema is not None:      # the EMA weights, validated alongside
            res.update(self._validate_and_keep(epoch, trainer, ema=True), best_ema_top1=self.best_ema_top1)
        return {**res, "best_top1": self.best_top1}

    def _validate_and_keep(self, epoch, trainer, ema: bool) -> dict:
        """Validate the trained weights (or the EMA's, keys prefixed ``ema_``) and keep their best
        epoch as checkpoint-best.pth (checkpoint-best-ema.pth: the EMA weights under ``model``)."""
        model = trainer.ema.module if ema else self.model
        prefix, best = ("ema_", "best_ema_top1") if ema else ("", "best_top1")
        res = self.validate(trainer._autocast, model)
        improved = res["val_top1"] > getattr(self, best)
        if improved:
            setattr(self, best, res["val_top1"])
            if self.dist.is_main:
                save_checkpoint(Path(self.cfg.output_dir) / (BEST_EMA if ema else BEST), {
                    "model": model.state_dict(), "epoch": epoch, "val_top1": res["val_top1"],
                    "val_top5": res["val_top5"], "config": self.run_config, **({"ema": True} if ema else {})})
        if self.dist.is_main:
            log.info("epoch %d validation%s (single view): top-1 %.2f %%, top-5 %.2f %%, loss %.4f, "
                     "%d videos%s", epoch, " of the EMA weights" if ema else "", res["val_top1"],
                     res["val_top5"], res["val_loss"], res["val_videos"],
                     " (best so far, saved)" if improved else "")
        return {prefix + k: v for k, v in res.items()}


# ------------------------------------------------------------------------------------ models
def build_model(cfg, num_classes: int, model_name: str | None = None, drop_path=None, device=None):
    """The classifier of `cfg`; with `device`, its attention backend is set for that device and
    the run's precision (`--attention`)."""
    model = build_classifier(
        model_name or cfg.model, num_classes, img_size=cfg.input_size, num_frames=cfg.num_frames,
        tubelet_size=cfg.tubelet_size, drop_rate=cfg.drop, attn_drop_rate=cfg.attn_drop,
        drop_path_rate=cfg.drop_path if drop_path is None else drop_path,
        head_drop_rate=cfg.head_drop, init_scale=cfg.init_scale, use_mean_pooling=cfg.use_mean_pooling,
        activation_checkpointing=model_checkpointing(cfg), **model_options(cfg))
    return model if device is None else apply_attention(model, cfg.attention, device, cfg.precision)


def load_teacher(cfg, num_classes: int, class_names, device, precision: str):
    if not cfg.teacher:
        raise ConfigError("distillation needs --teacher CHECKPOINT (a classifier over the same classes)")
    t_names = checkpoint_class_names(cfg.teacher, trust_code=cfg.trust_checkpoint)
    if t_names is not None and class_names is not None and list(t_names) != list(class_names):
        raise CheckpointMismatchError(f"the teacher {cfg.teacher} was trained on another class set "
                         f"({len(t_names)} classes: {', '.join(t_names[:4])}, ...) than the data "
                         f"({len(class_names)}: {', '.join(class_names[:4])}, ...); distil on the "
                         "teacher's classes")
    teacher = build_model(cfg, num_classes, cfg.teacher_model, drop_path=0.0, device=device)
    report = load_classifier_weights(teacher, cfg.teacher, trust_code=cfg.trust_checkpoint)
    if report.head != "loaded":
        raise CheckpointMismatchError(f"the teacher {cfg.teacher} has no {num_classes}-class head (its head "
                         f"status: {report.head}); the teacher must classify the same "
                         f"{num_classes} classes as the student")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    teacher = teacher.to(device=device, dtype=dtype).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


# ------------------------------------------------------------------------------------ run
def run(cfg: FinetuneConfig) -> dict:
    """Train the classification stage of `cfg` (its class says which: `post_pretrain`,
    `finetune` or `distill`)."""
    stage = cfg.STAGE
    with session(cfg.device, cfg.output_dir, exclusive=True,
                 dist_timeout=cfg.dist_timeout) as (device, dist):
        t0 = time.time()
        seed_everything(cfg.seed, dist.rank, cfg.threads)
        precision = resolve_precision(cfg.precision, device)

        # --- every check that can fail runs before any compute
        decoder = choose_decoder(cfg.decoder, device, log_choice=dist.is_main)
        train_path, val_path, root, names = resolve_lists(cfg, dist)
        build = decoder == "dali" and not (cfg.data or cfg.train_list)   # index the embedded lists
        layout = frame_layout(cfg)
        train_items, train_index = load_list(train_path, root, decoder=decoder, labels=True, build=build,
                                             layout=layout, storage_options=cfg.storage_options)
        val_items, val_index = load_list(val_path, root, decoder=decoder, labels=True, build=build,
                                         layout=layout, storage_options=cfg.storage_options)
        if names is None and isinstance(train_index, ShardSet):
            names = train_index.classes
        num_classes = check_lists(train_items, val_items, cfg.num_classes, names, train_path, val_path)
        cfg = resolve_checkpointing(cfg, device, dist, num_classes)
        model = build_model(cfg, num_classes, device=device)
        if cfg.init:
            load_classifier_weights(model, cfg.init, cfg.head_map or kinetics_rows(cfg, num_classes, names,
                                                                                   train_path),
                                    trust_code=cfg.trust_checkpoint)
        elif cfg.head_map:
            raise ConfigError("--head-map needs --init (the checkpoint whose head it selects from)")
        run_config = {**cfg.to_dict(), "num_classes": num_classes, "class_names": names, "stage": stage}
        teacher = load_teacher(cfg, num_classes, names, device, precision) if stage == "distill" else None
        model = model.to(device)
        loader = finetune_loader(train_items, train_index, cfg, dist, device, decoder)
        val_loader = (eval_loader(val_items, val_index, cfg, dist, device, decoder, mode="val",
                                  batch_size=max(1, int(1.5 * cfg.batch_size))) if cfg.validate else None)
        cls_stage = ClassifyStage(model, cfg, device, dist, val_loader, teacher, run_config)
        ema = ModelEma(model, cfg.model_ema_decay) if cfg.model_ema else None
        trainer, info = build_trainer(cfg, cls_stage, model, loader, device, dist, run_config,
                                      layer_decay=cfg.layer_decay, ema=ema)
        if dist.is_main:
            log.info("%s: model %s, %.3fM parameters, %d classes, %d train / %d val videos, %d steps/epoch, "
                     "total batch %d videos x %d views, lr %.3e (base %.2e per 256 videos), layer decay "
                     "%.2f, precision %s", stage, cfg.model, count_parameters(model) / 1e6, num_classes,
                     len(train_items), len(val_items), info["steps_per_epoch"], info["total_batch"],
                     cfg.num_sample, info["lr"], cfg.lr, cfg.layer_decay, precision)
        trainer.resume(cfg.resume, trust_code=cfg.trust_checkpoint)
        record = trainer.fit()
        summary = {"final_loss": record.get("loss"), "best_top1": cls_stage.best_top1,
                   "best_ema_top1": cls_stage.best_ema_top1 if ema is not None else None,
                   "global_step": trainer.global_step, "wall_s": time.time() - t0,
                   "output_dir": cfg.output_dir, "num_classes": num_classes}
        if dist.is_main:
            log.info("done: %d steps in %.0f s, best single-view top-1 %.2f %%, checkpoints in %s",
                     trainer.global_step, summary["wall_s"], cls_stage.best_top1, cfg.output_dir)
        return summary
