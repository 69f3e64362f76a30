"""A trained classifier, or its encoder as a feature extractor, written to ONNX and checked
(`python -m vmae2_fast.onnx_export`; the graph, its input and the exporter's settings:
`integrations.onnx`).

After writing, the file is checked twice: ``onnx.checker`` (a full check, types and shapes), then
ONNX Runtime against PyTorch on the same inputs: a random batch of 3 clips (a batch size the export
example did not have, so the dynamic batch is exercised) and a real clip, decoded from a video
exactly as predict decodes its single centred view. The largest difference of each is printed;
past ``--tolerance`` times the largest output (at least 1) the command fails (the file is kept,
for inspection). fp32 differences grow with the depth and the size of the outputs: ViT-S at
16 x 224 with logits up to 51 differs by ~5e-5 (1e-6 of the outputs), vit_micro by ~1e-7.
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch

from ..config import OnnxExportConfig
from ..data.loaders import frame_layout
from ..data.media import VideoDecodeError
from ..data.pixels import normalize_on_device
from ..errors import DataError, RunStopped
from ..integrations.onnx import PREPROCESSING, FeatureExtractor, OnnxModel, export_onnx, import_extra
from ..logs import setup_logging
from ..models.weights import read_checkpoint
from .predict import checkpoint_config, clip_settings, head_rows, load_trained_classifier

log = logging.getLogger("vmae2_fast")


def exported_config(view, config: dict, num_classes: int) -> dict:
    """What predict needs to rebuild the clip settings (`evaluate.view_settings` reads it like a
    checkpoint's config) and to name the classes."""
    return {"model": view.model, "input_size": view.input_size, "num_frames": view.num_frames,
            "sampling_rate": view.sampling_rate, "short_side_size": view.short_side_size,
            "sparse_sample": view.sparse_sample, "tubelet_size": view.tubelet_size,
            "use_mean_pooling": view.use_mean_pooling, "fname_tmpl": view.fname_tmpl,
            "start_idx": view.start_idx, "dataset": config.get("dataset"), "num_classes": num_classes,
            "class_names": config.get("class_names"), **view.options}


def decoded_clip(video: str, view) -> torch.Tensor:
    """The normalised single centred view ``(1, 3, T, S, S)`` of ``video`` (predict's 1x1)."""
    from ..data.pyav.classify import VideoTestDataset
    dataset = VideoTestDataset([(video, 0)], view.num_frames, view.sampling_rate, view.input_size,
                               view.short_side_size, 1, 1, view.sparse_sample, frame_layout(view))
    try:
        return normalize_on_device(dataset.views(video))
    except VideoDecodeError as exc:
        raise DataError(f"cannot decode the check video {video}: {exc}") from None


def synthetic_video(folder: str, view) -> str:
    """A clip of the embedded dataset's kind, encoded to VP9 in ``folder``: a real decode for the
    check when the user names no video."""
    from ..data.synthetic import synthetic_video_frames, write_video
    size = max(16, view.short_side_size + view.short_side_size % 2)
    frames = synthetic_video_frames(0, "val", 0, 0, max(16, view.num_frames * view.sampling_rate), size)
    path = str(Path(folder) / "check.webm")
    write_video(path, frames)
    return path


def run(cfg: OnnxExportConfig) -> dict:
    """Export ``cfg.checkpoint`` to ``cfg.out`` and check it; returns the differences."""
    setup_logging(None, True)
    for name in ("onnx", "onnxscript", "onnxruntime"):          # before the checkpoint is read
        import_extra(name, "the ONNX export")
    raw = read_checkpoint(cfg.checkpoint, trust_code=cfg.trust_checkpoint)
    config = checkpoint_config(raw)
    # a feature extractor needs no head: a pre-trained encoder exports too
    num_classes = head_rows(raw, cfg.checkpoint, required=not cfg.features)
    del raw
    view = clip_settings(cfg, config)
    model = load_trained_classifier(cfg.checkpoint, view, num_classes, cfg.trust_checkpoint)
    kind, output = ("features", "features") if cfg.features else ("classifier", "logits")
    module = FeatureExtractor(model) if cfg.features else model
    shape = (3, view.num_frames, view.input_size, view.input_size)
    metadata = {"kind": kind, "output": output, "config": exported_config(view, config, num_classes),
                "preprocessing": PREPROCESSING, "opset": cfg.opset, "torch": torch.__version__,
                "checkpoint": str(cfg.checkpoint)}
    t0 = time.time()
    path = export_onnx(module, torch.randn(2, *shape), cfg.out, output_name=output,
                       metadata=metadata, opset=cfg.opset)
    log.info("wrote %s (%s of %s, opset %d, input video float32 (batch, %s), output %s) in %.1f s; "
             "onnx.checker: passed", path, kind, view.model, cfg.opset, ", ".join(map(str, shape)),
             output, time.time() - t0)

    session = OnnxModel(path, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        video = cfg.check_video or synthetic_video(tmp, view)
        clips = {"random clips (batch 3)": torch.randn(3, *shape),
                 f"a decoded clip of {video}" if cfg.check_video else "a decoded synthetic VP9 clip":
                 decoded_clip(video, view)}
    diffs, scale = {}, 0.0
    for what, x in clips.items():
        with torch.no_grad():
            ref = module(x).float()
        got = session(x)
        if got.shape != ref.shape:
            raise RuntimeError(f"ONNX Runtime gives shape {tuple(got.shape)} for {what}, PyTorch "
                             f"{tuple(ref.shape)}")
        diffs[what] = float((got - ref).abs().max())
        scale = max(scale, float(ref.abs().max()))
    log.info("ONNX Runtime (%s) vs PyTorch, largest |difference| of the %s: %s (outputs up to %.3g)",
             session.provider, output, "; ".join(f"{w}: {d:.2e}" for w, d in diffs.items()), scale)
    worst = max(diffs.values())
    if worst > cfg.tolerance * max(1.0, scale):
        # not the user's mistake, nor a bug of this code: the exporter or the runtime computes
        # another function; a clean stop with the numbers, and the file kept
        raise RunStopped(f"{path}: ONNX Runtime differs from PyTorch by {worst:.2e} (outputs up to "
                         f"{scale:.3g}), more than --tolerance {cfg.tolerance:g} of max(1, largest "
                         "output); the file is kept for inspection, do not deploy it")
    return {"out": str(path), "kind": kind, "opset": cfg.opset, "max_abs_diff": diffs,
            "output_max_abs": scale, "provider": session.provider}

