"""Build a model from an official-style config dict (the parity fixtures' `config`)."""
from __future__ import annotations

import logging

from ..errors import ConfigError
from .classifier import VisionTransformer
from .pretrain import PretrainVisionTransformer

log = logging.getLogger(__name__)

# official config key -> our constructor argument
_PRETRAIN_KEYS = {
    "img_size": "img_size", "input_size": "img_size", "patch_size": "patch_size",
    "all_frames": "num_frames", "num_frames": "num_frames", "tubelet_size": "tubelet_size",
    "in_chans": "in_chans",
    "encoder_embed_dim": "encoder_embed_dim", "encoder_depth": "encoder_depth",
    "encoder_num_heads": "encoder_num_heads", "decoder_embed_dim": "decoder_embed_dim",
    "decoder_depth": "decoder_depth", "decoder_num_heads": "decoder_num_heads",
    "mlp_ratio": "mlp_ratio", "qkv_bias": "qkv_bias", "layer_norm_eps": "norm_eps",
    "drop_path_rate": "drop_path_rate", "decoder_num_classes": "decoder_num_classes",
    "with_cp": "activation_checkpointing",
    "normlize_target": "normalize_target", "normalize_target": "normalize_target",
    "init_values": "init_values", "use_learnable_pos_emb": "learnable_pos_emb",
    "qk_scale": "qk_scale", "cos_attn": "cos_attn",
}
_CLASSIFIER_KEYS = {
    "img_size": "img_size", "input_size": "img_size", "patch_size": "patch_size",
    "all_frames": "num_frames", "num_frames": "num_frames", "tubelet_size": "tubelet_size",
    "in_chans": "in_chans", "embed_dim": "embed_dim", "depth": "depth", "num_heads": "num_heads",
    "mlp_ratio": "mlp_ratio", "qkv_bias": "qkv_bias", "num_classes": "num_classes",
    "use_mean_pooling": "use_mean_pooling", "init_scale": "init_scale", "layer_norm_eps": "norm_eps",
    "drop_rate": "drop_rate", "attn_drop_rate": "attn_drop_rate", "drop_path_rate": "drop_path_rate",
    "head_drop_rate": "head_drop_rate", "with_cp": "activation_checkpointing",
    "init_values": "init_values", "use_learnable_pos_emb": "learnable_pos_emb",
    "qk_scale": "qk_scale", "cos_attn": "cos_attn",
}
# Masking settings: they configure `vmae2_fast.masking.DualMasking`, not the model.
_MASKING = {"encoder_mask_ratio", "mask_ratio", "decoder_mask_ratio", "mask_type", "decoder_mask_type"}
# Official options that we accept only at their default (they change nothing at that value).
_INERT = {"encoder_num_classes": (0,), "drop_rate": (0, 0.0), "attn_drop_rate": (0, 0.0)}


def from_official_config(cfg: dict):
    """The pre-training model if `cfg` has `decoder_*` keys, else the classifier.

    Unknown keys are reported; the official model options (layer scale ``init_values``,
    ``use_learnable_pos_emb``, ``qk_scale``, ``cos_attn``) are built; dropout in the pre-training
    model (which has none) raises unless it is 0.
    """
    pretrain = any(k.startswith("decoder_") for k in cfg)
    keymap = _PRETRAIN_KEYS if pretrain else _CLASSIFIER_KEYS
    kwargs, ignored = {}, []
    for key, value in cfg.items():
        if key == "init_values" and value is None:     # the official Block would crash on None
            value = 0.0
        if key in keymap:
            kwargs[keymap[key]] = value
        elif key in _MASKING:
            continue
        elif key in _INERT:
            if value not in _INERT[key]:
                raise ConfigError(f"official option {key}={value!r} is not supported")
        else:
            ignored.append(key)
    if ignored:
        log.warning("from_official_config: ignoring keys %s", ", ".join(sorted(ignored)))
    return PretrainVisionTransformer(**kwargs) if pretrain else VisionTransformer(**kwargs)
