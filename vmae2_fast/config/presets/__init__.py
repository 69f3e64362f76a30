"""Named recipes per stage. A preset is a callable of the model name returning config overrides
(a `Recipe` refuses a size it does not cover); `vmae2_fast.config.parse_config` applies it before
the flags. `--preset none` applies nothing (the config's own defaults).

A bare dataset name that is not a preset (``k400``, ``ssv2``, ``diving48``, ...) is refused with the
presets that exist for that dataset, so the choice "from stage 1" / "after K710" is always the
user's, and a dataset without an official recipe says how to borrow one (``--dataset``).
"""
from __future__ import annotations

from ..datasets import DATASETS
from . import classify_scripts, cpu_demo, cpu_demo_cls, distill_table16, pretrain_hybrid
from .recipe import Ambiguous, NoRecipeError, Recipe

__all__ = ["PRESETS", "NoRecipeError", "Recipe", "recipes"]


def _bare_names(stage_presets: dict) -> dict:
    out = {}
    for d in DATASETS:
        if d in stage_presets:
            continue
        options = [n for n, r in stage_presets.items() if isinstance(r, Recipe) and n.startswith(d + "_")]
        if options:
            msg = (f"preset {d!r} names a dataset, not a recipe: choose where the run starts, "
                   + " or ".join(f"--preset {n} ({stage_presets[n].summary}; sizes "
                                 f"{', '.join(stage_presets[n].per_model)})" for n in options))
        else:
            msg = (f"no official recipe trains {d} in this stage; the official ones are "
                   f"{', '.join(n for n, r in stage_presets.items() if isinstance(r, Recipe))}. "
                   f"To use one of them on {d}, pass it with --dataset {d} (e.g. --preset "
                   f"k400_from_pt --dataset {d}): the recipe's optimiser values, {d}'s classes and "
                   "sampling")
        out[d] = Ambiguous(d, msg)
    return out


def _with_bare(presets: dict) -> dict:
    return {**presets, **_bare_names(presets)}


PRESETS = {
    "pretrain": {"hybrid": pretrain_hybrid.HYBRID, "cpu_demo": cpu_demo.overrides},
    "post_pretrain": {"k710": classify_scripts.K710, "cpu_demo": cpu_demo_cls.overrides},
    "finetune": _with_bare({**classify_scripts.FROM_PT, **classify_scripts.FROM_K710,
                            "cpu_demo": cpu_demo_cls.overrides}),
    "distill": {"k710": distill_table16.K710, "ssv2": distill_table16.SSV2,
                "cpu_demo": cpu_demo_cls.overrides},
}


def recipes():
    """Every official recipe: ``(stage, preset, model, source, note)`` rows, for the README table."""
    for stage, presets in PRESETS.items():
        for name, r in presets.items():
            if isinstance(r, Recipe):
                for model, source in r.sources().items():
                    yield stage, name, model, source, r.notes.get(model, "")
