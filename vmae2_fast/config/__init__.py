"""Configs: one base dataclass for what every stage shares (`RunConfig`), the stage configs that
extend it, the tools' configs, presets named after the paper's tables and the official scripts,
and the flag parser that turns a command line into a checked config."""
from .base import RunConfig, replace
from .classify import DistillConfig, FinetuneConfig, PostPretrainConfig
from .flags import add_config_flags, given_flags, parse_config
from .plan import PlanConfig
from .pretrain import PretrainConfig
from .tools import EvaluateConfig, ExportConfig, FeaturesConfig, OnnxExportConfig, PredictConfig

__all__ = ["RunConfig", "PretrainConfig", "FinetuneConfig", "PostPretrainConfig", "DistillConfig",
           "EvaluateConfig", "FeaturesConfig", "ExportConfig", "PredictConfig", "OnnxExportConfig",
           "PlanConfig", "replace", "parse_config", "add_config_flags", "given_flags"]
