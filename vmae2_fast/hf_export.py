"""Export a classifier to the Hugging Face transformers VideoMAE format (config.json +
model.safetensors), loadable with ``VideoMAEForVideoClassification.from_pretrained(folder)``.

    python -m vmae2_fast.hf_export --checkpoint runs/ft/checkpoint-best.pth --model vit_b --out hf/

Settings that make HF compute our function (reference section 11.3): ``layer_norm_eps=1e-6``
(HF's default is 1e-12), ``use_mean_pooling=True``, ``qkv_bias`` on. HF's ``fc_norm`` is built
with the fixed LayerNorm eps 1e-5 (ours 1e-6): logits differ by ~1e-6 relative, nothing more.
HF takes ``pixel_values`` as (B, T, C, H, W); ours is (B, C, T, H, W).

Key layout: transformers >= 5 stores the q/v biases as ``query.bias`` / ``value.bias``; 4.x as
``q_bias`` / ``v_bias``. ``layout='auto'`` follows the installed version (5 when none is).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

__all__ = ["hf_config", "to_hf_state_dict", "export_to_hf", "import_transformers"]


def import_transformers():
    """Import transformers; our repo's top-level ``kernels/`` folder (installed as
    vmae2_fast.kernels) would otherwise shadow Hugging Face's ``kernels`` package when Python
    runs from the repository root, and transformers would try to import it."""
    spec = importlib.util.find_spec("kernels") if "kernels" not in sys.modules else None
    if spec is not None and spec.origin and (Path(spec.origin).parent.parent / "vmae2_fast").is_dir():
        sys.modules["kernels"] = None        # find_spec now answers None: "not installed"
    import transformers
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
        raise ValueError(f"{len(names)} class names for a {n}-class model")
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
        raise ImportError("exporting needs safetensors: pip install safetensors") from exc
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config(model, class_names), indent=2))
    save_file(to_hf_state_dict(model, layout), str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def main(argv=None) -> int:
    from .models.weights import CheckpointMismatchError, load_classifier_weights, read_checkpoint
    from .models import build_classifier
    p = argparse.ArgumentParser(prog="python -m vmae2_fast.hf_export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", required=True, help="vit_s | vit_b | vit_l | vit_h | vit_g | vit_micro")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num-classes", type=int, default=0, help="default: the checkpoint head's rows")
    p.add_argument("--input-size", type=int, default=0, help="default: the checkpoint's config, else 224")
    p.add_argument("--num-frames", type=int, default=0, help="default: the checkpoint's config, else 16")
    p.add_argument("--layout", choices=("auto", "v4", "v5"), default="auto")
    a = p.parse_args(argv)
    try:
        raw = read_checkpoint(a.checkpoint)
        cfg = raw.get("config", {}) if isinstance(raw, dict) else {}
        from .models.weights import extract_state_dict, normalize_keys
        sd, _ = normalize_keys(extract_state_dict(raw)[0])
        n = a.num_classes or (sd["head.weight"].shape[0] if "head.weight" in sd else 0)
        if n <= 0:
            raise ValueError("the checkpoint has no classification head; pass --num-classes")
        model = build_classifier(a.model, n, img_size=a.input_size or cfg.get("input_size", 224),
                                 num_frames=a.num_frames or cfg.get("num_frames", 16),
                                 tubelet_size=cfg.get("tubelet_size", 2))
        load_classifier_weights(model, a.checkpoint)
        out = export_to_hf(model.eval(), a.out, cfg.get("class_names"), a.layout)
    except (ValueError, FileNotFoundError, CheckpointMismatchError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}/config.json and {out}/model.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
