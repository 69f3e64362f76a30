"""Model zoo: ViT-S/B/L/H/g with the official VideoMAE V2 shapes (paper Table 7, official code)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .classifier import VisionTransformer
from .pretrain import PretrainVisionTransformer


@dataclass(frozen=True)
class ModelSpec:
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    decoder_embed_dim: int
    decoder_num_heads: int


MODEL_SPECS: dict[str, ModelSpec] = {
    "vit_s": ModelSpec(16, 384, 12, 6, 4.0, 192, 3),
    "vit_b": ModelSpec(16, 768, 12, 12, 4.0, 384, 6),
    "vit_l": ModelSpec(16, 1024, 24, 16, 4.0, 512, 8),
    "vit_h": ModelSpec(16, 1280, 32, 16, 4.0, 512, 8),
    # Giant: patch 14, MLP 6144 = int(1408 * 48/11); its decoder MLP is int(512 * 48/11) = 2234.
    "vit_g": ModelSpec(14, 1408, 40, 16, 48 / 11, 512, 8),
    # Not a paper model: a 2-block ViT for smoke tests and CI runs of the full loop in seconds.
    "vit_micro": ModelSpec(16, 64, 2, 2, 4.0, 32, 2),
}

# The official registered names, accepted as aliases.
ALIASES = {
    "pretrain_videomae_small_patch16_224": "vit_s", "vit_small_patch16_224": "vit_s",
    "pretrain_videomae_base_patch16_224": "vit_b", "vit_base_patch16_224": "vit_b",
    "pretrain_videomae_large_patch16_224": "vit_l", "vit_large_patch16_224": "vit_l",
    "pretrain_videomae_huge_patch16_224": "vit_h", "vit_huge_patch16_224": "vit_h",
    "pretrain_videomae_giant_patch14_224": "vit_g", "vit_giant_patch14_224": "vit_g",
}


# The official model options every builder accepts (off in every released model).
MODEL_OPTIONS = ("init_values", "learnable_pos_emb", "qk_scale", "cos_attn")


def model_options(source) -> dict:
    """The model options of a config object or dict (a run's config, a checkpoint's `config`);
    absent ones are left to the builders' defaults."""
    get = source.get if isinstance(source, dict) else (lambda k, d=None: getattr(source, k, d))
    return {k: get(k) for k in MODEL_OPTIONS if get(k) is not None}


def model_spec(name: str) -> ModelSpec:
    key = ALIASES.get(name, name)
    if key not in MODEL_SPECS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODEL_SPECS)}")
    return MODEL_SPECS[key]


def build_pretrain_model(name: str, *, img_size=224, num_frames=16, tubelet_size=2, decoder_depth=4,
                         **kwargs) -> PretrainVisionTransformer:
    s = model_spec(name)
    return PretrainVisionTransformer(
        img_size=img_size, patch_size=s.patch_size, num_frames=num_frames, tubelet_size=tubelet_size,
        encoder_embed_dim=s.embed_dim, encoder_depth=s.depth, encoder_num_heads=s.num_heads,
        decoder_embed_dim=s.decoder_embed_dim, decoder_depth=decoder_depth,
        decoder_num_heads=s.decoder_num_heads, mlp_ratio=s.mlp_ratio, **kwargs)


def build_classifier(name: str, num_classes: int, *, img_size=224, num_frames=16, tubelet_size=2,
                     **kwargs) -> VisionTransformer:
    s = model_spec(name)
    return VisionTransformer(
        img_size=img_size, patch_size=s.patch_size, num_frames=num_frames, tubelet_size=tubelet_size,
        num_classes=num_classes, embed_dim=s.embed_dim, depth=s.depth, num_heads=s.num_heads,
        mlp_ratio=s.mlp_ratio, **kwargs)
