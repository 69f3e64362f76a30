"""What every command-line entry point shares at run time: readable logging (through tqdm, so log
lines do not break a progress bar; a log.txt in the output folder) and the exit-code contract
(`error: ...` and exit code 2 for a user error, a traceback only for a bug). Flags are generated
from the configs: `vmae2_fast.config.flags`."""
from __future__ import annotations

import logging
import sys
from pathlib import Path


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
        from .train.storage import prepare_output_dir
        prepare_output_dir(output_dir)          # a folder problem is `error: ...` before compute
        path = Path(output_dir) / "log.txt"
        try:
            fh = logging.FileHandler(path)
        except OSError as exc:
            from .errors import OutputDirError
            raise OutputDirError(f"cannot open {path} for writing ({exc.strerror}); pass another "
                                 "--output-dir") from None
        # where this process's lines start: a resumed run cuts the killed run's tail out of the
        # log up to here (train/records.py), so the log continues from the checkpoint
        fh.start_offset = path.stat().st_size
        fh.setFormatter(fmt)
        root.addHandler(fh)


def exit_code(fn, *args) -> int:
    """Run a CLI body; a user error (bad flag value, missing file, unusable checkpoint or output
    folder) or a clean stop (`errors.RunStopped`: disk full, a data worker that keeps dying)
    prints `error: ...` and gives exit code 2 instead of a traceback."""
    from .errors import RunStopped
    try:
        fn(*args)
    except (ValueError, FileNotFoundError, RunStopped) as e:   # CheckpointError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


# command -> (config class in vmae2_fast.config, "module:function" that runs the checked config)
COMMANDS = {
    "pretrain": ("PretrainConfig", "stages.pretrain:run"),
    "post_pretrain": ("PostPretrainConfig", "stages.classify:run"),
    "finetune": ("FinetuneConfig", "stages.classify:run"),
    "distill": ("DistillConfig", "stages.classify:run"),
    "evaluate": ("EvaluateConfig", "stages.evaluate:run"),
    "extract_features": ("FeaturesConfig", "stages.features:run"),
    "predict": ("PredictConfig", "stages.predict:run"),
    "hf_export": ("ExportConfig", "integrations.hf_export:export"),
    "onnx_export": ("OnnxExportConfig", "stages.onnx_export:run"),
}


def config_for(command: str, argv=None, doc: str | None = None):
    """The checked config of ``python -m vmae2_fast.<command> ARGV`` (preset, then flags)."""
    from . import config
    from .config.presets import PRESETS
    cls = getattr(config, COMMANDS[command][0])
    return config.parse_config(cls, argv, prog=f"python -m vmae2_fast.{command}", description=doc,
                               help_text=getattr(cls, "HELP", None), presets=PRESETS.get(command))


def run_command(command: str, argv=None, doc: str | None = None):
    """Parse and run one command; returns what its runner returns (a summary dict, a path)."""
    import importlib
    cfg = config_for(command, argv, doc)
    module, function = COMMANDS[command][1].split(":")
    return getattr(importlib.import_module(f"vmae2_fast.{module}"), function)(cfg)


def main_for(command: str, argv=None, doc: str | None = None) -> int:
    """The body of every ``python -m vmae2_fast.<command>``: exit code 0, or 2 on a user error."""
    return exit_code(run_command, command, argv, doc)
