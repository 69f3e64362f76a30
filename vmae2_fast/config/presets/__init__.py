"""Named recipes per stage. A preset is a function of the model name returning config overrides;
`vmae2_fast.config.parse_config` applies it before the flags."""
from __future__ import annotations

from . import cpu_demo, cpu_demo_cls, table9_finetune, table10_pretrain, table11_post_pretrain, table16_distill

PRESETS = {
    "pretrain": {"table10": table10_pretrain.overrides, "cpu_demo": cpu_demo.overrides},
    "post_pretrain": {"k710": table11_post_pretrain.overrides, "cpu_demo": cpu_demo_cls.overrides},
    "finetune": {**{d: table9_finetune.make(d) for d in table9_finetune.DATASETS},
                 "cpu_demo": cpu_demo_cls.overrides},
    "distill": {**{d: table16_distill.make(d) for d in table16_distill.DATASETS},
                "cpu_demo": cpu_demo_cls.overrides},
}
