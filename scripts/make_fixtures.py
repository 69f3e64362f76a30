"""Build the golden parity fixtures from a checkout of the official code (OpenGVLab/VideoMAEv2).

    git clone https://github.com/OpenGVLab/VideoMAEv2 .official/VideoMAEv2      # never committed
    pip install einops                                                         # the engine imports it
    python scripts/make_fixtures.py --official-repo .official/VideoMAEv2 --out tests/fixtures
    python scripts/make_fixtures.py --official-repo .official/VideoMAEv2 --check tests/fixtures

What the files hold, all computed by the official code in float64 on the CPU:

- `pretrain_parity.pt`: the official `PretrainVisionTransformer` (models/modeling_pretrain.py) and
  the official target and loss (the statements of engine_for_pretraining.train_one_epoch, taken
  from the file and run as written, fp32 branch: `bench/official_code.py`), on a clip and on
  masks drawn by the official generators (dataset/masking_generator.py): the output, the labels,
  the loss and every parameter's gradient;
- `classifier_parity.pt`: the official `VisionTransformer` (models/modeling_finetune.py) in eval
  mode: its logits;
- `masks.json`: the official running-cell maps (ratio 0.5) and tube-masking visible counts
  (ratio 0.9) at the 16-frame 224/patch-16 and 224/patch-14 grids.

The weights are not the official initialisation: every parameter is drawn here from a seeded
float64 generator (norm weights around 1, everything else around 0, none at exactly 0 or 1), so
that every parameter shows in the outputs and the files do not depend on timm's initialisers.
A run is deterministic: `--check` regenerates everything in memory and compares it with the
files (inputs exactly, outputs to 1e-12 relative: float64 sums may round differently with
another thread count), which is what tests/test_fixtures.py does with a checkout present.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from official_code import load_official_code  # noqa: E402  (bench/ is a folder of scripts)

PRETRAIN = dict(img_size=32, patch_size=8, all_frames=4, tubelet_size=2, encoder_embed_dim=32, encoder_depth=2,
                encoder_num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, mlp_ratio=4.0,
                decoder_num_classes=384, qkv_bias=True, layer_norm_eps=1e-6, encoder_mask_ratio=0.75,
                decoder_mask_ratio=0.5)
CLASSIFIER = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0, qkv_bias=True,
                  num_classes=5, all_frames=4, tubelet_size=2, use_mean_pooling=True, init_scale=0.001,
                  layer_norm_eps=1e-6)
MASK_GRIDS = ((8, 14, 14), (8, 16, 16))
FILES = ("pretrain_parity.pt", "classifier_parity.pt", "masks.json")
RTOL = 1e-12


def seeded_parameters(model: nn.Module, seed: int) -> None:
    """Every parameter from one float64 generator, in the model's parameter order."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if name.endswith("weight") and "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_((0.05 if p.ndim > 1 else 0.1) * noise)


def make_pretrain(code, seed: int = 0, batch: int = 3) -> dict:
    c = PRETRAIN
    model = code.modeling_pretrain.PretrainVisionTransformer(
        img_size=c["img_size"], patch_size=c["patch_size"], encoder_embed_dim=c["encoder_embed_dim"],
        encoder_depth=c["encoder_depth"], encoder_num_heads=c["encoder_num_heads"], encoder_num_classes=0,
        decoder_num_classes=c["decoder_num_classes"], decoder_embed_dim=c["decoder_embed_dim"],
        decoder_depth=c["decoder_depth"], decoder_num_heads=c["decoder_num_heads"], mlp_ratio=c["mlp_ratio"],
        qkv_bias=c["qkv_bias"], norm_layer=partial(nn.LayerNorm, eps=c["layer_norm_eps"]),
        tubelet_size=c["tubelet_size"], all_frames=c["all_frames"]).double()
    seeded_parameters(model, seed)
    model.train()
    gen = torch.Generator().manual_seed(seed + 100)
    video = torch.randn(batch, 3, c["all_frames"], c["img_size"], c["img_size"], dtype=torch.float64, generator=gen)
    grid = (c["all_frames"] // c["tubelet_size"], c["img_size"] // c["patch_size"], c["img_size"] // c["patch_size"])
    gens = code.masking_generator
    encoder = gens.TubeMaskingGenerator(grid, c["encoder_mask_ratio"])
    decoder = gens.RunningCellMaskingGenerator(grid, c["decoder_mask_ratio"])
    np.random.seed(seed)                       # the official generators draw from numpy's global RNG
    enc = torch.as_tensor(np.stack([encoder() for _ in range(batch)])).flatten(1).bool()
    dec = torch.as_tensor(np.stack([decoder() for _ in range(batch)])).flatten(1).bool()
    loss, outputs, labels = code.forward_loss(model, (video, enc, dec), torch.device("cpu"), c["patch_size"])
    loss.backward()
    return {"description": "official VideoMAE V2 PretrainVisionTransformer + engine loss, float64; masks: "
                           "True = masked (scripts/make_fixtures.py)",
            "config": dict(c), "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "video": video, "encoder_mask": enc, "decoder_mask": dec, "output": outputs.detach(),
            "labels": labels.detach(), "loss": loss.detach(),
            "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters()}}


def make_classifier(code, seed: int = 1, batch: int = 2) -> dict:
    c = CLASSIFIER
    finetune = importlib.import_module(code.modeling_pretrain.__package__ + ".modeling_finetune")
    model = finetune.VisionTransformer(
        img_size=c["img_size"], patch_size=c["patch_size"], embed_dim=c["embed_dim"], depth=c["depth"],
        num_heads=c["num_heads"], mlp_ratio=c["mlp_ratio"], qkv_bias=c["qkv_bias"], num_classes=c["num_classes"],
        all_frames=c["all_frames"], tubelet_size=c["tubelet_size"], use_mean_pooling=c["use_mean_pooling"],
        init_scale=c["init_scale"], norm_layer=partial(nn.LayerNorm, eps=c["layer_norm_eps"])).double()
    seeded_parameters(model, seed)
    model.eval()
    gen = torch.Generator().manual_seed(seed + 100)
    video = torch.randn(batch, 3, c["all_frames"], c["img_size"], c["img_size"], dtype=torch.float64, generator=gen)
    with torch.no_grad():
        logits = model(video)
    return {"description": "official VideoMAE V2 VisionTransformer (classification), eval mode, float64 "
                           "(scripts/make_fixtures.py)",
            "config": dict(c), "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "video": video, "logits": logits}


def make_masks(code) -> dict:
    gens = code.masking_generator
    key = lambda g: "x".join(map(str, g))  # noqa: E731
    return {"description": "official running-cell decoder mask maps (ratio 0.5; 1 = masked, flattened t,h,w "
                           "raster) and the number of encoder-visible tokens of tube masking at ratio 0.9",
            "running_cell_0p5": {key(g): gens.RunningCellMaskingGenerator(g, 0.5).all_mask_maps.reshape(4, -1)
                                 .astype(int).tolist() for g in MASK_GRIDS},
            "tube_visible_tokens": {f"{key(g)}@0.9": int(g[0] * g[1] * g[2] - gens.TubeMaskingGenerator(g, 0.9).total_masks)
                                    for g in MASK_GRIDS}}


def make_all(repo) -> dict:
    code = load_official_code(repo)
    return {"pretrain_parity.pt": make_pretrain(code), "classifier_parity.pt": make_classifier(code),
            "masks.json": make_masks(code)}


def differences(made, stored, path: str = "") -> list[str]:
    """What differs between a regenerated fixture and the stored one: tensors of the inputs
    (weights, video, masks, config) exactly, computed ones within RTOL."""
    out = []
    if isinstance(made, dict):
        if set(made) != set(stored):
            return [f"{path or 'top'}: keys {sorted(set(made) ^ set(stored))} differ"]
        for k in made:
            out += differences(made[k], stored[k], f"{path}.{k}" if path else k)
    elif torch.is_tensor(made):
        computed = path.split(".")[0] in ("output", "labels", "loss", "grads", "logits")
        if made.shape != stored.shape or made.dtype != stored.dtype:
            out.append(f"{path}: {tuple(made.shape)} {made.dtype} vs {tuple(stored.shape)} {stored.dtype}")
        elif computed:
            rel = float((made - stored).norm() / stored.norm().clamp_min(1e-300))
            if rel > RTOL:
                out.append(f"{path}: relative difference {rel:.3g} > {RTOL}")
        elif not torch.equal(made, stored):
            out.append(f"{path}: differs")
    elif made != stored:
        out.append(f"{path}: {made!r} != {stored!r}")
    return out


def read(path: Path):
    return json.loads(path.read_text()) if path.suffix == ".json" else torch.load(path, weights_only=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official-repo", required=True, help="a checkout of github.com/OpenGVLab/VideoMAEv2")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", help="write the fixtures into this folder")
    g.add_argument("--check", help="compare regenerated fixtures with those in this folder")
    a = p.parse_args(argv)
    made = make_all(a.official_repo)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, value in made.items():
            if name.endswith(".json"):
                (out / name).write_text(json.dumps(value))
            else:
                torch.save(value, out / name)
            print(f"wrote {out / name}")
        return 0
    bad = [f"{name}: {d}" for name in FILES for d in differences(made[name], read(Path(a.check) / name))]
    print("\n".join(bad) if bad else f"{', '.join(FILES)} in {a.check} are what {a.official_repo} computes")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
