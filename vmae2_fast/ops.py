"""Front door of the fused ops: the model and the loss call these, never a backend directly.

Only the reference backend (`reference.py`) exists so far; the Triton (CUDA) and C++ (CPU)
faces plug in here with the same signatures, and `use_backend` picks among them.
"""
from __future__ import annotations

import logging

from . import reference

log = logging.getLogger(__name__)

_BACKENDS = {"reference": reference}
_active = "reference"


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def use_backend(name: str) -> None:
    """Select the implementation of the fused ops ('auto' means the fastest available)."""
    global _active
    if name == "auto":
        name = "reference"
    if name not in _BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; available: {', '.join(available_backends())}")
    if name != _active:
        log.info("fused ops: using the %s backend", name)
    _active = name


def active_backend() -> str:
    return _active


def visible_patch_embed(video, weight, bias, pos_table, vis_idx, tubelet_size):
    return _BACKENDS[_active].visible_patch_embed(video, weight, bias, pos_table, vis_idx, tubelet_size)


def decoder_input(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token):
    return _BACKENDS[_active].decoder_input(z, proj_weight, pos_table, vis_idx, dec_idx, mask_token)


def masked_mse(pred, video, vis_idx, dec_idx, patch_size, tubelet_size, normalize=True,
               denominator=None):
    return _BACKENDS[_active].masked_mse(pred, video, vis_idx, dec_idx, patch_size, tubelet_size,
                                         normalize=normalize, denominator=denominator)


# Not fused ops, shared by every backend.
normalized_targets = reference.normalized_targets
loss_token_count = reference.loss_token_count
