"""Multi-view testing: S temporal clips x C spatial crops per video, each video decoded ONCE,
softmax per view then the mean over views (the official 'prob' fusion); top-1, top-5 and mean
class accuracy, and a per-video predictions file. Any S and C work, 1 x 1 included (the official
code divides by zero there). Kinetics: 5 x 3; SSv2: 2 x 3 with --sparse-sample.

    python -m vmae2_fast.evaluate --checkpoint runs/ft/checkpoint-best.pth --model vit_b \
        --data /data/k400 --data-root /data/videos --num-segments 5 --num-crops 3

Views (official `final_test`): the video is read at stride --sampling-rate (padded to at least
--num-frames), the short side resized to --short-side-size; clip s starts at
int(s * (T - num_frames) / (S - 1)) (S = 1: the centred clip), crop c at int(c * (L - size) /
(C - 1)) along the long side (C = 1: centred). --sparse-sample: one frame per segment, at offset
(s + 0.5) / S inside it. Under torchrun the videos are split over the processes.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .models.weights import CheckpointMismatchError, load_classifier_weights, read_checkpoint
from .cli import exit_code, setup_logging
from .data.clip_sampling import sparse_frame_indices
from .data.finetune_dataset import normalize, resize_short_side
from .data.video_io import VideoDecodeError, count_frames, decode_frames
from .train.distributed import all_gather_objects, cleanup, init_distributed

log = logging.getLogger("vmae2_fast")


def view_positions(length: int, window: int, n: int) -> list:
    """Start offsets of ``n`` windows of ``window`` spread over ``length`` (n = 1: centred)."""
    if n == 1:
        return [max(length - window, 0) // 2]
    return [int(i * max(length - window, 0) / (n - 1)) for i in range(n)]


def video_views(path: str, num_frames: int, rate: int, size: int, short_side: int, segments: int,
                crops: int, sparse: bool = False) -> torch.Tensor:
    """All ``segments * crops`` views of one video, ``(S*C, 3, T, size, size)``, one decode."""
    n = count_frames(path)
    if sparse:
        idx = np.concatenate([sparse_frame_indices(n, num_frames, None, False, (s + 0.5) / segments)
                              for s in range(segments)])
        uniq, inv = np.unique(idx, return_inverse=True)
        buf = torch.from_numpy(decode_frames(path, uniq)).permute(0, 3, 1, 2).float()
        buf = resize_short_side(buf, short_side)[torch.from_numpy(inv)]
        clips = [buf[s * num_frames:(s + 1) * num_frames] for s in range(segments)]
    else:
        idx = np.arange(0, n, rate)
        if len(idx) < num_frames:
            idx = np.concatenate([idx, np.full(num_frames - len(idx), idx[-1])])
        buf = resize_short_side(torch.from_numpy(decode_frames(path, idx)).permute(0, 3, 1, 2).float(),
                                short_side)
        clips = [buf[s:s + num_frames] for s in view_positions(len(buf), num_frames, segments)]
    views = []
    for clip in clips:
        h, w = clip.shape[-2:]
        for c in view_positions(max(h, w), size, crops):
            y0, x0 = (c, (w - size) // 2) if h > w else ((h - size) // 2, c)
            y0, x0 = max(y0, 0), max(x0, 0)
            crop = clip[:, :, y0:y0 + size, x0:x0 + size]
            if crop.shape[-2:] != (size, size):
                crop = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear",
                                                       align_corners=False)
            views.append(normalize(crop))
    return torch.stack(views)


def metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    order = np.argsort(-probs, axis=1)
    top1 = order[:, 0] == labels
    top5 = (order[:, :5] == labels[:, None]).any(1)
    per_class = [top1[labels == c].mean() for c in np.unique(labels)]
    return {"top1": 100 * top1.mean(), "top5": 100 * top5.mean(),
            "mean_class_accuracy": 100 * float(np.mean(per_class)), "videos": int(len(labels))}


def build_parser():
    p = argparse.ArgumentParser(prog="python -m vmae2_fast.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", default=None, help="default: the checkpoint's config")
    p.add_argument("--data", default=None, help="folder with val.csv, or a list file `path label`; "
                   "default: the embedded dataset's val.csv")
    p.add_argument("--data-root", default="")
    p.add_argument("--num-segments", type=int, default=5)
    p.add_argument("--num-crops", type=int, default=3)
    for name in ("input-size", "num-frames", "sampling-rate", "short-side-size", "num-classes"):
        p.add_argument("--" + name, type=int, default=None, help="default: the checkpoint's config")
    p.add_argument("--sparse-sample", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--batch-views", type=int, default=32, help="views per forward pass")
    p.add_argument("--output-dir", default="runs/eval")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    return p


def run(argv=None) -> dict:
    from .classify import pick_device
    from .data import ensure_synthetic_dataset, read_cls_list
    from .models import build_classifier
    a = build_parser().parse_args(argv)
    if a.num_segments < 1 or a.num_crops < 1:
        raise ValueError("--num-segments and --num-crops must be at least 1")
    raw = read_checkpoint(a.checkpoint)
    cfg = raw.get("config", {}) if isinstance(raw, dict) else {}
    get = lambda k, d: getattr(a, k) if getattr(a, k) is not None else cfg.get(k, d)   # noqa: E731
    model_name = a.model or cfg.get("model")
    if not model_name:
        raise ValueError(f"{a.checkpoint} does not record its model; pass --model")
    if a.data is None:
        synth = ensure_synthetic_dataset()
        list_file, root = synth.val_list, synth.root
    else:
        list_file = str(Path(a.data) / "val.csv") if Path(a.data).is_dir() else a.data
        root = a.data_root
    items = read_cls_list(list_file, root)
    num_classes = get("num_classes", 0) or max(y for _, y in items) + 1
    bad = [(p, y) for p, y in items if y >= num_classes]
    if bad:
        raise ValueError(f"{list_file}: label {bad[0][1]} of {bad[0][0]} is outside the model's "
                         f"{num_classes} classes")
    device = pick_device(a.device)
    dist = init_distributed(device.type)
    device = pick_device(a.device, dist)
    setup_logging(a.output_dir, dist.is_main)
    try:
        model = build_classifier(model_name, num_classes, img_size=get("input_size", 224),
                                 num_frames=get("num_frames", 16), tubelet_size=cfg.get("tubelet_size", 2))
        report = load_classifier_weights(model, a.checkpoint)
        if report.head != "loaded":
            raise CheckpointMismatchError(f"{a.checkpoint} has no {num_classes}-class head; pass the "
                                          "right --num-classes or a fine-tuned checkpoint")
        model = model.to(device).eval()
        bf16 = a.precision == "bf16" or (a.precision == "auto" and device.type == "cuda")
        size, T = model.patch_embed.img_size, model.patch_embed.num_frames
        rate, short = get("sampling_rate", 4), get("short_side_size", size)
        sparse = bool(get("sparse_sample", False))
        t0, rows = time.time(), []
        for i in range(dist.rank, len(items), dist.world_size):
            path, label = items[i]
            try:
                views = video_views(path, T, rate, size, short, a.num_segments, a.num_crops, sparse)
            except VideoDecodeError as exc:
                log.warning("skipping unreadable video %s (%s)", path, exc)
                continue
            probs = []
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                for chunk in views.split(a.batch_views):
                    probs.append(model(chunk.to(device)).float().softmax(-1).cpu())
            p = torch.cat(probs).mean(0).numpy()
            rows.append({"video": path, "label": int(label), "pred": int(p.argmax()),
                         "top5": [int(k) for k in np.argsort(-p)[:5]], "probs": p.tolist()})
        rows = [r for part in all_gather_objects(rows, dist) for r in part]
        if not rows:
            raise ValueError("no video could be decoded")
        res = metrics(np.array([r["probs"] for r in rows]), np.array([r["label"] for r in rows]))
        res.update(views=f"{a.num_segments}x{a.num_crops}", wall_s=time.time() - t0)
        if dist.is_main:
            out = Path(a.output_dir)
            with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
                for r in sorted(rows, key=lambda r: r["video"]):
                    f.write(json.dumps(r) + "\n")
            (out / "metrics.json").write_text(json.dumps(res, indent=2))
            log.info("%d videos, %s views: top-1 %.2f %%, top-5 %.2f %%, mean class accuracy %.2f %% "
                     "(predictions in %s)", res["videos"], res["views"], res["top1"], res["top5"],
                     res["mean_class_accuracy"], out / "predictions.jsonl")
        return res
    finally:
        cleanup(dist)


def main(argv=None) -> int:
    return exit_code(run, argv)


if __name__ == "__main__":
    sys.exit(main())
