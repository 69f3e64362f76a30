"""Where a pre-training step's time goes: each part of the step timed alone, forward + backward.

For vmae2_fast and (with `--official-repo PATH`) the official code, at the same shapes and
weights, each row is one part of the step run on its own, forward and backward (the optimiser:
one `step()`), multiplied by the number of times a training step runs it:

- embedding: the encoder with its blocks taken out (patch embedding, position, visible-token
  selection, the encoder's final norm);
- bridge + head: the whole model with every block taken out, minus the embedding row
  (encoder_to_decoder, decoder positions and mask tokens, the decoder's norm and head);
- attention / MLP / norms: one block's `attn`, its `mlp`, its `norm1` (twice: a block has two
  LayerNorms), times the depth; the attention is split into its projections (the `qkv` and
  `proj` Linear layers, timed alone: the same GEMMs in both implementations) and its core
  (attn - projections: softmax(QK^T)V, the q/v bias and the reshapes);
- target + loss: for the official code, its engine statements run with a stand-in model that
  returns a prepared prediction; for ours, `model.loss`;
- optimiser: the official code's `torch.optim.AdamW` (default implementation) or our fused one.

The last rows give the full step (timed as in bench/throughput.py) and what the parts do not
account for (residual adds, autograd bookkeeping, Python, allocation). Parts and full steps are
interleaved (one repetition of each implementation in turn) and the FASTEST of `--reps` is kept:
on a shared machine other processes only ever add time, so the minimum is the least disturbed
estimate of what a part costs (a sum of medians would add up the noise).

    python bench/step_breakdown.py --official-repo ~/src/VideoMAEv2       # CPU: ViT-S, 2 clips 16x224^2

Writes bench/results/step-breakdown-<machine>-<model>-<precision>[-<frames>x<size>-b<batch>].jsonl
(one record per implementation) and .md (render.py).
"""
from __future__ import annotations

import argparse
import contextlib
import sys

import torch
from torch import nn

import harness
from harness import Records, environment, result_stem, time_in_rounds
from official_code import OfficialMasks, build_official_model, load_official_code
from step_common import (BETAS, LR, WEIGHT_DECAY, add_official_repo_flag, add_step_flags, autocast_for,
                         official_adamw, step_name_parts)

from vmae2_fast import ops
from vmae2_fast.masking import DualMasking
from vmae2_fast.models import build_pretrain_model
from vmae2_fast.models.zoo import model_spec
from vmae2_fast.train.optim import build_adamw

ROWS = ("embedding", "encoder attention projections", "encoder attention core", "encoder MLP",
        "encoder norms", "bridge + head", "decoder attention projections", "decoder attention core",
        "decoder MLP", "decoder norms", "target + loss", "optimiser")


@contextlib.contextmanager
def without_blocks(model: nn.Module):
    """Both models keep their blocks in `encoder.blocks` and `decoder.blocks`; swap in empty lists."""
    saved = model.encoder.blocks, model.decoder.blocks
    model.encoder.blocks, model.decoder.blocks = nn.ModuleList(), nn.ModuleList()
    try:
        yield model
    finally:
        model.encoder.blocks, model.decoder.blocks = saved


def fwd_bwd(fn, autocast, strip: nn.Module | None = None):
    """A callable that runs fn() under autocast (with `strip`'s blocks taken out, if given) and
    back-propagates a fixed random gradient, outside autocast as a training step does."""
    grad = {}

    def run():
        with autocast(), (without_blocks(strip) if strip is not None else contextlib.nullcontext()):
            out = fn()
        if "g" not in grad:
            grad["g"] = torch.randn_like(out)
        out.backward(grad["g"])
    return run


def leaf(*shape, device):
    return torch.randn(*shape, device=device, requires_grad=True)


class Parts(dict):
    """One implementation's parts: name -> (callable, how many times a step runs it)."""

    def add(self, name, fn, count=1, setup=None):
        self[name] = (fn, count, setup)


def model_parts(parts: Parts, model: nn.Module, autocast, x_enc, x_dec, encoder_call, model_call):
    """The parts both models share by structure (their blocks, encoder and decoder layout)."""
    parts.add("embedding", fwd_bwd(encoder_call, autocast, strip=model))
    parts.add("embedding + bridge + head", fwd_bwd(model_call, autocast, strip=model))
    for where, blocks, x in (("encoder", model.encoder.blocks, x_enc), ("decoder", model.decoder.blocks, x_dec)):
        blk = blocks[0]
        parts.add(f"{where} attention", fwd_bwd(lambda b=blk, x=x: b.attn(x), autocast), len(blocks))
        parts.add(f"{where} qkv", fwd_bwd(lambda b=blk, x=x: b.attn.qkv(x), autocast), len(blocks))
        parts.add(f"{where} proj", fwd_bwd(lambda b=blk, x=x: b.attn.proj(x), autocast), len(blocks))
        parts.add(f"{where} MLP", fwd_bwd(lambda b=blk, x=x: b.mlp(x), autocast), len(blocks))
        parts.add(f"{where} norms", fwd_bwd(lambda b=blk, x=x: b.norm1(x), autocast), 2 * len(blocks))


def our_parts(model, video, vis, dec, autocast) -> Parts:
    dev, B = video.device, video.shape[0]
    Ce, Cd = model.encoder.norm.normalized_shape[0], model.decoder.norm.normalized_shape[0]
    p = Parts()
    model_parts(p, model, autocast, leaf(B, vis.shape[1], Ce, device=dev),
                leaf(B, vis.shape[1] + dec.shape[1], Cd, device=dev),
                lambda: model.encoder(video, vis), lambda: model(video, vis, dec))
    pred = leaf(B, dec.shape[1], model.decoder.head.out_features, device=dev)
    p.add("target + loss", fwd_bwd(lambda: model.loss(pred, video, vis, dec), autocast))
    return p


def official_parts(code, model, video, enc_map, dec_map, patch, autocast) -> Parts:
    dev, B = video.device, video.shape[0]
    mask, dmask = enc_map.to(dev).flatten(1).bool(), dec_map.to(dev).flatten(1).bool()
    n_vis, n_dec = int((~mask[0]).sum()), int((~dmask[0]).sum())
    Ce, Cd = model.encoder.norm.normalized_shape[0], model.decoder.norm.normalized_shape[0]
    p = Parts()
    model_parts(p, model, autocast, leaf(B, n_vis, Ce, device=dev), leaf(B, n_vis + n_dec, Cd, device=dev),
                lambda: model.encoder(video, mask), lambda: model(video, mask, dmask))
    pred = leaf(B, n_dec, model.decoder.head.out_features, device=dev)
    stand_in = lambda *_: pred  # noqa: E731 - the engine statements call model(images, masks...)
    p.add("target + loss", fwd_bwd(lambda: code.forward_loss(stand_in, (video, enc_map, dec_map), dev, patch)[0],
                                   autocast))
    return p


def add_optimiser(parts: Parts, model: nn.Module, opt):
    """The optimiser's `step()`, with a gradient on every parameter (put there untimed)."""
    grads = [(prm, torch.randn_like(prm)) for prm in model.parameters()]

    def give_grads():
        for prm, g in grads:
            prm.grad = g
    parts.add("optimiser", opt.step, setup=give_grads)


def time_parts(impls: dict, models: list, reps: int, device) -> dict:
    """{impl: {part: fastest seconds of one call}}; every part of every implementation timed in
    rounds (harness.time_in_rounds; the first round warms up). Every part starts with no
    gradients on the models (as a step after zero_grad(set_to_none)), except the optimiser's,
    whose set-up puts them there; set-ups are not timed."""
    calls = {(name, part): fn for name, parts in impls.items() for part, (fn, _, _) in parts.items()}

    def prepare(key):
        for m in models:
            m.zero_grad(set_to_none=True)
        setup = impls[key[0]][key[1]][2]
        if setup is not None:
            setup()
    timed = time_in_rounds(calls, reps, 1, device, prepare=prepare)
    return {name: {part: min(timed[(name, part)].seconds) for part in parts} for name, parts in impls.items()}


def rows(parts: Parts, once: dict, full_step: float) -> dict:
    """Per-step seconds for the ROWS, plus the full step and what the parts leave out."""
    per_step = {k: once[k] * parts[k][1] for k in once}
    r = {"embedding": per_step["embedding"],
         "bridge + head": per_step["embedding + bridge + head"] - per_step["embedding"],
         "target + loss": per_step["target + loss"], "optimiser": per_step["optimiser"]}
    for where in ("encoder", "decoder"):
        r[f"{where} attention projections"] = per_step[f"{where} qkv"] + per_step[f"{where} proj"]
        r[f"{where} attention core"] = per_step[f"{where} attention"] - r[f"{where} attention projections"]
        r[f"{where} MLP"] = per_step[f"{where} MLP"]
        r[f"{where} norms"] = per_step[f"{where} norms"]
    r = {k: r[k] for k in ROWS}
    r["sum of the parts"] = sum(r.values())
    r["full step (measured)"] = full_step
    r["not in the parts"] = full_step - r["sum of the parts"]
    return r


def run(args):
    device = torch.device(args.device)
    env = environment(device)
    torch.manual_seed(0)
    model = build_pretrain_model(args.model, img_size=args.size, num_frames=args.frames).to(device)
    autocast = autocast_for(device, args.precision)
    video = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device)
    vis, dec = DualMasking(model.grid, args.mask_ratio, args.decoder_mask_ratio, device=device)(
        args.batch, torch.Generator(device=device).manual_seed(0))
    impls, steps = {}, {}
    code = load_official_code(args.official_repo) if args.official_repo else None
    if code is not None:
        official = build_official_model(code, args.model, img_size=args.size, num_frames=args.frames)
        official.load_state_dict(model.state_dict(), strict=True)
        official.to(device).train()
        enc_map, dec_map = OfficialMasks(code, model.grid, args.mask_ratio, args.decoder_mask_ratio)(args.batch)
        patch = model_spec(args.model).patch_size
        impls["official"] = official_parts(code, official, video, enc_map, dec_map, patch, autocast)
        opt_official = official_adamw(official)
        add_optimiser(impls["official"], official, opt_official)

        def step_official():
            with autocast():
                loss = code.forward_loss(official, (video, enc_map, dec_map), device, patch)[0]
            loss.backward()
            opt_official.step()
            opt_official.zero_grad()
        steps["official"] = step_official
    impls["ours"] = our_parts(model, video, vis, dec, autocast)
    opt = build_adamw(model, LR, WEIGHT_DECAY, betas=BETAS)
    add_optimiser(impls["ours"], model, opt)

    def step_ours():
        with autocast():
            loss = model.loss(model(video, vis, dec), video, vis, dec)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    steps["ours"] = step_ours
    for name, fn in steps.items():
        impls[name].add("full step", fn)
    header = {**env, "baseline": "official-code" if code else None,
              "official_code": {"repo": str(code.repo), "commit": code.commit, "timm": code.timm} if code else None,
              "model": args.model, "clip": f"{args.frames}x{args.size}x{args.size}", "batch": args.batch,
              "precision": args.precision, "fused_ops": ops.active_backend(), "reps": args.reps,
              "num_visible": vis.shape[1], "num_decoded": dec.shape[1]}
    stem = result_stem(args.out, "step-breakdown", env["machine"], *step_name_parts(args))
    with Records(stem, "step-breakdown", header) as records:
        # the parts of both implementations are interleaved: they complete together
        once = time_parts(impls, [model] + ([official] if code else []), args.reps, device)
        for name in impls:
            records.add({"name": name, "seconds_per_step": rows(
                impls[name], {k: v for k, v in once[name].items() if k != "full step"}, once[name]["full step"])})
    return records.path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_flags(p)
    add_official_repo_flag(p)
    p.add_argument("--reps", type=int, default=7)
    return harness.main(p, run, argv)


if __name__ == "__main__":
    sys.exit(main())
