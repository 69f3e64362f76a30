"""Named recipes. Each preset is a function of the model name returning config overrides."""
from __future__ import annotations

from . import cpu_demo, table10_pretrain
from . import cpu_demo_cls, table9_finetune, table11_post_pretrain, table16_distill

PRETRAIN_PRESETS = {
    "table10": table10_pretrain.overrides,
    "cpu_demo": cpu_demo.overrides,
}


def pretrain_preset(name: str, model: str) -> dict:
    if name not in PRETRAIN_PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRETRAIN_PRESETS)}")
    return PRETRAIN_PRESETS[name](model)


# Classification stages (stage 2 = post_pretrain, stage 3 = finetune, distill).
CLASSIFY_PRESETS = {
    "post_pretrain": {"k710": table11_post_pretrain.overrides, "cpu_demo": cpu_demo_cls.overrides},
    "finetune": {**{d: table9_finetune.make(d) for d in table9_finetune.DATASETS},
                 "cpu_demo": cpu_demo_cls.overrides},
    "distill": {**{d: table16_distill.make(d) for d in table16_distill.DATASETS},
                "cpu_demo": cpu_demo_cls.overrides},
}


def classify_preset(stage: str, name: str, model: str) -> dict:
    presets = CLASSIFY_PRESETS[stage]
    if name not in presets:
        raise ValueError(f"unknown preset {name!r} for {stage}; choose one of {', '.join(presets)}")
    return presets[name](model)
