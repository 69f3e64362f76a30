"""Flags from config dataclasses: one `--field-name` flag per field, a preset applied first, the
flags a user typed over it, then `check()`. Every entry point builds its config this way."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import typing
from typing import Callable, Mapping, Optional

from ..errors import ConfigError
from .base import replace

__all__ = ["add_config_flags", "common_help", "given_flags", "parse_config"]


def add_config_flags(parser: argparse.ArgumentParser, cls, help_text: dict[str, str] | None = None):
    """One `--field-name` flag per dataclass field (a field with ``positional`` metadata, the
    operands' metavar, takes the operands instead); defaults are suppressed so that only the
    flags a user typed override the preset."""
    hints = typing.get_type_hints(cls)
    help_text = help_text or {}
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        args = typing.get_args(kind)
        base = next((a for a in args if a is not type(None)), kind) if args and type(None) in args else kind
        default = f.default if f.default is not dataclasses.MISSING else None
        h = help_text.get(f.name, "") + (f" (default: {default})" if default not in (None, "", ()) else "")
        if "positional" in f.metadata:  # the operands of a command (predict's INPUT...), not a flag
            parser.add_argument(f.name, nargs="*", metavar=f.metadata["positional"],
                                default=argparse.SUPPRESS, help=h)
        elif base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=h)
        elif typing.get_origin(base) is tuple:
            parser.add_argument(flag, type=float, nargs=len(typing.get_args(base)), default=argparse.SUPPRESS,
                                metavar="X", help=h)
        elif "bare" in f.metadata:      # a value, or the flag alone; --no-<flag> for the "no" value
            parser.add_argument(flag, type=base, nargs="?", const=f.metadata["bare"],
                                default=argparse.SUPPRESS, help=h)
            parser.add_argument("--no-" + flag[2:], dest=f.name, action="store_const",
                                const=f.metadata["no"], default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        else:
            parser.add_argument(flag, type=base, default=argparse.SUPPRESS, help=h)


def common_help() -> dict[str, str]:
    """Help of the fields several commands share; the model list comes from the zoo, so that
    every command's --help names every model (vit_micro included)."""
    from ..models.zoo import MODEL_SPECS
    return {
        "model": " | ".join(MODEL_SPECS) + " (vit_micro: a 2-block model for smoke tests, not a "
                 "paper model)",
        "trust_checkpoint": "unpickle Python objects (code) in the checkpoint files this command "
                            "reads; only for files you trust (default: refused, weights only)",
        "keep_last": "keep only the newest K numbered checkpoints (0: all); checkpoint-best.pth "
                     "is kept apart",
        "max_bad_fraction": "stop when more than this fraction of an epoch's videos cannot be read",
        "async_checkpoint": "write checkpoints in the background (a host copy; FSDP: DCP async_save) "
                            "while training goes on; at most one save in flight",
        "dist_timeout": "seconds a collective may wait for the other processes before the run "
                        "stops naming the late rank; keep it above a checkpoint write",
    }


def given_flags(ns: argparse.Namespace) -> dict:
    out = dict(vars(ns))
    for k, v in out.items():
        if isinstance(v, list):
            out[k] = tuple(v)
    return out


def parse_config(cls, argv=None, *, prog: str, description: str | None = None,
                 help_text: Optional[dict] = None,
                 presets: Optional[Mapping[str, Callable[[str], dict]]] = None):
    """The config of one run: ``cls()`` defaults, then ``presets[--preset](--model)`` (fields the
    config lacks are ignored), then a typed ``--dataset``'s own fields, then the typed flags;
    ``clip_grad 0`` means off; then ``check()``. ``--print-config`` prints the result as JSON and
    exits (code 0).

    Presets: ``none`` applies nothing; ``--preset-model SIZE`` takes the recipe's values of another
    model size (for sizes it does not cover). A preset the user typed that has no recipe for the
    model is refused (`NoRecipeError`, with the recipes that exist); the stage's default preset
    then only falls back to the plain defaults, with a warning, so that models without any
    recipe (vit_micro) still run without one."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    help_text = dict(help_text or {})
    for name, text in common_help().items():       # the same words for a field in every command
        help_text.setdefault(name, text)
    if presets is not None:
        help_text.setdefault("preset", "recipe: " + " | ".join([*presets, "none"]))
    add_config_flags(parser, cls, help_text)
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (preset, then flags) as JSON and exit")
    # operands may sit between flags (`predict a.mp4 --top-k 3 b.mp4`)
    operands = any("positional" in f.metadata for f in dataclasses.fields(cls))
    ns = parser.parse_intermixed_args(argv) if operands else parser.parse_args(argv)
    show = ns.print_config
    del ns.print_config
    flags = given_flags(ns)
    cfg = cls()
    names = {f.name for f in dataclasses.fields(cls)}
    if presets is not None:
        cfg = _apply_preset(cfg, cls, flags, presets, names)
    if "dataset" in flags and "dataset" in names and flags["dataset"]:
        from .datasets import dataset_fields
        cfg = replace(cfg, **{k: v for k, v in dataset_fields(flags["dataset"]).items() if k in names})
    cfg = replace(cfg, **flags)
    if getattr(cfg, "clip_grad", None) == 0:
        cfg = replace(cfg, clip_grad=None)
    cfg.check()
    if show:
        print(json.dumps(config_dict(cfg), indent=2))
        raise SystemExit(0)
    return cfg


def _apply_preset(cfg, cls, flags: dict, presets, names: set):
    from .presets.recipe import NoRecipeError
    name = flags.get("preset", cfg.preset)
    if name == "none":
        return cfg
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join([*presets, 'none'])}")
    model = flags.get("preset_model") or flags.get("model", cfg.model)
    try:
        overrides = presets[name](model)
    except NoRecipeError as exc:
        if "preset" in flags or "preset_model" in flags:
            raise
        logging.getLogger("vmae2_fast").warning(
            "the default preset %r has no recipe for %s: using the plain defaults (%s)", name,
            model, str(exc).split(":", 1)[0])
        return replace(cfg, preset="none")
    # The official scripts' --with_checkpoint is how they fit their GPUs, not part of the recipe's
    # function: the run plans its own checkpointing (auto) unless the flag is typed.
    overrides.pop("activation_checkpointing", None)
    return replace(cfg, **{k: v for k, v in overrides.items() if k in names})


def config_dict(cfg) -> dict:
    """A config as JSON-ready data (tuples as lists)."""
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
