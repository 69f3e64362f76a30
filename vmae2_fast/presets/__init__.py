"""Named recipes. Each preset is a function of the model name returning config overrides."""
from __future__ import annotations

from . import cpu_demo, table10_pretrain

PRETRAIN_PRESETS = {
    "table10": table10_pretrain.overrides,
    "cpu_demo": cpu_demo.overrides,
}


def pretrain_preset(name: str, model: str) -> dict:
    if name not in PRETRAIN_PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRETRAIN_PRESETS)}")
    return PRETRAIN_PRESETS[name](model)
