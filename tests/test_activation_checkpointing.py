"""Activation checkpointing by policy: `none`, `full` or every K-th block (the blocks K, 2K, ... of
each stack recompute their forward pass in the backward pass), numerically a no-op, on the
command line of every stage, and still accepting the booleans of older configs and presets."""
import pytest
import torch

from vmae2_fast.masking import DualMasking
from vmae2_fast.models import build_classifier, build_pretrain_model
from vmae2_fast.models.vit import checkpoint_interval, checkpoint_policy


@pytest.mark.parametrize("given, k, name", [
    ("none", 0, "none"), ("full", 1, "full"), (False, 0, "none"), (True, 1, "full"), (None, 0, "none"),
    ("2", 2, "2"), (3, 3, "3"), ("1", 1, "full"), (0, 0, "none"), ("true", 1, "full"), ("False", 0, "none"),
])
def test_policies_and_their_names(given, k, name):
    assert checkpoint_interval(given) == k and checkpoint_policy(given) == name


@pytest.mark.parametrize("bad", ["every", "-1", -2, "2.5"])
def test_a_bad_policy_names_the_flag(bad):
    with pytest.raises(ValueError, match="--activation-checkpointing must be none, full or K"):
        checkpoint_interval(bad)
    with pytest.raises(ValueError, match="--activation-checkpointing"):
        build_pretrain_model("vit_micro", img_size=32, num_frames=4, activation_checkpointing=bad)


def forward_calls(model, policy):
    """How many times each block of each stack ran its forward in one forward + backward pass."""
    model.activation_checkpointing = policy
    calls = {}
    hooks = []
    for stack in ("encoder", "decoder"):
        for i, blk in enumerate(getattr(model, stack).blocks):
            calls[(stack, i)] = 0
            hooks.append(blk.register_forward_pre_hook(
                lambda *_, key=(stack, i): calls.__setitem__(key, calls[key] + 1)))
    video = torch.randn(2, 3, 4, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    vis, dec = DualMasking(model.grid, 0.75, 0.5)(2, torch.Generator().manual_seed(0))
    model.zero_grad()
    loss, _ = model.forward_loss(video, vis, dec)
    loss.backward()
    for h in hooks:
        h.remove()
    return calls, loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_every_kth_block_is_recomputed_and_nothing_changes():
    torch.manual_seed(0)
    model = build_pretrain_model("vit_micro", img_size=32, num_frames=4).double()  # 2 + 4 blocks
    none, loss0, grads0 = forward_calls(model, "none")
    assert set(none.values()) == {1}
    for policy, recomputed in [("full", {0, 1, 2, 3}), ("2", {1, 3}), ("3", {2}), (True, {0, 1, 2, 3})]:
        calls, loss, grads = forward_calls(model, policy)
        for (stack, i), n in calls.items():
            expected = 2 if i in recomputed and (stack == "decoder" or i < 2) else 1
            assert n == expected, (policy, stack, i, n)
        assert torch.equal(loss, loss0)
        for a, b in zip(grads, grads0):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-14), policy


def test_no_recompute_without_autograd():
    model = build_classifier("vit_micro", 3, img_size=32, num_frames=4, activation_checkpointing="full")
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda *_: seen.append(1))
    with torch.no_grad():
        model(torch.randn(1, 3, 4, 32, 32))
    assert seen == [1]


@pytest.mark.parametrize("argv, expected", [
    ([], "auto"), (["--activation-checkpointing"], "full"), (["--activation-checkpointing", "full"], "full"),
    (["--activation-checkpointing", "4"], "4"), (["--activation-checkpointing", "true"], "full"),
    (["--no-activation-checkpointing"], "none"), (["--activation-checkpointing", "AUTO"], "auto"),
    # the official ViT-g script checkpoints every block; its preset leaves the choice to auto
    (["--model", "vit_g"], "auto"), (["--model", "vit_g", "--activation-checkpointing", "2"], "2"),
])
def test_the_flag_of_every_stage(argv, expected):
    from vmae2_fast.config import FinetuneConfig, PretrainConfig
    from vmae2_fast.config.flags import parse_config
    from vmae2_fast.config.presets import PRESETS
    cfg = parse_config(PretrainConfig, argv, prog="t", presets=PRESETS["pretrain"])
    assert cfg.activation_checkpointing == expected
    if "--model" not in argv:
        assert parse_config(FinetuneConfig, argv, prog="t").activation_checkpointing == expected
    with pytest.raises(ValueError, match="--activation-checkpointing"):
        parse_config(PretrainConfig, ["--activation-checkpointing", "every"], prog="t")
