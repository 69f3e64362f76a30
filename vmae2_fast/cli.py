"""What every command-line entry point shares: the command table (command -> config class ->
the function that runs it) and the exit-code contract: a user error (`errors.UserError`) or a
clean stop (`errors.RunStopped`) prints `error: ...` and gives exit code 2; anything else keeps its
traceback, because it is a bug. Flags are generated from the configs (`vmae2_fast.config.flags`);
logging is set up by `vmae2_fast.logs`."""
from __future__ import annotations

import sys


def exit_code(fn, *args) -> int:
    """Run a CLI body; a user error (a bad flag value, list, file, folder or checkpoint) or a
    clean stop (disk full, a data worker that keeps dying) prints `error: ...` and gives exit
    code 2 instead of a traceback. Any other exception propagates: a ValueError raised by a bug
    must not look like the user's fault."""
    from .errors import RunStopped, UserError
    try:
        fn(*args)
    except (UserError, RunStopped) as e:
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
    "plan": ("PlanConfig", "memory.report:run"),
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
