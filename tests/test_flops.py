"""The FLOP model (vmae2_fast/flops.py) against two independent truths: the paper's fvcore counts
(Tables 1 and 2) and what torch's FlopCounterMode measures when the real model runs."""
from contextlib import contextmanager

import pytest
import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from vmae2_fast import ops
from vmae2_fast.flops import (PARTS, forward_macs, macs_breakdown, main, mfu, peak_flops,
                              train_flops)
from vmae2_fast.masking import DualMasking
from vmae2_fast.models import (MODEL_SPECS, PretrainVisionTransformer, VisionTransformer,
                               build_classifier, build_pretrain_model)

# Paper Table 1 (ViT-B, SSv2: decoder ratio -> G MACs) and Table 2 (ViT-g), counted with fvcore.
PAPER = [("vit_b", 0.0, 35.48), ("vit_b", 0.5, 25.87), ("vit_b", 0.25, 31.63), ("vit_b", 0.75, 21.06),
         ("vit_g", 0.0, 263.93), ("vit_g", 0.5, 241.61)]


@pytest.mark.parametrize("model,decoder_ratio,paper_g", PAPER)
def test_fvcore_count_reproduces_the_paper(model, decoder_ratio, paper_g):
    got = forward_macs(model, 0.9, decoder_ratio, count="fvcore") / 1e9
    # The brief asks for 4 %; the count is within 0.1 % of every entry (ViT-g +0.07 %).
    assert got == pytest.approx(paper_g, rel=1e-3)
    # Our engine embeds only the visible cubes: the official Conv3d over every cube is the bulk of
    # the difference, so the engine count is lower by 1 % (ViT-g) to 8 % (ViT-B, 0.75).
    assert forward_macs(model, 0.9, decoder_ratio) < got * 1e9


def _flop_counter():
    # Imported late: torch.utils.flop_counter imports triton, and the Triton kernel tests must set
    # TRITON_INTERPRET=1 (when they are collected) before triton is first imported.
    from torch.utils.flop_counter import FlopCounterMode
    return FlopCounterMode(display=False)


@contextmanager
def _measured():
    """FlopCounterMode around plain-PyTorch ops: the reference fused ops (F.linear) and the math
    attention (two bmm, which the counter sees; the CPU flash kernel is not in its table)."""
    previous = ops.active_backend()
    ops.use_backend("reference")
    try:
        with sdpa_kernel(SDPBackend.MATH), _flop_counter() as counter:
            yield counter
    finally:
        ops.use_backend(previous)


def _custom_pretrain(**kw):
    # A 2-block shape unlike the zoo: patch 8, head dim 16, MLP ratio 48/11 (truncated widths).
    return PretrainVisionTransformer(img_size=64, patch_size=8, num_frames=8, encoder_embed_dim=48,
                                     encoder_depth=2, encoder_num_heads=3, decoder_embed_dim=24,
                                     decoder_depth=2, decoder_num_heads=2, mlp_ratio=48 / 11, **kw)


# name: (model, (encoder mask ratio, decoder mask ratio)); masks are drawn by DualMasking, not the model
PRETRAIN_CASES = {
    "micro-dual": lambda: (build_pretrain_model("vit_micro", img_size=64, num_frames=8), (0.9, 0.5)),
    "micro-v1": lambda: (build_pretrain_model("vit_micro", img_size=64, num_frames=8), (0.9, 0.0)),
    "custom-0.75-0.25": lambda: (_custom_pretrain(), (0.75, 0.25)),
}


def _pretrain_step(model, ratios, batch=2, backward=False):
    torch.manual_seed(0)
    vis, dec = DualMasking(model.grid, *ratios)(batch)
    video = torch.randn(batch, 3, 8, 64, 64)
    with _measured() as counter:
        pred = model(video, vis, dec)
        if backward:
            model.loss(pred, video, vis, dec).backward()
    return counter.get_total_flops() / batch


@pytest.mark.parametrize("case", list(PRETRAIN_CASES))
def test_forward_count_equals_flop_counter_pretrain(case):
    model, ratios = PRETRAIN_CASES[case]()
    # Exact: 2 FLOPs per MAC for every matmul; the counter skips norms and elementwise ops too.
    assert _pretrain_step(model, ratios) == 2 * forward_macs(model, *ratios)


@pytest.mark.parametrize("name,img_size,patch", [("vit_micro", 64, None), ("custom", 48, 8)])
def test_forward_count_equals_flop_counter_classifier(name, img_size, patch):
    if name == "custom":
        model = VisionTransformer(img_size=img_size, patch_size=patch, num_frames=4, num_classes=5,
                                  embed_dim=40, depth=2, num_heads=2, mlp_ratio=48 / 11)
    else:
        model = build_classifier(name, 7, img_size=img_size, num_frames=8)
    video = torch.randn(2, 3, model.patch_embed.num_frames, img_size, img_size)
    with _measured() as counter:
        model(video)
    assert counter.get_total_flops() / 2 == 2 * forward_macs(model)   # Conv3d embedding included


def test_training_flops_against_forward_and_backward():
    """Measured forward + backward = 6 x MACs - 2 x embedding MACs (the video needs no gradient,
    so the embedding's backward is one matmul); with math attention there is no other residual."""
    model, ratios = PRETRAIN_CASES["micro-dual"]()
    measured = _pretrain_step(model, ratios, backward=True)
    train = train_flops(model)
    assert train.hardware == train.model
    assert measured == train.model - 2 * macs_breakdown(model)["patch_embed"]


class _Checkpointed(nn.Module):
    def __init__(self, block, reentrant):
        super().__init__()
        self.block, self.reentrant = block, reentrant

    def forward(self, x):
        return checkpoint(self.block, x, use_reentrant=self.reentrant)


@pytest.mark.parametrize("every,reentrant", [("full", False), (2, False), (3, False), ("full", True)])
def test_recompute_equals_flop_counter(every, reentrant):
    """Checkpointing blocks k, 2k, ... of each stack costs what the counter measures in addition
    (the non-reentrant checkpoint, the engine's, does not re-run a block's last matmul)."""
    model, ratios = PRETRAIN_CASES["micro-dual"]()      # encoder 2 blocks, decoder 4
    baseline = _pretrain_step(model, ratios, backward=True)
    k = 1 if every == "full" else every
    for stack in (model.encoder.blocks, model.decoder.blocks):
        for i in range(k - 1, len(stack), k):
            stack[i] = _Checkpointed(stack[i], reentrant)
    extra = _pretrain_step(model, ratios, backward=True) - baseline
    train = train_flops(PRETRAIN_CASES["micro-dual"]()[0], checkpointing=every, reentrant=reentrant)
    assert extra > 0 and train.hardware - train.model == extra


def test_engine_checkpointing_flag_recomputes_as_counted():
    model, ratios = PRETRAIN_CASES["micro-dual"]()
    baseline = _pretrain_step(model, ratios, backward=True)
    model.activation_checkpointing = True          # what --activation-checkpointing sets
    train = train_flops(model, checkpointing="full")
    assert _pretrain_step(model, ratios, backward=True) - baseline == train.hardware - train.model


def test_breakdown_parts_and_built_models_agree_with_names():
    for name in MODEL_SPECS:
        parts = macs_breakdown(name)
        assert set(parts) == set(PARTS) and parts["norm"] == 0
        assert sum(parts.values()) == forward_macs(name)
        with torch.device("meta"):        # shapes only, no memory
            built, clf = build_pretrain_model(name), build_classifier(name, 400)
        assert forward_macs(built) == forward_macs(name)
        assert forward_macs(clf) == forward_macs(name, num_classes=400)
    assert forward_macs("pretrain_videomae_giant_patch14_224") == forward_macs("vit_g")
    assert forward_macs(MODEL_SPECS["vit_b"], 0.9, 0.5, 8, 128) == forward_macs("vit_b", frames=8, img_size=128)


def test_bad_inputs_are_clear_errors():
    for kwargs, words in [(dict(model="vit_x"), "unknown model"),
                          (dict(model="vit_b", decoder_mask_ratio=1.0), "decoder mask ratio"),
                          (dict(model="vit_b", decoder_mask_ratio=0.1), "1, 2 or 3"),
                          (dict(model="vit_b", encoder_mask_ratio=1.0), "encoder mask ratio"),
                          (dict(model="vit_b", img_size=112), "even token grid"),
                          (dict(model="vit_b", img_size=100), "multiple of the patch size"),
                          (dict(model="vit_b", count="paper"), "count must be")]:
        with pytest.raises(ValueError, match=words):
            forward_macs(**kwargs)
    with pytest.raises(ValueError, match="differs from the built model"):
        forward_macs(build_pretrain_model("vit_micro", img_size=64, num_frames=8), frames=16)
    with pytest.raises(ValueError, match="checkpointing must be"):
        train_flops("vit_b", checkpointing="some")


def test_peak_table_and_its_errors():
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA A100-PCIE-40GB", "tf32") == 156e12
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H200") == 989e12
    for name in ("Tesla V100-SXM2-16GB", "NVIDIA H100 NVL"):
        with pytest.raises(ValueError, match="--peak-tflops"):
            peak_flops(name)
    with pytest.raises(ValueError, match="dtype"):
        peak_flops("NVIDIA A100-SXM4-80GB", "int8")
    with pytest.raises(ValueError):
        mfu(0.0, 1e12, 312e12)


def test_paper_throughput_anchor():
    """paper.md: 1.35 M clips x 1200 views in 241 h on 64 A100 is 29.2 clips/s per GPU, about
    14 % MFU (18 % counting recompute), about 1.45 TFLOP per clip."""
    clips_per_s = 1.35e6 * 1200 / (64 * 241 * 3600)
    # The official code checkpoints every block with the reentrant checkpoint.
    train = train_flops("vit_g", checkpointing="full", reentrant=True, count="fvcore")
    assert train.model / 1e12 == pytest.approx(1.45, rel=0.01)
    peak = peak_flops("NVIDIA A100-SXM4-80GB")
    assert mfu(clips_per_s, train.model, peak) == pytest.approx(0.14, abs=0.005)
    assert mfu(clips_per_s, train.hardware, peak) == pytest.approx(0.18, abs=0.005)


def test_cli_prints_the_table_and_rejects_bad_input(capsys):
    assert main(["--model", "vit_g", "--checkpointing", "full", "--reentrant", "--count", "fvcore",
                 "--clips-per-s", "29.2", "--gpu", "A100"]) == 0
    out = capsys.readouterr().out
    assert "241.760 G" in out and "MFU 13.6 %" in out and "HFU 18.0 %" in out
    for argv in (["--model", "vit_q"], ["--model", "vit_b", "--decoder-mask-ratio", "2"],
                 ["--model", "vit_b", "--checkpointing", "-1"],
                 ["--model", "vit_b", "--clips-per-s", "10", "--gpu", "V100"]):
        assert main(argv) == 2
        assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.gpu
def test_flop_counter_sees_flash_attention_on_gpu():
    """On a GPU, SDPA runs a fused kernel that the counter prices with its own formula."""
    model = build_pretrain_model("vit_micro", img_size=64, num_frames=8).cuda()
    vis, dec = DualMasking(model.grid, 0.9, 0.5, device="cuda")(2)
    previous = ops.active_backend()
    ops.use_backend("reference")
    try:
        with torch.autocast("cuda", torch.bfloat16), _flop_counter() as counter:
            model(torch.randn(2, 3, 8, 64, 64, device="cuda"), vis, dec)
    finally:
        ops.use_backend(previous)
    assert counter.get_total_flops() == 2 * 2 * forward_macs(model)
