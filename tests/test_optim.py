import pytest
import torch
from torch import nn

from vmae2_fast.train.optim import build_adamw, param_groups, set_lr_and_wd


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)
        self.scale = nn.Parameter(torch.ones(1, dim))  # 2-D, excluded only by its name
        self.q_bias = nn.Parameter(torch.zeros(dim))


class Toy(nn.Module):
    def __init__(self, dim=4, depth=3):
        super().__init__()
        self.patch_embed = nn.Conv3d(3, dim, 2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))  # 3-D: only the skip list saves it
        self.pos_embed = nn.Parameter(torch.zeros(1, 8, dim))
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 5)
        self.frozen = nn.Parameter(torch.zeros(2, 2), requires_grad=False)

    def no_weight_decay(self):
        return {"pos_embed", "cls_token", "mask_token"}


class CompiledLike(nn.Module):
    """Mimics torch.compile's OptimizedModule: names get an ``_orig_mod.`` prefix."""

    def __init__(self, inner):
        super().__init__()
        self._orig_mod = inner


class DDPLike(nn.Module):
    """Mimics DDP: names get a ``module.`` prefix, no attribute forwarding."""

    def __init__(self, inner):
        super().__init__()
        self.module = inner


def membership(groups):
    out = {}
    for g in groups:
        for n in g["param_names"]:
            out[n] = (g["weight_decay"], g["lr_scale"], g["name"])
    return out


EXPECTED_NO_DECAY = {
    "patch_embed.bias", "cls_token", "mask_token", "pos_embed", "norm.weight", "norm.bias",
    "head.bias",
    *[f"blocks.{i}.{n}" for i in range(3)
      for n in ("norm.weight", "norm.bias", "fc.bias", "scale", "q_bias")],
}
EXPECTED_DECAY = {"patch_embed.weight", "head.weight", *[f"blocks.{i}.fc.weight" for i in range(3)]}


def check_plain_groups(groups):
    m = membership(groups)
    assert set(m) == EXPECTED_NO_DECAY | EXPECTED_DECAY  # frozen param left out
    assert {n for n, v in m.items() if v[0] == 0.0} == EXPECTED_NO_DECAY
    assert {n for n, v in m.items() if v[0] == 0.05} == EXPECTED_DECAY
    assert all(v[1] == 1.0 for v in m.values())
    assert sorted(g["name"] for g in groups) == ["decay", "no_decay"]


@pytest.mark.parametrize("wrap", [
    lambda m: m, CompiledLike, DDPLike,
    lambda m: DDPLike(CompiledLike(m)), lambda m: CompiledLike(DDPLike(m)),
])
def test_grouping_same_under_wrappers(wrap):
    model = wrap(Toy())
    check_plain_groups(param_groups(model, 0.05))


def test_grouping_real_torch_compile():
    # torch.compile wraps lazily (no compilation until the first call), so it is cheap.
    compiled = torch.compile(Toy())
    assert any(n.startswith("_orig_mod.") for n, _ in compiled.named_parameters())
    check_plain_groups(param_groups(compiled, 0.05))


def test_skip_list_without_no_weight_decay_method():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.mask_token = nn.Parameter(torch.zeros(1, 1, 4))
            self.w = nn.Parameter(torch.zeros(4, 4))

    m = membership(param_groups(CompiledLike(Plain()), 0.1))
    assert m["mask_token"][0] == 0.1
    m = membership(param_groups(CompiledLike(Plain()), 0.1, skip_list=("mask_token",)))
    assert m["mask_token"][0] == 0.0 and m["w"][0] == 0.1


def test_zero_weight_decay_still_builds_groups():
    groups = param_groups(Toy(), 0.0)
    assert groups and all("lr_scale" in g for g in groups)


def official_layer_id(name, num_layers):
    # Written independently from the reference description (section 6.2).
    if name in ("cls_token", "mask_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    return num_layers + 1


@pytest.mark.parametrize("wrap", [lambda m: m, CompiledLike, DDPLike])
def test_layer_decay_scales(wrap):
    depth, decay = 3, 0.75
    groups = param_groups(wrap(Toy(depth=depth)), 0.05, layer_decay=decay, num_layers=depth)
    m = membership(groups)
    for name, (wd, scale, group_name) in m.items():
        lid = official_layer_id(name, depth)
        assert scale == pytest.approx(decay ** (depth + 1 - lid)), name
        kind = "no_decay" if name in EXPECTED_NO_DECAY else "decay"
        assert group_name == f"layer_{lid}_{kind}"
        assert wd == (0.0 if kind == "no_decay" else 0.05)
    assert m["head.weight"][1] == 1.0
    assert m["pos_embed"][1] == pytest.approx(0.75 ** 4)
    assert m["blocks.0.fc.weight"][1] == pytest.approx(0.75 ** 3)


def test_layer_decay_requires_num_layers():
    with pytest.raises(ValueError):
        param_groups(Toy(), 0.05, layer_decay=0.75)


def test_build_adamw_and_set_lr_and_wd():
    opt = build_adamw(Toy(), lr=1e-3, weight_decay=0.05, layer_decay=0.5, num_layers=3)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(1e-3 * g["lr_scale"])
    set_lr_and_wd(opt, 2e-3, weight_decay=0.1)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(2e-3 * g["lr_scale"])
        assert g["weight_decay"] == (0.0 if g["name"].endswith("no_decay") else 0.1)
    # A schedule that passes through 0 does not lose the decay groups.
    set_lr_and_wd(opt, 1e-3, weight_decay=0.0)
    set_lr_and_wd(opt, 1e-3, weight_decay=0.2)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.2}
    # lr only: weight decay untouched
    set_lr_and_wd(opt, 5e-4)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.2}


def _set_grads(model, step):
    """A different, reproducible gradient for every parameter (keyed by its unwrapped name), so
    that optimiser state handed to the wrong parameter shows."""
    import zlib
    from vmae2_fast.train.optim import strip_wrapper_prefixes
    for name, p in model.named_parameters():
        if p.requires_grad:
            g = torch.Generator().manual_seed(zlib.crc32(strip_wrapper_prefixes(name).encode()) + step)
            p.grad = torch.randn(p.shape, generator=g)


@pytest.mark.parametrize("wrap", [CompiledLike, DDPLike], ids=["compiled", "ddp"])
def test_optimizer_state_moves_across_wrappers_and_training_continues_identically(wrap):
    """A checkpoint of a plain run resumed under torch.compile or DDP (names with a prefix): the
    loaded AdamW continues exactly as the original would, parameter by parameter."""
    import copy
    import io
    torch.manual_seed(0)
    kw = dict(lr=1e-2, weight_decay=0.05, layer_decay=0.75, num_layers=3)
    model = Toy()
    opt = build_adamw(model, **kw)
    for step in (1, 2):
        _set_grads(model, step)
        opt.step()
    twin = copy.deepcopy(model)
    opt2 = build_adamw(wrap(twin), **kw)
    buf = io.BytesIO()               # through bytes, as a checkpoint: no tensor shared with `opt`
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    mine, theirs = dict(model.named_parameters()), dict(twin.named_parameters())
    for name, p in mine.items():         # each parameter got its own moments back
        if p.requires_grad:
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(opt.state[p][key], opt2.state[theirs[name]][key]), (name, key)
    for m, o in ((model, opt), (twin, opt2)):
        _set_grads(m, 3)
        o.step()
    for name, p in mine.items():
        assert torch.equal(p, theirs[name]), name
