"""Flags from config dataclasses: one `--field-name` flag per field, a preset applied first, the
flags a user typed over it, then `check()`. Every entry point builds its config this way."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Callable, Mapping, Optional

from .base import replace

__all__ = ["add_config_flags", "given_flags", "parse_config"]


def add_config_flags(parser: argparse.ArgumentParser, cls, help_text: dict[str, str] | None = None):
    """One `--field-name` flag per dataclass field; defaults are suppressed so that only the
    flags a user typed override the preset."""
    hints = typing.get_type_hints(cls)
    help_text = help_text or {}
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        args = typing.get_args(kind)
        base = next((a for a in args if a is not type(None)), kind) if args and type(None) in args else kind
        default = f.default if f.default is not dataclasses.MISSING else None
        h = help_text.get(f.name, "") + (f" (default: {default})" if default not in (None, "") else "")
        if base is bool:
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
    config lacks are ignored), then the typed flags; ``clip_grad 0`` means off; then ``check()``."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    help_text = dict(help_text or {})
    if presets is not None:
        help_text.setdefault("preset", "recipe: " + " | ".join(presets))
    add_config_flags(parser, cls, help_text)
    flags = given_flags(parser.parse_args(argv))
    cfg = cls()
    if presets is not None:
        name = flags.get("preset", cfg.preset)
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
        names = {f.name for f in dataclasses.fields(cls)}
        overrides = presets[name](flags.get("model", cfg.model))
        cfg = replace(cfg, **{k: v for k, v in overrides.items() if k in names})
    cfg = replace(cfg, **flags)
    if getattr(cfg, "clip_grad", None) == 0:
        cfg = replace(cfg, clip_grad=None)
    cfg.check()
    return cfg
