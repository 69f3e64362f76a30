"""Command-line plumbing shared by the stage entry points: flags generated from a config
dataclass (every flag overrides the field of the same name), presets, logging set-up."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from pathlib import Path


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
        else:
            parser.add_argument(flag, type=base, default=argparse.SUPPRESS, help=h)


def given_flags(ns: argparse.Namespace) -> dict:
    out = dict(vars(ns))
    for k, v in out.items():
        if isinstance(v, list):
            out[k] = tuple(v)
    return out


class _TqdmHandler(logging.StreamHandler):
    """Logs through tqdm.write so that log lines do not break a progress bar."""

    def emit(self, record):
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # pragma: no cover - logging must never kill training
            self.handleError(record)


def setup_logging(output_dir: str | None, is_main: bool) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname).1s %(message)s", "%H:%M:%S")
    handler = _TqdmHandler()
    handler.setFormatter(fmt)
    root.addHandler(handler)
    if output_dir and is_main:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(output_dir) / "log.txt")
        fh.setFormatter(fmt)
        root.addHandler(fh)


def exit_code(fn, *args) -> int:
    """Run a CLI body; a user error (bad flag value, missing file, unusable checkpoint) prints
    `error: ...` and gives exit code 2 instead of a traceback."""
    try:
        fn(*args)
    except (ValueError, FileNotFoundError) as e:        # CheckpointError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
