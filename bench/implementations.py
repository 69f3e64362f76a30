"""The pre-training step of each implementation bench/throughput.py times, one function each.

Every implementation is an `Impl`: its row name, what it computes (for the FLOP count) and a
`build()` that allocates its model (from the same initial weights), optimiser and masks on the
device and returns its step function (forward, loss, backward, optimiser update). Building is
deferred so that a run can hold one implementation at a time (a ViT-g and its AdamW state take
16 GB each) or all of them at once (interleaved timing on a noisy CPU).

- `baseline_impls`: the baseline rows. `re-statement`: our re-statement of the official
  computation, `vmae2_fast.testing.baseline` (same operations, dtypes and order); with
  `--official-repo`, also `official`: the user's checkout of the official code as it runs
  (`official_code.py`);
- `fast_impls`: vmae2_fast as a run trains (masks drawn on the device, the fused ops, fused
  AdamW, the model wrapped by `train.parallelize`), one row per combination of `--attention`,
  `--compile`, `--activation-checkpointing` and `--parallelism`;
- `hf_impl`: transformers' `VideoMAEForPreTraining` (an outside peer): encoder masking only, so
  its decoder runs on every token and predicts every masked one (VideoMAE V1), which its FLOP
  count says.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from official_code import OfficialMasks, build_official_model
from step_common import BETAS, LR, WEIGHT_DECAY, official_adamw

from vmae2_fast.errors import MissingPackageError
from vmae2_fast.masking import DualMasking
from vmae2_fast.models import build_pretrain_model
from vmae2_fast.models.zoo import model_spec
from vmae2_fast.testing import baseline

__all__ = ["Impl", "baseline_meta", "baseline_impls", "fast_impls", "hf_impl", "fast_settings", "row_names", "grid_of"]


@dataclass
class Impl:
    name: str                          # the report's row
    kind: str                          # official | re-statement | fast | hf
    build: Callable[[], Callable[[], None]]
    settings: dict = field(default_factory=dict)
    # what it computes, as vmae2_fast.flops.train_flops counts it: the decoder's mask ratio, the
    # count of its own arithmetic (`fvcore`: the embedding runs over every cube) and its recompute
    flops: dict = field(default_factory=dict)


def _step_masks(args, grid, n: int):
    """Official-style host masks for `n` steps: (B, N) bool maps, True = masked."""
    rng = np.random.default_rng(0)
    return [baseline.numpy_masks(args.batch, grid, args.mask_ratio, args.decoder_mask_ratio, rng) for _ in range(n)]


def _our_model(args, init_state, device, **kw):
    with torch.device(device):
        model = build_pretrain_model(args.model, img_size=args.size, num_frames=args.frames, **kw)
    model.load_state_dict(init_state, strict=True)
    return model.to(device).train()


def baseline_meta(code) -> dict:
    """What a report says about its baseline; `code`: the loaded official checkout, or None."""
    if code is None:
        return {"baseline": "re-statement", "official_code": None}
    return {"baseline": "official-code",
            "official_code": {"repo": str(code.repo), "commit": code.commit, "timm": code.timm}}


def baseline_impls(args, code, init_state, video, device, autocast, n_steps: int) -> list[Impl]:
    """The baseline rows: `re-statement`, and `official` when `code` (the user's checkout, loaded
    by official_code.load_official_code) is given."""
    spec = model_spec(args.model)
    with_cp = args.official_checkpointing == "full"
    counted = dict(decoder_mask_ratio=args.decoder_mask_ratio, count="fvcore",
                   checkpointing=args.official_checkpointing, reentrant=True)

    def build_restatement():
        model = _our_model(args, init_state, device)
        cfg = dict(patch_size=spec.patch_size, tubelet_size=2, encoder_depth=spec.depth,
                   encoder_num_heads=spec.num_heads, decoder_depth=4, decoder_num_heads=spec.decoder_num_heads)
        params, tables, opt = dict(model.named_parameters()), {}, official_adamw(model)
        masks = iter(_step_masks(args, model.grid, n_steps))

        def step():
            enc, dec = next(masks)
            with autocast():
                loss, _, _ = baseline.pretrain_forward_loss(params, cfg, video, enc, dec, tables)
            loss.backward()
            opt.step()
            opt.zero_grad()
        return step

    # the re-statement is functional: it has no --with_checkpoint to honour --official-checkpointing
    restatement = Impl("re-statement", "re-statement", build_restatement,
                       {"checkpointing": "none" if not with_cp else "none (the re-statement cannot checkpoint: "
                                                                    "give --official-repo)"},
                       {**counted, "checkpointing": "none"})
    if code is None:
        return [restatement]

    def build_official():
        official = build_official_model(code, args.model, img_size=args.size, num_frames=args.frames,
                                        with_cp=with_cp)
        official.load_state_dict(init_state, strict=True)  # same weights; the key names are official
        official.to(device).train()
        opt = official_adamw(official)
        gen = OfficialMasks(code, grid_of(args), args.mask_ratio, args.decoder_mask_ratio)
        masks = iter([gen(args.batch) for _ in range(n_steps)])

        def step():
            enc, dec = next(masks)
            with autocast():
                loss, _, _ = code.forward_loss(official, (video, enc, dec), device, spec.patch_size)
            loss.backward()
            opt.step()
            opt.zero_grad()
        return step

    official = Impl("official", "official", build_official, {"checkpointing": args.official_checkpointing}, counted)
    return [official, restatement]


def grid_of(args):
    """The clip's cube grid (t, h, w) for the model's patch size (tubelets of 2 frames)."""
    p = model_spec(args.model).patch_size
    return (args.frames // 2, args.size // p, args.size // p)


def fast_settings(args) -> list[dict]:
    """One dict per combination of the fast flags, in the order they were given."""
    return [dict(attention=a, compile=c, activation_checkpointing=k, parallelism=p, fp8=f)
            for c, k, a, p, f in itertools.product(args.compile, args.fast_checkpointing, args.attention,
                                                   args.parallelism, getattr(args, "fp8", [False]))]


def row_names(args) -> set:
    """The rows a run of these flags times (every fast combination is its own row)."""
    names = set()
    if "official" in args.impl:     # the baseline rows: the official code only from a checkout
        names = {"official", "re-statement"} if args.official_repo else {"re-statement"}
    if "fast" in args.impl:
        combos = fast_settings(args)
        names |= {_fast_name(s, len(combos) > 1) for s in combos}
    return names | ({"hf"} if "hf" in args.impl else set())


def _fast_name(s: dict, several: bool) -> str:
    if not several:
        return "fast"
    parts = ["compile" if s["compile"] else "eager", f"ac={s['activation_checkpointing']}"]
    if s["attention"] != "auto":
        parts.append(s["attention"])
    if s["parallelism"] != "none":
        parts.append(s["parallelism"])
    if s.get("fp8"):
        parts.append("fp8")
    return "fast " + " ".join(parts)


class _OneProcess:
    """`parallelize` wraps only under several processes; the bench wraps in a process group of
    one, so that a row shows what DDP's or FSDP2's own machinery costs on one device."""
    enabled, rank, world_size, is_main = True, 0, 1, True


def _process_group_of_one(device) -> None:
    import torch.distributed as tdist
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=tdist.HashStore(),
                                 rank=0, world_size=1)


def fast_impls(args, init_state, video, device, autocast) -> list[Impl]:
    from vmae2_fast.models.attention import set_attention_backend
    from vmae2_fast.train.distributed import DistInfo
    from vmae2_fast.train.optim import build_adamw
    from vmae2_fast.train.parallelize import parallelize
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision, torch.float32)
    combos = fast_settings(args)
    impls = []
    for s in combos:
        def build(s=s):
            model = _our_model(args, init_state, device, activation_checkpointing=s["activation_checkpointing"])
            set_attention_backend(model, s["attention"], device, amp)
            dist = DistInfo()
            if s["parallelism"] != "none":
                _process_group_of_one(device)
                dist = _OneProcess()
            wrapped = parallelize(model, device, dist, compile=s["compile"],
                                  parallelism=s["parallelism"] if s["parallelism"] != "none" else "ddp",
                                  fp8=s["fp8"])
            opt = build_adamw(model, LR, WEIGHT_DECAY, betas=BETAS)    # after the wrapping (FSDP)
            masking = DualMasking(model.grid, args.mask_ratio, args.decoder_mask_ratio, device=device)
            gen = torch.Generator(device=device).manual_seed(0)

            def step():
                vis, dec = masking(args.batch, gen)
                with autocast():
                    pred = wrapped(video, vis, dec)
                    loss = model.loss(pred, video, vis, dec)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            return step
        counted = dict(decoder_mask_ratio=args.decoder_mask_ratio, count="engine",
                       checkpointing=s["activation_checkpointing"], reentrant=False)
        impls.append(Impl(_fast_name(s, len(combos) > 1), "fast", build, s, counted))
    return impls


def hf_config(args):
    """transformers' VideoMAEConfig of our zoo model `args.model` (pre-training, 4 decoder blocks)."""
    from vmae2_fast.integrations.hf_export import import_transformers
    s = model_spec(args.model)
    return import_transformers().VideoMAEConfig(
        image_size=args.size, patch_size=s.patch_size, num_channels=3, num_frames=args.frames, tubelet_size=2,
        hidden_size=s.embed_dim, num_hidden_layers=s.depth, num_attention_heads=s.num_heads,
        intermediate_size=int(s.embed_dim * s.mlp_ratio), qkv_bias=True, layer_norm_eps=1e-6,
        decoder_hidden_size=s.decoder_embed_dim, decoder_num_hidden_layers=4,
        decoder_num_attention_heads=s.decoder_num_heads, decoder_intermediate_size=int(s.decoder_embed_dim * s.mlp_ratio),
        norm_pix_loss=True, use_mean_pooling=False)


def hf_impl(args, video, device, autocast, n_steps: int) -> Impl:
    """transformers' VideoMAEForPreTraining with its own initialisation and its default attention
    (SDPA), tube masks of the same ratio, torch's AdamW as a user would write it."""
    try:
        config = hf_config(args)
    except ImportError as exc:
        raise MissingPackageError(f"--impl hf needs transformers ({exc}): pip install 'transformers>=4.46,<6'") from None

    def build():
        import transformers
        model = transformers.VideoMAEForPreTraining(config).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
        pixels = video.permute(0, 2, 1, 3, 4).contiguous()           # HF takes (B, T, C, H, W)
        masks = iter([enc.to(device) for enc, _ in _step_masks(args, grid_of(args), n_steps)])

        def step():
            with autocast():
                loss = model(pixel_values=pixels, bool_masked_pos=next(masks)).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step
    return Impl("hf", "hf", build, {"attention": "transformers default"},
                dict(decoder_mask_ratio=0.0, count="fvcore", checkpointing="none", reentrant=False))
