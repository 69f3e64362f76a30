"""Export a classifier to the Hugging Face transformers VideoMAE format (config.json +
model.safetensors), loadable with ``VideoMAEForVideoClassification.from_pretrained(folder)``.

    python -m vmae2_fast.hf_export --checkpoint runs/ft/checkpoint-best.pth --model vit_b --out hf/
    (the CLI; `export(cfg)` here is what it runs)

Settings that make HF compute our function (reference section 11.3): ``layer_norm_eps=1e-6``
(HF's default is 1e-12), ``use_mean_pooling=True``, ``qkv_bias`` on. HF's ``fc_norm`` is built
with the fixed LayerNorm eps 1e-5 (ours 1e-6): logits differ by ~1e-6 relative, nothing more.
HF takes ``pixel_values`` as (B, T, C, H, W); ours is (B, C, T, H, W).

Key layout: transformers >= 5 stores the q/v biases as ``query.bias`` / ``value.bias``; 4.x as
``q_bias`` / ``v_bias``. ``layout='auto'`` follows the installed version (5 when none is).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..config import ExportConfig
from ..errors import CheckpointError, ConfigError, DataError, MissingPackageError

__all__ = ["hf_config", "to_hf_state_dict", "export_to_hf", "export", "import_transformers"]


def import_transformers():
    """transformers, with a message naming the extra when it is missing."""
    try:
        import transformers
    except ModuleNotFoundError as exc:
        raise MissingPackageError(f"{exc}; the Hugging Face export needs transformers: "
                                  "pip install 'transformers>=4.46,<6' safetensors") from exc
    return transformers


def _layout(layout: str) -> str:
    if layout != "auto":
        return layout
    try:
        from importlib.metadata import version
        return "v4" if version("transformers").startswith("4.") else "v5"
    except Exception:
        return "v5"


def hf_config(model, class_names=None) -> dict:
    pe = model.patch_embed
    blk = model.blocks[0]
    n = model.num_classes
    names = list(class_names) if class_names else [f"class_{i}" for i in range(n)]
    if len(names) != n:
        raise DataError(f"{len(names)} class names for a {n}-class model")
    return {
        "model_type": "videomae", "architectures": ["VideoMAEForVideoClassification"],
        "image_size": pe.img_size, "patch_size": pe.patch_size, "num_channels": pe.proj.in_channels,
        "num_frames": pe.num_frames, "tubelet_size": pe.tubelet_size,
        "hidden_size": pe.proj.out_channels, "num_hidden_layers": len(model.blocks),
        "num_attention_heads": blk.attn.num_heads, "intermediate_size": blk.mlp.fc1.out_features,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02, "layer_norm_eps": blk.norm1.eps, "qkv_bias": True,
        "qv_bias": True, "use_mean_pooling": bool(model.use_mean_pooling),
        "id2label": {str(i): s for i, s in enumerate(names)},
        "label2id": {s: i for i, s in enumerate(names)},
    }


def to_hf_state_dict(model, layout: str = "auto") -> dict:
    layout = _layout(layout)
    sd = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    out = {"videomae.embeddings.patch_embeddings.projection.weight": sd.pop("patch_embed.proj.weight"),
           "videomae.embeddings.patch_embeddings.projection.bias": sd.pop("patch_embed.proj.bias")}
    for i in range(len(model.blocks)):
        p, q = f"blocks.{i}.", f"videomae.encoder.layer.{i}."
        a = q + "attention.attention."
        wq, wk, wv = sd.pop(p + "attn.qkv.weight").chunk(3, dim=0)
        out[a + "query.weight"], out[a + "key.weight"], out[a + "value.weight"] = wq, wk, wv
        qb, vb = sd.pop(p + "attn.q_bias"), sd.pop(p + "attn.v_bias")
        if layout == "v4":
            out[a + "q_bias"], out[a + "v_bias"] = qb, vb
        else:
            out[a + "query.bias"], out[a + "value.bias"] = qb, vb
        for ours, theirs in (("attn.proj", "attention.output.dense"), ("norm1", "layernorm_before"),
                             ("norm2", "layernorm_after"), ("mlp.fc1", "intermediate.dense"),
                             ("mlp.fc2", "output.dense")):
            out[q + theirs + ".weight"] = sd.pop(p + ours + ".weight")
            out[q + theirs + ".bias"] = sd.pop(p + ours + ".bias")
    for ours, theirs in (("fc_norm", "fc_norm"), ("norm", "videomae.layernorm"), ("head", "classifier")):
        for s in ("weight", "bias"):
            if f"{ours}.{s}" in sd:
                out[f"{theirs}.{s}"] = sd.pop(f"{ours}.{s}")
    if sd:
        raise ValueError(f"no Hugging Face name for {sorted(sd)}")
    return {k: v.contiguous() for k, v in out.items()}


def export_to_hf(model, out_dir, class_names=None, layout: str = "auto") -> Path:
    try:
        from safetensors.torch import save_file
    except ImportError as exc:
        raise MissingPackageError("exporting needs safetensors: pip install safetensors") from exc
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config(model, class_names), indent=2))
    save_file(to_hf_state_dict(model, layout), str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


# Official model options transformers' VideoMAE has no counterpart for (value = the only one it has).
UNSUPPORTED = {"init_values": 0.0, "learnable_pos_emb": False, "cos_attn": False, "qk_scale": None,
               "use_mean_pooling": True}


def export(cfg: ExportConfig) -> Path:
    """Load ``cfg.checkpoint`` into the classifier and write the transformers folder ``cfg.out``."""
    from ..models import build_classifier
    from ..models.weights import extract_state_dict, load_classifier_weights, normalize_keys, read_checkpoint
    from ..train.storage import prepare_output_dir
    prepare_output_dir(cfg.out, "--out")         # a folder problem is reported before any work
    raw = read_checkpoint(cfg.checkpoint, trust_code=cfg.trust_checkpoint)
    ckpt = raw.get("config") if isinstance(raw.get("config"), dict) else {}
    unsupported = {k: v for k, v in ckpt.items() if k in UNSUPPORTED and v != UNSUPPORTED[k]}
    if unsupported:
        raise CheckpointError(f"{cfg.checkpoint} was trained with {unsupported}, which transformers' "
                         "VideoMAE cannot express; it exports only the released architecture")
    sd, _ = normalize_keys(extract_state_dict(raw)[0])
    n = cfg.num_classes or (sd["head.weight"].shape[0] if "head.weight" in sd else 0)
    if n <= 0:
        raise ConfigError("the checkpoint has no classification head; pass --num-classes")
    model = build_classifier(cfg.model, n, img_size=cfg.input_size or ckpt.get("input_size", 224),
                             num_frames=cfg.num_frames or ckpt.get("num_frames", 16),
                             tubelet_size=ckpt.get("tubelet_size", 2))
    load_classifier_weights(model, cfg.checkpoint, trust_code=cfg.trust_checkpoint)
    out = export_to_hf(model.eval(), cfg.out, ckpt.get("class_names"), cfg.layout)
    print(f"wrote {out}/config.json and {out}/model.safetensors")
    return out
