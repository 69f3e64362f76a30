"""What a trained classifier sees in a user's videos (`python -m vmae2_fast.predict`; its --help
has the flags): the top-k classes of each video, with names, as a table or as JSON lines.

A prediction is `evaluate` without labels: the same clip settings (`evaluate.view_settings`: the
flag, else the checkpoint's config), the same test views from one decode per video
(`clip_sampling.test_frame_indices` / `test_crop_offsets`, through the PyAV test loader, decoding
in worker processes) and the same fusion (`evaluate.video_log_probs`: the mean of the views'
softmaxes). So ``--views TxS`` gives `evaluate --num-segments T --num-crops S`'s probabilities,
and 1x1 the centred clip and crop. DALI is not used: it needs each video's frame count from an
index, which loose files do not have.

Everything a user can get wrong is refused before any video is decoded: a missing input, a bad
checkpoint (or one without a classification head), a class list that does not match the head.
A video that cannot be read is reported on stderr with the reason and skipped; stdout holds only
the predictions, so ``--json`` output is always one valid JSON object per line.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..config import EvaluateConfig, PredictConfig
from ..data.lists import VideoEntry, detect_kind, read_list
from ..data.loaders import eval_loader, frame_layout
from ..data.media import FrameLayout
from ..data.pixels import normalize_on_device
from ..errors import (BadDataError, CheckpointError, CheckpointMismatchError, ConfigError, DataError,
                      MissingFileError)
from ..logs import setup_logging
from ..models.weights import extract_state_dict, load_classifier_weights, normalize_keys, read_checkpoint
from ..train.distributed import DistInfo
from .build import apply_attention, pick_device
from .evaluate import classifier_for, video_log_probs, view_settings
from .features import VIDEO_EXT

log = logging.getLogger("vmae2_fast")
LIST_EXT = (".txt", ".csv", ".lst", ".list")
# the fields `evaluate` reads its clip settings from, where a predict or onnx_export config has them
_CLIP_FIELDS = ("model", "input_size", "num_frames", "sampling_rate", "short_side_size",
                "sparse_sample", "fname_tmpl", "start_idx", "num_workers")


# ------------------------------------------------------------------------- the trained model
def checkpoint_config(raw: dict) -> dict:
    cfg = raw.get("config")
    return cfg if isinstance(cfg, dict) else {}


def head_rows(raw: dict, path, required: bool = True) -> int:
    """The class count of a checkpoint's classification head; a checkpoint without one is
    refused, or, when not ``required``, gives 0."""
    sd, _ = normalize_keys(extract_state_dict(raw)[0])
    weight = sd.get("head.weight")
    if weight is None or weight.dim() != 2:
        if not required:
            return 0
        raise CheckpointError(f"{path} has no classification head (a pre-trained encoder?): "
                              "fine-tune it first, or use extract_features for clip features")
    return int(weight.shape[0])


def clip_settings(cfg, config: dict, views=(1, 1)) -> SimpleNamespace:
    """`evaluate.view_settings` of ``cfg`` (a predict or onnx_export config) over a checkpoint's
    ``config``, with ``views`` = (T, S), or (None, None) for the dataset's official ones."""
    given = {k: getattr(cfg, k) for k in _CLIP_FIELDS if hasattr(cfg, k)}
    view = view_settings(EvaluateConfig(num_segments=views[0], num_crops=views[1], **given), config)
    if not view.model:
        raise ConfigError(f"{cfg.checkpoint or getattr(cfg, 'onnx', '')} does not record its model; pass --model")
    return view


def load_trained_classifier(path, view: SimpleNamespace, num_classes: int, trust_code: bool):
    """The classifier of ``view`` with the weights of ``path`` (head included), in eval mode."""
    model = classifier_for(view, num_classes)
    load_classifier_weights(model, path, trust_code=trust_code)
    return model.eval()


def read_class_names(path) -> list:
    """Class names from a file: a JSON list, a JSON ``{name: index}`` (or ``{index: name}``) map,
    or text with one name per line (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"class list not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        shape = f"{path}: expected a JSON list of class names, or a name -> index map"
        try:
            data = json.loads(text)
            if isinstance(data, dict):
                pairs = [(int(v), k) if isinstance(v, int) else (int(k), str(v)) for k, v in data.items()]
            elif isinstance(data, list) and all(isinstance(x, str) for x in data):
                return data
            else:
                raise DataError(shape)
        except ValueError as exc:          # not JSON, or keys that are neither names nor indices
            raise DataError(shape if str(exc) == shape else f"{shape} ({exc})") from None
        if sorted(i for i, _ in pairs) != list(range(len(pairs))):
            raise DataError(f"{path}: the indices of the class map must be 0..{len(pairs) - 1}")
        return [name for _, name in sorted(pairs)]
    return [line.strip() for line in text.splitlines() if line.strip()]


def class_names(cfg: PredictConfig, stored, num_classes: int) -> list | None:
    """``--classes`` (checked against the head), else the names the checkpoint stored, else None."""
    if cfg.classes:
        names = read_class_names(cfg.classes)
        if len(names) != num_classes:
            raise DataError(f"{cfg.classes} names {len(names)} classes but the model's head has "
                             f"{num_classes}; pass the class list the model was trained on")
        return names
    return list(stored) if stored and len(stored) == num_classes else None


# ------------------------------------------------------------------------------ the inputs
def _frame_folder(folder: str, layout: FrameLayout) -> bool:
    return os.path.isfile(os.path.join(folder, layout.template.format(layout.start_idx)))


def _scan(folder: str, layout: FrameLayout) -> list:
    """Videos (by extension) and frame folders under ``folder``, in sorted order."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        if _frame_folder(root, layout):
            found.append(VideoEntry(root, start=layout.start_idx))
            dirs.clear()                         # the frames are this video's, not more videos
            continue
        found += [VideoEntry(os.path.join(root, f)) for f in sorted(files)
                  if os.path.splitext(f)[1].lower() in VIDEO_EXT]
    return found


def check_inputs(inputs) -> None:
    missing = [p for p in inputs if not os.path.exists(p)]
    if missing:
        raise MissingFileError(f"input not found: {', '.join(missing[:5])}"
                                + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))


def gather_inputs(inputs, layout: FrameLayout, data_root: str = "", list_kind: str = "auto") -> list:
    """One `VideoEntry` per video: a file as it is, a list file's lines (any official format;
    ``auto`` reads three fields as the raw-frame list ``frame_dir total label``), a folder that
    holds its first frame file as one frame-folder video, any other folder searched."""
    check_inputs(inputs)
    entries = []
    for arg in inputs:
        if os.path.isdir(arg):
            found = [VideoEntry(arg, start=layout.start_idx)] if _frame_folder(arg, layout) else _scan(arg, layout)
            if not found:
                raise MissingFileError(f"no videos ({' '.join(VIDEO_EXT)}) or frame folders "
                                        f"({layout.template.format(layout.start_idx)}, ...) under {arg}")
            entries += found
        elif os.path.splitext(arg)[1].lower() in LIST_EXT:
            kind = detect_kind(arg, labels=True) if list_kind == "auto" else list_kind
            entries += read_list(arg, data_root, kind=kind, start_idx=layout.start_idx)
        else:
            entries.append(VideoEntry(arg))
    for e in entries:
        if e.label is None:
            e.label = -1                         # the loader carries an int per video
    return entries


# ------------------------------------------------------------------------------ the output
class Table:
    """The predictions as a table on stdout: one row per rank, the video named on its first."""

    def __init__(self, entries, names, num_classes: int):
        self.path_w = max([len("video")] + [len(e.path) for e in entries])
        self.name_w = max([len("class")] + [len(n) for n in names or [str(num_classes - 1)]])
        self.header = True

    def lines(self, row: dict) -> list:
        out = []
        if self.header:
            out.append(f"{'video':<{self.path_w}}  {'#':>2}  {'class':<{self.name_w}}  probability")
            self.header = False
        for rank, (label, p) in enumerate(zip(row["labels"], row["probs"]), start=1):
            video = row["path"] if rank == 1 else ""
            out.append(f"{video:<{self.path_w}}  {rank:>2}  {label:<{self.name_w}}  {p:.4f}")
        return out


def prediction(path: str, probs: np.ndarray, names, k: int, views: str, timing: dict, label: int) -> dict:
    top = np.argsort(-probs, kind="stable")[:k]
    row = {"path": path, "labels": [names[i] if names else str(int(i)) for i in top],
           "indices": [int(i) for i in top], "probs": [float(probs[i]) for i in top],
           "views": views, "timing": timing}
    if label >= 0:
        row["label"] = label                     # a list's own label, for the script's scoring
    return row


# ------------------------------------------------------------------------------ the run
def run(cfg: PredictConfig) -> dict:
    """Predict every video of ``cfg.inputs``; prints them (table or JSON lines) and returns
    ``{"predictions": [...], "skipped": [(path, reason)], ...}``."""
    from tqdm import tqdm
    setup_logging(None, True, to_stderr=True)    # stdout holds the predictions only
    check_inputs(cfg.inputs)                     # before a checkpoint of gigabytes is read
    device = pick_device(cfg.device)
    onnx_model = None
    if cfg.onnx:
        from ..integrations.onnx import OnnxModel
        onnx_model = OnnxModel(cfg.onnx, device)
    if cfg.checkpoint:
        raw = read_checkpoint(cfg.checkpoint, trust_code=cfg.trust_checkpoint)
        config, num_classes = checkpoint_config(raw), head_rows(raw, cfg.checkpoint)
        del raw
    else:
        config, num_classes = _onnx_config(onnx_model)
    view = clip_settings(cfg, config, cfg.test_views())
    names = class_names(cfg, config.get("class_names"), num_classes)
    entries = gather_inputs(cfg.inputs, frame_layout(view), cfg.data_root, cfg.list_kind)
    segments, crops = view.test_views
    views = f"{segments}x{crops}"

    bf16 = False
    if onnx_model is not None:
        _check_onnx_clip(onnx_model, view, num_classes)
        model, dtype, device = onnx_model, torch.float32, torch.device("cpu")
        log.info("running %s in ONNX Runtime (%s)", cfg.onnx, onnx_model.provider)
    else:
        bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
        model = load_trained_classifier(cfg.checkpoint, view, num_classes, cfg.trust_checkpoint)
        model = apply_attention(model.to(device), cfg.attention, device, "bf16" if bf16 else "fp32")
        dtype = next(model.parameters()).dtype
    per_batch = max(1, cfg.batch_views // (segments * crops))
    loader = eval_loader(entries, None, view, DistInfo(), device, "pyav", mode="test",
                         batch_size=per_batch, segments=segments, crops=crops)
    k = min(cfg.top_k, num_classes)
    table = None if cfg.json else Table(entries, names, num_classes)
    # this stage reports each unreadable video itself (below), once, with its reason
    dataset_log = logging.getLogger("vmae2_fast.data.pyav.classify")
    level = dataset_log.level
    dataset_log.setLevel(logging.ERROR)
    rows, skipped = [], []
    # disable=None: a bar on a terminal, none in logs (the closing summary says it all there)
    bar = tqdm(total=len(entries), unit="video", file=sys.stderr, dynamic_ncols=True,
               disable=None if cfg.progress and len(entries) > per_batch else True)
    t_start = t_wait = time.perf_counter()
    model_s = 0.0
    try:
        for batch in loader(0):
            waited = time.perf_counter() - t_wait
            for path, reason in batch.skipped:
                log.warning("skipped %s: %s", path, reason)
                skipped.append((path, reason))
            if batch.video is not None:
                t0 = time.perf_counter()
                video = normalize_on_device(batch.video.to(device, non_blocking=True), dtype)
                with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                    probs = video_log_probs(model, video, len(batch.paths), cfg.batch_views).exp()
                probs = probs.float().cpu().numpy()          # waits for the device
                spent = time.perf_counter() - t0
                model_s += spent
                n = len(batch.paths)
                timing = {"decode_wait_s": round(waited / n, 6), "model_s": round(spent / n, 6)}
                for path, p, label in zip(batch.paths, probs, batch.labels.tolist()):
                    row = prediction(path, p, names, k, views, timing, label)
                    rows.append(row)
                    for line in ([json.dumps(row)] if table is None else table.lines(row)):
                        tqdm.write(line, file=sys.stdout)
            bar.update(len(batch.paths) + len(batch.skipped))
            sys.stdout.flush()                   # a script reading the lines gets each batch now
            t_wait = time.perf_counter()
    finally:
        bar.close()
        dataset_log.setLevel(level)
    wall = time.perf_counter() - t_start
    if not rows:
        raise BadDataError(f"none of the {len(entries)} videos could be read (first: {skipped[0][0]}: "
                         f"{skipped[0][1]})")
    log.info("%d video%s predicted (%s views each), %d skipped as unreadable; %.3f s per video "
             "(model %.3f s), %s", len(rows), "s" if len(rows) > 1 else "", views, len(skipped), wall / len(rows),
             model_s / len(rows), f"ONNX Runtime {onnx_model.provider}" if onnx_model else device)
    return {"predictions": rows, "skipped": skipped, "views": views, "wall_s": wall,
            "model_s": model_s}


def _onnx_config(onnx_model) -> tuple[dict, int]:
    """The clip settings and class count of an exported classifier, from its metadata."""
    meta = onnx_model.metadata
    if meta is None:
        raise CheckpointError(f"{onnx_model.path} carries no vmae2_fast metadata (it was not written by "
                         "onnx_export): pass --checkpoint for its clip settings and class names")
    if meta.get("kind") != "classifier":
        raise CheckpointError(f"{onnx_model.path} is a {meta.get('kind')} export; predict needs the "
                         "classifier (onnx_export without --features)")
    return meta["config"], int(onnx_model.output_shape[-1])


def _check_onnx_clip(onnx_model, view, num_classes: int) -> None:
    want = [3, view.num_frames, view.input_size, view.input_size]
    if onnx_model.input_shape[1:] != want or onnx_model.output_shape[-1] != num_classes:
        raise CheckpointMismatchError(f"{onnx_model.path} takes clips {onnx_model.input_shape[1:]} and gives "
                         f"{onnx_model.output_shape[-1]} classes, but the settings give clips {want} "
                         f"and {num_classes} classes; export it from this checkpoint")
