"""AdamW parameter groups with the official weight-decay rules and layer decay.

Grouping follows VideoMAE V2 (reference §5 and §6.2) with two deliberate fixes:

* Names are matched after stripping wrapper prefixes (``_orig_mod.`` added by
  ``torch.compile``, ``module.`` added by DDP). The official code compares the
  raw names, so under ``torch.compile`` ``mask_token`` (3-D) silently received
  weight decay.
* Groups are always built, even with ``weight_decay == 0`` (the official code
  then built none, so ``group['lr_scale']`` raised ``KeyError``).
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

# Prefixes added by wrappers; they can be nested in any order
# (DDP(compile(m)) -> "module._orig_mod.", compile(DDP(m)) -> "_orig_mod.module.").
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")

# Parameters that live "below" the first block for layer decay.
_EMBEDDING_NAMES = ("cls_token", "mask_token", "pos_embed")


def strip_wrapper_prefixes(name: str) -> str:
    """Remove any leading ``_orig_mod.`` / ``module.`` prefixes, repeatedly."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                changed = True
    return name


def unwrap_model(model: nn.Module) -> nn.Module:
    """Peel off ``torch.compile`` / DDP wrappers to reach the user's module."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _model_skip_names(model: nn.Module) -> set[str]:
    # Ask the innermost module: DDP does not forward attribute lookups.
    inner = unwrap_model(model)
    fn = getattr(inner, "no_weight_decay", None)
    if not callable(fn):
        return set()
    return {strip_wrapper_prefixes(n) for n in fn()}


def layer_id_for_vit(name: str, num_layers: int) -> int:
    """Official ``get_num_layer_for_vit`` on a prefix-stripped name.

    Embeddings -> 0, ``blocks.k.*`` -> k + 1, everything else -> L + 1.
    """
    if name in _EMBEDDING_NAMES or name.startswith("patch_embed."):
        return 0
    if name.startswith("blocks."):
        parts = name.split(".")
        if len(parts) > 1 and parts[1].isdigit():
            return int(parts[1]) + 1
    return num_layers + 1


def layer_scales(layer_decay: float, num_layers: int) -> list[float]:
    """``scale[i] = layer_decay ** (L + 1 - i)`` for i = 0..L+1 (official)."""
    return [layer_decay ** (num_layers + 1 - i) for i in range(num_layers + 2)]


def param_groups(
    model: nn.Module,
    weight_decay: float,
    skip_list: Iterable[str] = (),
    layer_decay: Optional[float] = None,
    num_layers: Optional[int] = None,
) -> list[dict]:
    """Build AdamW parameter groups.

    No weight decay for: 1-D params, names ending in ``.bias`` / ``.scale``,
    names in ``skip_list`` or ``model.no_weight_decay()``. Frozen params
    (``requires_grad=False``) are left out. Every group has ``name``,
    ``params``, ``param_names`` (prefix-stripped), ``weight_decay``,
    ``lr_scale`` and ``apply_weight_decay``. With ``layer_decay``, groups
    are named ``layer_{id}_{decay|no_decay}``.
    """
    if layer_decay is not None:
        if num_layers is None or num_layers < 0:
            raise ValueError("layer_decay needs num_layers (the number of transformer blocks)")
        if not layer_decay > 0:
            raise ValueError(f"layer_decay must be > 0, got {layer_decay}")
        scales = layer_scales(layer_decay, num_layers)
    skip = {strip_wrapper_prefixes(n) for n in skip_list} | _model_skip_names(model)

    groups: dict[str, dict] = {}  # insertion order gives a deterministic group order
    for raw_name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        name = strip_wrapper_prefixes(raw_name)
        no_decay = (
            p.ndim == 1
            or name.endswith(".bias")
            or name.endswith(".scale")
            or name in skip
        )
        kind = "no_decay" if no_decay else "decay"
        if layer_decay is not None:
            layer = layer_id_for_vit(name, num_layers)
            group_name, lr_scale = f"layer_{layer}_{kind}", scales[layer]
        else:
            group_name, lr_scale = kind, 1.0
        group = groups.get(group_name)
        if group is None:
            group = groups[group_name] = {
                "name": group_name,
                "params": [],
                "param_names": [],
                "weight_decay": 0.0 if no_decay else float(weight_decay),
                "lr_scale": float(lr_scale),
                # Remembered so a schedule that passes through 0 can raise it again.
                "apply_weight_decay": not no_decay,
            }
        group["params"].append(p)
        group["param_names"].append(name)
    return list(groups.values())


def build_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    skip_list: Iterable[str] = (),
    layer_decay: Optional[float] = None,
    num_layers: Optional[int] = None,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; each group starts at ``lr * lr_scale``."""
    groups = param_groups(model, weight_decay, skip_list, layer_decay, num_layers)
    if not groups:
        raise ValueError("model has no trainable parameters")
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    params = [p for g in groups for p in g["params"]]
    # The fused kernel (CUDA, and CPU since torch 2.4) is faster and, more importantly, takes a
    # `found_inf` tensor: the loop uses it to skip a non-finite update on the device, without a
    # host sync. Fall back to the foreach kernel for other devices.
    fused = all(p.device.type in ("cuda", "cpu") and p.is_floating_point() for p in params)
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps,
                             weight_decay=weight_decay, **kwargs)


def set_lr_and_wd(optimizer: torch.optim.Optimizer, lr: float,
                  weight_decay: Optional[float] = None) -> None:
    """Write one step's schedule values into every group (official behaviour).

    ``lr * lr_scale`` goes into every group; ``weight_decay`` (if given) only
    into decay groups, so no-decay groups stay at 0. Decay groups are those
    flagged ``apply_weight_decay`` by :func:`param_groups`; for foreign groups
    without the flag the official test ``weight_decay > 0`` is used.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if weight_decay is None:
            continue
        if group.get("apply_weight_decay", group["weight_decay"] > 0):
            group["weight_decay"] = weight_decay
