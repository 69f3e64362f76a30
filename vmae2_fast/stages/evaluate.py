"""Multi-view testing: S temporal clips x C spatial crops per video, each video decoded ONCE, softmax
per view then the mean over views (the official 'prob' fusion); top-1, top-5 and mean class
accuracy, and a per-video predictions file. Any S and C work, 1 x 1 included (the official code
divides by zero there). The views follow `data.clip_sampling` (test_frame_indices,
test_crop_offsets) on both decoders; under torchrun the videos are split over the processes.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..config import EvaluateConfig
from ..config.datasets import DATASETS
from ..data.loaders import choose_decoder, eval_loader, frame_layout, load_list
from ..data.shard_store import is_shard_location, parse_storage_options, shard_set_in
from ..data.pixels import normalize_on_device
from ..errors import BadDataError, ConfigError, DataError, DataPlaneError, RunStopped
from ..models import build_classifier
from ..models.zoo import model_options
from ..models.weights import CheckpointMismatchError, load_classifier_weights, read_checkpoint
from ..train.distributed import all_gather_objects
from .build import apply_attention, embedded_dataset, session

log = logging.getLogger("vmae2_fast")


def video_log_probs(model, views: torch.Tensor, n_videos: int, chunk: int) -> torch.Tensor:
    """log(mean over each video's views of softmax(logits)), (n_videos, classes), float32.

    ``views`` holds the videos' views consecutively (V = len(views) / n_videos each); the model
    sees at most ``chunk`` views at a time. With one view this is log_softmax of the logits."""
    logits = torch.cat([model(c).float() for c in views.split(chunk)])
    per_view = logits.log_softmax(-1).view(n_videos, -1, logits.shape[-1])
    return torch.logsumexp(per_view, dim=1) - math.log(per_view.shape[1])


def metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    order = np.argsort(-probs, axis=1)
    top1 = order[:, 0] == labels
    top5 = (order[:, :5] == labels[:, None]).any(1)
    per_class = [top1[labels == c].mean() for c in np.unique(labels)]
    return {"top1": 100 * top1.mean(), "top5": 100 * top5.mean(),
            "mean_class_accuracy": 100 * float(np.mean(per_class)), "videos": int(len(labels))}


def view_settings(cfg: EvaluateConfig, ckpt: dict) -> SimpleNamespace:
    """Clip settings: the flag where given, else the checkpoint's training config, else the default."""
    def get(name, default):
        value = getattr(cfg, name)
        return value if value is not None else ckpt.get(name, default)
    size = get("input_size", 224)
    dataset = DATASETS.get(ckpt.get("dataset") or "")
    official = dataset.test_views if dataset else (5, 3)
    test_views = (cfg.num_segments or official[0], cfg.num_crops or official[1])
    return SimpleNamespace(
        test_views=test_views,
        model=cfg.model or ckpt.get("model"), input_size=size, num_frames=get("num_frames", 16),
        sampling_rate=get("sampling_rate", 4), short_side_size=get("short_side_size", size),
        sparse_sample=bool(get("sparse_sample", False)), num_classes=get("num_classes", 0),
        tubelet_size=ckpt.get("tubelet_size", 2), seed=cfg.seed, num_workers=cfg.num_workers,
        dali_instances=cfg.dali_instances, decoder=cfg.decoder, options=model_options(ckpt),
        fname_tmpl=get("fname_tmpl", None), start_idx=get("start_idx", None),
        use_mean_pooling=ckpt.get("use_mean_pooling", True))


def classifier_for(view: SimpleNamespace, num_classes: int):
    """The classifier the clip settings of `view_settings` describe (weights not loaded)."""
    return build_classifier(view.model, num_classes, img_size=view.input_size,
                            num_frames=view.num_frames, tubelet_size=view.tubelet_size,
                            use_mean_pooling=view.use_mean_pooling, **view.options)


def run(cfg: EvaluateConfig) -> dict:
    """Evaluate ``cfg.checkpoint`` on the list; writes metrics.json and predictions.jsonl."""
    raw = read_checkpoint(cfg.checkpoint, trust_code=cfg.trust_checkpoint)
    view = view_settings(cfg, raw.get("config") if isinstance(raw.get("config"), dict) else {})
    if not view.model:
        raise ConfigError(f"{cfg.checkpoint} does not record its model; pass --model")
    with session(cfg.device, cfg.output_dir) as (device, dist):
        if cfg.data is None:
            synth = embedded_dataset(dist)
            list_file, root = synth.val_list, synth.root
        elif is_shard_location(cfg.data):                # a set, or a folder with val/
            list_file = shard_set_in(cfg.data, "val", parse_storage_options(cfg.storage_options))
            root = cfg.data_root
        else:
            list_file = str(Path(cfg.data) / "val.csv") if Path(cfg.data).is_dir() else cfg.data
            root = cfg.data_root
        decoder = choose_decoder(cfg.decoder, device, log_choice=dist.is_main)
        entries, index = load_list(list_file, root, decoder=decoder, labels=True, layout=frame_layout(view),
                                   build=decoder == "dali" and cfg.data is None,
                                   storage_options=cfg.storage_options)
        num_classes = view.num_classes or max(e.label for e in entries) + 1
        bad = [e for e in entries if e.label >= num_classes]
        if bad:
            raise DataError(f"{list_file}: label {bad[0].label} of {bad[0].path} is outside the model's "
                             f"{num_classes} classes")
        model = classifier_for(view, num_classes)
        report = load_classifier_weights(model, cfg.checkpoint, trust_code=cfg.trust_checkpoint)
        if report.head != "loaded":
            raise CheckpointMismatchError(f"{cfg.checkpoint} has no {num_classes}-class head; pass the "
                                          "right --num-classes or a fine-tuned checkpoint")
        bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
        model = apply_attention(model.to(device).eval(), cfg.attention, device, "bf16" if bf16 else "fp32")
        segments, crops = view.test_views
        views = segments * crops
        loader = eval_loader(entries, index, view, dist, device, decoder, mode="test",
                             batch_size=max(1, cfg.batch_views // views), segments=segments, crops=crops)
        t0, rows = time.time(), []
        try:
            for batch in loader(0):
                if batch.video is None:
                    continue
                video = normalize_on_device(batch.video.to(device, non_blocking=True),
                                            next(model.parameters()).dtype)
                with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                    probs = video_log_probs(model, video, len(batch.labels), cfg.batch_views).exp().cpu()
                for p, label, path in zip(probs.numpy(), batch.labels.tolist(), batch.paths):
                    rows.append({"video": path, "label": int(label), "pred": int(p.argmax()),
                                 "top5": [int(k) for k in np.argsort(-p)[:5]], "probs": p.tolist()})
        except DataPlaneError as exc:          # a worker died: nothing to resume, run it again
            raise RunStopped(f"{exc}; evaluation stopped, run the same command again") from None
        rows = [r for part in all_gather_objects(rows, dist) for r in part]
        if not rows:
            raise BadDataError("no video could be decoded")
        res = metrics(np.array([r["probs"] for r in rows]), np.array([r["label"] for r in rows]))
        res.update(views=f"{segments}x{crops}", wall_s=time.time() - t0)
        if dist.is_main:
            out = Path(cfg.output_dir)
            with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
                for r in sorted(rows, key=lambda r: r["video"]):
                    f.write(json.dumps(r) + "\n")
            (out / "metrics.json").write_text(json.dumps(res, indent=2))
            log.info("%d videos, %s views: top-1 %.2f %%, top-5 %.2f %%, mean class accuracy %.2f %% "
                     "(predictions in %s)", res["videos"], res["views"], res["top1"], res["top5"],
                     res["mean_class_accuracy"], out / "predictions.jsonl")
        return res
