"""Checkpoint files: the one reader (safe: no pickled code runs), and the importer that loads any
VideoMAE V2 layout into our classifier with a plain-words report.

Reading (`read_checkpoint`): every file loads with ``torch.load(weights_only=True)``. The released
official files pickle an ``argparse.Namespace`` (their run arguments), and the official DeepSpeed
fine-tuning files (fp16, ZeRO stage 0) pickle DeepSpeed's loss-scaler object inside the optimizer
state; these are allowed, the loss scalers as data-only stand-ins (`DeepSpeedLossScaler`: the
unpickler only sets their attributes, nothing of DeepSpeed is imported or run). Anything else
that would unpickle code is refused with a message naming it; only
``trust_code=True`` (the CLIs' ``--trust-checkpoint``) loads such a file, for files the user trusts.
Empty, garbage, truncated and zip-but-not-torch files each get their own message.

Importing (`load_classifier_weights`), accepted layouts (all the released ones, plus ours):
  * a dict holding the weights under ``model`` (pre-training, our checkpoints), ``module``
    (DeepSpeed: a file, or a DeepSpeed tag folder holding ``mp_rank_00_model_states.pt``) or
    ``state_dict``, or a bare state dict;
  * key prefixes ``_orig_mod.`` (torch.compile, anywhere in the name), ``module.`` (DDP),
    ``backbone.`` and ``encoder.`` (stage-1 encoder), stripped;
  * stage-1 checkpoints: the decoder (``decoder.*``, ``encoder_to_decoder``, ``mask_token``) is
    dropped; the encoder's final ``norm`` is unused under mean pooling (official behaviour:
    ``fc_norm`` starts at 1/0).

Position tables: our models hold the fixed sine-cosine table as a buffer rebuilt for the model's
own frames and size, so a checkpoint from another clip length or resolution needs nothing. A
stored table that equals the sinusoid of its grid is dropped; a learned one loads into a model
built with ``learnable_pos_emb`` (resampled if its grid differs) and is refused otherwise. ``interpolate_pos_table`` resamples such a
table over (t, h, w) for tools that need it (the official 8-slot temporal path is broken).
"""
from __future__ import annotations

import argparse
import json
import logging
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import CheckpointError, CheckpointMismatchError
from .vit import sinusoid_table

log = logging.getLogger("vmae2_fast")

_DECODER = ("decoder.", "encoder_to_decoder.", "mask_token")
_PREFIXES = ("module.", "backbone.", "encoder.")


class DeepSpeedLossScaler:
    """Stands in for DeepSpeed's fp16 loss scalers when a DeepSpeed checkpoint is read: unpickling
    creates this plain object and sets the saved attributes (``cur_scale``, ``cur_iter``, ...)."""

    def __repr__(self) -> str:
        return f"DeepSpeedLossScaler({vars(self)})"


# What the released checkpoints pickle that cannot run code when unpickled: the official runs'
# arguments, and the loss scaler DeepSpeed's FP16_Optimizer.state_dict() stores as an object
# (dynamic, the official `loss_scale 0`, or static). (name, stand-in) pairs are matched by name.
SAFE_GLOBALS = [argparse.Namespace,
                (DeepSpeedLossScaler, "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"),
                (DeepSpeedLossScaler, "deepspeed.runtime.fp16.loss_scaler.LossScaler")]


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    """The plain-words reason a file that is not a loadable torch checkpoint failed."""
    size = path.stat().st_size
    head = path.read_bytes()[:4] if size else b""
    if size == 0:
        why = "is empty (0 bytes); it was probably cut off while being written or copied"
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if not any(n.endswith("data.pkl") for n in names):
            why = (f"is a zip archive but not a PyTorch checkpoint (it holds {', '.join(names[:3])}"
                   f"{' ...' if len(names) > 3 else ''})")
        else:
            why = f"is a damaged PyTorch checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    elif head[:2] == b"PK" or head[:1] == b"\x80":    # a zip or pickle stream that stops short
        why = f"is truncated or corrupt ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    else:
        why = "is not a PyTorch checkpoint (neither torch.save's zip format nor a pickle)"
    return CheckpointError(f"checkpoint {path} {why}. If it is a training checkpoint, delete it to "
                           "resume from the previous one, or pass an earlier checkpoint explicitly.")


def read_checkpoint(path, *, trust_code: bool = False) -> dict:
    """Load a checkpoint file (or a DeepSpeed tag folder) as a dict, without running pickled code.

    ``trust_code=True`` unpickles arbitrary objects (only for files you trust); otherwise a file
    that needs it is refused with a message naming what it would import."""
    path = Path(path)
    if path.is_dir():
        inner = sorted(path.glob("mp_rank_*_model_states.pt"))
        if not inner:
            raise CheckpointError(f"{path} is a folder but holds no DeepSpeed "
                                  "mp_rank_00_model_states.pt; pass the checkpoint file itself")
        path = inner[0]
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_globals(path)
        if not unsafe:
            raise _unreadable(path, exc) from exc
        if not trust_code:
            raise CheckpointError(
                f"{path} holds pickled Python objects ({', '.join(unsafe[:5])}) that could run code "
                "when loaded, so it is refused. If you trust where this file comes from, pass "
                "--trust-checkpoint (API: trust_code=True).") from exc
        warnings.warn(f"{path}: unpickling {', '.join(unsafe[:5])} because the file is trusted "
                      "(--trust-checkpoint); this can run code from the file", stacklevel=2)
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # zip reader errors, EOFError, ... all mean a damaged file
        raise _unreadable(path, exc) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict of weights")
    return obj


def _unsafe_globals(path: Path) -> list:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: the caller reports the file as unreadable
        return []
    allowed = {c[1] if isinstance(c, tuple) else f"{c.__module__}.{c.__qualname__}" for c in SAFE_GLOBALS}
    return [n for n in names if n not in allowed]


@dataclass
class LoadReport:
    path: str
    layout: str
    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)        # model keys not in the checkpoint
    unexpected: list = field(default_factory=list)     # checkpoint keys the model does not use
    dropped_decoder: int = 0
    head: str = "loaded"                               # loaded | remapped | fresh | none
    config: dict = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors from {self.path} ({self.layout})"]
        if self.dropped_decoder:
            parts.append(f"dropped {self.dropped_decoder} decoder tensors of the pre-training model")
        if self.head != "loaded":
            parts.append({"remapped": "classification head rows selected through the index map",
                          "fresh": "classification head freshly initialised (not in the checkpoint "
                                   "or another class count)",
                          "none": "no classification head"}[self.head])
        if self.missing:
            parts.append("freshly initialised (not in the checkpoint): " + _short(self.missing))
        if self.unexpected:
            parts.append("ignored (not used by this model): " + _short(self.unexpected))
        return "; ".join(parts)


def _short(names, n=8):
    names = sorted(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def extract_state_dict(obj) -> tuple[dict, str]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"the checkpoint holds a {type(obj).__name__}, not a dict of weights")
    for key in ("model", "module", "state_dict"):
        if isinstance(obj.get(key), dict):
            return obj[key], f"weights under '{key}'"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, "a bare state dict"
    raise CheckpointError(f"no weights found: the checkpoint's top-level keys are {_short(obj.keys())}; "
                     "expected 'model', 'module', 'state_dict' or a bare state dict")


def normalize_keys(sd: dict) -> tuple[dict, int]:
    """Strip wrapper prefixes; drop the decoder. Returns (state dict, number of decoder tensors)."""
    out, dropped = {}, 0
    for name, value in sd.items():
        name = name.replace("_orig_mod.", "")
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if name.startswith(p):
                    name, changed = name[len(p):], True
        if name.startswith(_DECODER):
            dropped += 1
            continue
        out[name] = value
    return out, dropped


def encoder_shape(sd: dict) -> Optional[tuple]:
    """``(width, depth, patch, tubelet)`` of the encoder weights in ``sd``, or None."""
    w = sd.get("patch_embed.proj.weight")
    if w is None:
        return None
    depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    return int(w.shape[0]), depth, int(w.shape[-1]), int(w.shape[2])


def describe_encoder(sd: dict) -> str:
    shape = encoder_shape(sd)
    if shape is None:
        return "an unknown model (no patch_embed.proj.weight)"
    width, depth, patch, tubelet = shape
    return f"width {width}, {depth} blocks, patch {patch}, tubelet {tubelet}" + _guess(width, depth, patch)


def _guess(width, depth, patch) -> str:
    from .zoo import MODEL_SPECS
    for name, s in MODEL_SPECS.items():
        if (s.embed_dim, s.depth, s.patch_size) == (width, depth, patch):
            return f" (--model {name})"
    return ""


def interpolate_pos_table(table: torch.Tensor, old_grid, new_grid) -> torch.Tensor:
    """Resample a ``(1, t*h*w, C)`` table to another ``(t, h, w)`` grid: trilinear in time and
    space jointly (bicubic is not defined in 3-D; the official code does h/w bicubic per slot)."""
    t, h, w = old_grid
    if table.shape[1] != t * h * w:
        raise ValueError(f"table has {table.shape[1]} positions, grid {old_grid} needs {t * h * w}")
    if tuple(old_grid) == tuple(new_grid):
        return table
    c = table.shape[-1]
    x = table.reshape(1, t, h, w, c).permute(0, 4, 1, 2, 3).float()
    x = F.interpolate(x, size=tuple(new_grid), mode="trilinear", align_corners=False)
    return x.permute(0, 2, 3, 4, 1).reshape(1, -1, c).to(table.dtype)


def read_head_map(path, num_classes: int) -> list:
    with open(path, encoding="utf-8") as f:
        mapping = json.load(f)
    if not isinstance(mapping, list) or not all(isinstance(i, int) for i in mapping):
        raise CheckpointError(f"{path}: the head map must be a JSON list of integers (entry i = row of "
                         "the K710 head for class i), like the official label_710to400.json")
    if len(mapping) != num_classes:
        raise CheckpointMismatchError(f"{path} maps {len(mapping)} classes but the model has "
                                      f"{num_classes}; use the map made for this class list")
    return mapping


def _pos_table(model, sd: dict, report: LoadReport) -> None:
    table = sd.pop("pos_embed", None)
    if table is None:
        return
    ours = getattr(model, "pos_embed", None)
    n = table.shape[1]
    if isinstance(ours, torch.nn.Parameter):          # a learnable-position model: load the table
        if table.shape != ours.shape:
            table = _resample_learned(table, model.patch_embed.grid, report.path)
        sd["pos_embed"] = table
        return
    if torch.allclose(table.float(), sinusoid_table(n, table.shape[-1]), atol=1e-4):
        report.unexpected.append("pos_embed (a fixed sine-cosine table; rebuilt for this model's "
                                 f"{tuple(model.patch_embed.grid)} grid)")
        return
    raise CheckpointMismatchError(
        f"{report.path} holds a learned position table of {n} positions, but this model uses the "
        f"fixed sine-cosine table ({None if ours is None else ours.shape[1]} positions): build it "
        "with --learnable-pos-emb (official use_learnable_pos_emb) to load the table")


def _resample_learned(table: torch.Tensor, grid, path) -> torch.Tensor:
    """A learned table of another grid, resampled to ``grid``: same temporal slots with a square
    spatial grid, or same spatial grid with other slots (what the checkpoint's size allows)."""
    n, (t, h, w) = table.shape[1], grid
    side = round((n / t) ** 0.5)
    if side * side * t == n:
        old = (t, side, side)
    elif n % (h * w) == 0:
        old = (n // (h * w), h, w)
    else:
        raise CheckpointMismatchError(f"{path}: cannot tell the grid of its {n}-position table "
                                      f"(this model's grid is {grid}); resample it with "
                                      "interpolate_pos_table first")
    log.info("resampling the learned position table of %s from grid %s to %s", path, old, tuple(grid))
    return interpolate_pos_table(table, old, grid)


def load_classifier_weights(model, path, head_map=None,
                            strict_encoder: bool = True, trust_code: bool = False) -> LoadReport:
    """Load ``path`` into a ``VisionTransformer``. Everything is checked before copying: a
    different model size raises :class:`CheckpointMismatchError` naming both sizes.

    ``head_map``: a JSON file (entry i = the checkpoint head's row for class i), or a callable
    ``(checkpoint head rows, checkpoint config) -> file or None`` that decides once the head's
    size is known (the stages pick the K710 -> Kinetics map this way)."""
    raw = read_checkpoint(path, trust_code=trust_code)
    sd, where = extract_state_dict(raw)
    report = LoadReport(str(path), where)
    if isinstance(raw, dict) and isinstance(raw.get("config"), dict):
        report.config = raw["config"]
    sd, report.dropped_decoder = normalize_keys(sd)
    _pos_table(model, sd, report)
    own = model.state_dict()
    ours_desc = describe_encoder(own)
    if "patch_embed.proj.weight" not in sd:
        raise CheckpointMismatchError(f"{path} holds no ViT encoder weights (no patch_embed.proj."
                                      f"weight after stripping prefixes); is it a VideoMAE checkpoint?")
    bad = [k for k, v in sd.items() if k in own and not k.startswith("head.")
           and tuple(v.shape) != tuple(own[k].shape)]
    if bad or encoder_shape(sd) != encoder_shape(own):
        raise CheckpointMismatchError(
            f"{path} is a ViT with {describe_encoder(sd)}, but the model being built has "
            f"{ours_desc}; pick the --model that matches the checkpoint")
    if getattr(model, "use_mean_pooling", True) and "norm.weight" in sd:
        for k in ("norm.weight", "norm.bias"):
            report.unexpected.append(k + " (encoder's final norm; unused under mean pooling)")
            sd.pop(k, None)
    _head(model, sd, report, head_map)
    report.unexpected += [k for k in sd if k not in own]
    sd = {k: v for k, v in sd.items() if k in own}
    result = model.load_state_dict(sd, strict=False)
    report.missing = [k for k in result.missing_keys if not k.startswith("head.")]
    report.loaded = list(sd)
    if strict_encoder:
        lost = [k for k in report.missing if k.startswith(("blocks.", "patch_embed."))]
        if lost:
            raise CheckpointMismatchError(f"{path} lacks encoder weights {_short(lost)}; it is not a "
                                          "complete VideoMAE encoder")
    log.info(report.summary())
    return report


def _head(model, sd: dict, report: LoadReport, head_map: Optional[str]) -> None:
    if "head.weight" not in sd:
        report.head = "fresh" if isinstance(getattr(model, "head", None), torch.nn.Linear) else "none"
        sd.pop("head.bias", None)
        return
    n_ckpt, n_model = sd["head.weight"].shape[0], getattr(model, "num_classes", 0)
    if callable(head_map):
        head_map = head_map(n_ckpt, report.config)
    if n_ckpt == n_model and head_map is None:
        return
    if head_map is not None:
        mapping = read_head_map(head_map, n_model)
        if max(mapping) >= n_ckpt or min(mapping) < 0:
            raise CheckpointMismatchError(f"{head_map} points at row {max(mapping)} but the "
                                          f"checkpoint's head has {n_ckpt} rows")
        idx = torch.tensor(mapping)
        sd["head.weight"], sd["head.bias"] = sd["head.weight"][idx], sd["head.bias"][idx]
        report.head = "remapped"
        return
    if n_ckpt == 710:
        log.warning("the checkpoint has a 710-class (K710) head and the model %d classes: pass "
                    "--dataset k400|k600|k700 (or --head-map label_710to%d.json) to reuse its rows; "
                    "starting a fresh head", n_model, n_model)
    del sd["head.weight"], sd["head.bias"]
    report.head = "fresh"


def checkpoint_class_names(path, trust_code: bool = False) -> Optional[list]:
    """Class names stored in one of our checkpoints (``config.class_names``), else None."""
    cfg = read_checkpoint(path, trust_code=trust_code).get("config")
    names = cfg.get("class_names") if isinstance(cfg, dict) else None
    return list(names) if names else None
