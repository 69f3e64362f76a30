"""The fused ops as torch.library custom ops: torch.library.opcheck on every op with every face
that runs here (the reference-as-a-face fallback also meets the official fixture, in
test_kernels_dispatch.py), and the whole pre-training step (masks, model, masked MSE, backward)
compiled with fullgraph=True into one graph that gives eager's loss and gradients."""
import pytest
import torch

import needs
from kernel_cases import CASES, enable_interpreter, make_inputs
from vmae2_fast import ops
from vmae2_fast.constants import IMAGENET_MEAN, IMAGENET_STD
from vmae2_fast.ops import cpp as cpp_ops

enable_interpreter()
MEAN, STD = list(IMAGENET_MEAN), list(IMAGENET_STD)


@pytest.fixture
def face(request, monkeypatch):
    """Selects a face for the custom ops' kernels; 'fallback' is 'auto' with no C++ ops built,
    where the kernels run the reference (its forward, and the closed-form backward)."""
    before = ops.active_backend()
    name = request.param
    if name == "cpp":
        needs.cpp_ops()          # no compiler: skip locally, fail on CI; a failed build: fail
    if name == "triton":
        needs.triton_kernels()
    if name == "fallback":
        monkeypatch.setattr(cpp_ops, "_module", None)
        monkeypatch.setattr(cpp_ops, "_error", "the C++ CPU ops could not be built (test)")
    ops.use_backend("auto" if name == "fallback" else name)
    yield name
    ops.use_backend(before)


def op_inputs(dtype=torch.float32, out_dtype=torch.float32):
    """Arguments of each forward and backward op on a case with patch 14, head-dim-88-like widths
    and batch 1 (CASES[1]); parameters require grad so opcheck also checks the autograd."""
    x = make_inputs(CASES[1])

    def leaf(t):
        return t.to(dtype).requires_grad_()

    def plain(t):
        return t.to(dtype)
    embed = (plain(x["video"]), leaf(x["weight"]), leaf(x["bias"]), leaf(x["pos_e"]), x["vis"], 2, out_dtype)
    dec = (leaf(x["z"]), leaf(x["proj"]), leaf(x["pos_d"]), x["vis"], x["dec"], leaf(x["token"]), out_dtype)
    mse = (leaf(x["pred"]), plain(x["video"]), x["dec"], x["p"], 2, True, 1e-6, MEAN, STD)
    n_vis, n_dec = x["vis"].shape[1], x["dec"].shape[1]
    g_embed = torch.randn(1, n_vis, x["weight"].shape[0], dtype=out_dtype)
    g_dec = torch.randn(1, n_vis + n_dec, x["proj"].shape[0], dtype=out_dtype)
    detached = lambda args: tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)  # noqa: E731
    v, w, b, p, vis, tub, od = detached(embed)
    z, pw, pd, vis2, decidx, tok, od2 = detached(dec)
    backward = {
        "visible_patch_embed_backward": (g_embed, v, w, p, vis, tub, od, b.dtype, True, False, True),
        "decoder_input_backward": (g_dec, z, pw, pd, vis2, decidx, tok, od2, True, True, False, True),
        "masked_mse_per_token_backward": (torch.randn(1, n_dec), *detached(mse)),
    }
    return {"visible_patch_embed": embed, "decoder_input": dec, "masked_mse_per_token": mse, **backward}


OPS = ["visible_patch_embed", "decoder_input", "masked_mse_per_token", "visible_patch_embed_backward",
       "decoder_input_backward", "masked_mse_per_token_backward"]


@pytest.mark.parametrize("face", ["cpp", "triton", "fallback"], indirect=True)
@pytest.mark.parametrize("op", OPS)
def test_opcheck(face, op):
    """Schema, fake (shapes and dtypes under FakeTensor and dynamic shapes), the autograd
    registration and AOT dispatch of each op agree with what its kernel does."""
    op_overload = getattr(torch.ops.vmae2_fast, op).default
    torch.library.opcheck(op_overload, op_inputs()[op])


@pytest.mark.parametrize("face", ["cpp", "fallback"], indirect=True)
def test_opcheck_with_bf16_outputs(face):
    """The output dtype is an argument (what autocast asked for), not read inside the kernel."""
    args = op_inputs(out_dtype=torch.bfloat16)
    for op in ("visible_patch_embed", "decoder_input"):
        torch.library.opcheck(getattr(torch.ops.vmae2_fast, op).default, args[op])
        out = getattr(torch.ops.vmae2_fast, op)(*args[op])
        assert out.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------ compile
def pretrain_step_case(device="cpu", checkpointing="2"):
    """vit_micro at 4 x 32^2 (2 encoder + 4 decoder blocks), masks from pre-drawn noise, and the
    step function: masks -> model -> masked MSE (the backward is the caller's)."""
    from vmae2_fast.masking import DualMasking
    from vmae2_fast.models import build_pretrain_model
    torch.manual_seed(0)
    model = build_pretrain_model("vit_micro", img_size=32, num_frames=4,
                                 activation_checkpointing=checkpointing).to(device)
    masking = DualMasking(model.grid, 0.75, 0.5, device=device)
    video = torch.randn(2, 3, 4, 32, 32, device=device)
    noise, choice = masking.draw(2, torch.Generator(device=device).manual_seed(0))

    def step(model, video, noise, choice):
        vis, dec = masking.from_noise(noise, choice)
        return model.loss(model(video, vis, dec), video, vis, dec)
    return model, step, (video, noise, choice)


def loss_and_grads(model, step, args, autocast_dtype=None):
    model.zero_grad(set_to_none=True)
    with torch.autocast(args[0].device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = step(model, *args)
    loss.backward()
    return loss.detach().float(), {n: p.grad.float().clone() for n, p in model.named_parameters()}


def assert_same(eager, compiled, tol):
    (l0, g0), (l1, g1) = eager, compiled
    assert abs(l0 - l1).item() <= tol * abs(l0).item()
    for name in g0:
        err = ((g0[name] - g1[name]).norm() / g0[name].norm().clamp_min(1e-30)).item()
        assert err <= tol, (name, err)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_pretrain_step_is_one_graph_with_eager_numbers(backend):
    """fullgraph=True: dynamo captures masks + model + masked MSE in one graph (any graph break
    raises), AOTAutograd traces its backward through the registered autograd of the custom ops;
    loss and every gradient equal eager's (fp32, 1e-5). aot_eager checks the tracing in seconds;
    inductor (the default backend) also generates the code (minutes on 2 cold cores)."""
    from torch._dynamo.testing import CompileCounterWithBackend
    ops.use_backend("auto")
    model, step, args = pretrain_step_case()
    eager = loss_and_grads(model, step, args)
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    assert_same(eager, loss_and_grads(model, compiled, args), 1e-5)
    assert counter.frame_count == 1
    graph_ops = {str(n.target) for g in counter.graphs for n in g.graph.nodes if n.op == "call_function"}
    assert {"vmae2_fast.visible_patch_embed.default", "vmae2_fast.decoder_input.default",
            "vmae2_fast.masked_mse_per_token.default"} <= graph_ops


@pytest.mark.gpu
@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_compiled_pretrain_step_on_a_gpu(autocast_dtype):
    """The same on CUDA with the Triton face inside the graph (inductor); bf16 autocast too."""
    ops.use_backend("auto")
    model, step, args = pretrain_step_case("cuda")
    eager = loss_and_grads(model, step, args, autocast_dtype)
    compiled = torch.compile(step, fullgraph=True)
    assert_same(eager, loss_and_grads(model, compiled, args, autocast_dtype),
                1e-5 if autocast_dtype is None else 3e-2)
