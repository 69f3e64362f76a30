"""The choice of backend for the fused ops (ops/backends.py), the pre-training step on every backend
equal to the official fixture, and the whole step compiled into one graph with eager's numbers."""
import logging
import os
import subprocess
import sys

import pytest
import torch

import needs
from op_cases import CASES, FUSED, enable_interpreter, make_inputs, use
from vmae2_fast import ops
from vmae2_fast.ops import backends, cpp

enable_interpreter()


@pytest.fixture
def restore_backend():
    before = ops.active_backend()
    yield
    ops.use_backend(before)


@pytest.mark.parametrize("backend", ["reference", "auto"] + FUSED)
def test_pretrain_fixture_parity_with_every_backend(backend, restore_backend, monkeypatch):
    """Loss, predictions and every parameter gradient of the official code (float64 fixture)."""
    from test_parity import TOL, build_pretrain, rel
    fx = torch.load("tests/fixtures/pretrain_parity.pt", weights_only=False)
    with use(backend, monkeypatch):
        model = build_pretrain(fx)
        loss, pred = model.forward_loss(fx["video"], fx["encoder_mask"], fx["decoder_mask"])
        loss.backward()
    assert abs(loss.item() - fx["loss"].item()) <= TOL * abs(fx["loss"].item())
    assert rel(pred, fx["output"]) < TOL
    for name, p in model.named_parameters():
        assert rel(p.grad, fx["grads"][name]) < TOL, (backend, name)


def test_auto_picks_cpp_for_cpu_tensors_and_logs_once(restore_backend, caplog):
    needs.cpp_ops()
    ops.use_backend("reference")
    ops.use_backend("auto")
    x = make_inputs(CASES[0])
    caplog.clear()              # (selecting 'reference' logs that choice)
    with caplog.at_level(logging.INFO, logger="vmae2_fast.ops"):
        for _ in range(3):
            out = ops.visible_patch_embed(x["video"], x["weight"].requires_grad_(), x["bias"], x["pos_e"], x["vis"], 2)
    assert out.grad_fn is not None and "visible_patch_embed" in type(out.grad_fn).__name__
    msgs = [r.getMessage() for r in caplog.records if "fused ops" in r.getMessage()]
    assert msgs == ["fused ops: C++ CPU ops for CPU tensors (auto)"]


def test_reference_backend_is_plain_pytorch(restore_backend):
    """Under 'reference' no registered op runs: autograd sees the reference's own operations."""
    ops.use_backend("reference")
    x = make_inputs(CASES[0])
    pred = x["pred"].requires_grad_()
    loss = ops.masked_mse(pred, x["video"], x["vis"], x["dec"], 16, 2)
    seen, stack = set(), [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            stack.extend(f for f, _ in fn.next_functions)
    names = {type(fn).__name__ for fn in seen}
    assert not any("vmae2_fast" in n for n in names) and "PowBackward0" in names, names


def test_unknown_backend_and_cpp_on_other_devices_are_errors(restore_backend):
    with pytest.raises(ValueError, match="unknown kernel backend"):
        ops.use_backend("cuda")
    needs.cpp_ops()
    ops.use_backend("cpp")
    with pytest.raises(RuntimeError, match="CPU tensors only"):
        backends.resolve(torch.device("meta"))


def test_auto_falls_back_to_the_reference_with_a_logged_reason(restore_backend, monkeypatch, caplog):
    monkeypatch.setattr(cpp, "_module", None)
    monkeypatch.setattr(cpp, "_error", "the C++ CPU ops could not be built or loaded (test)")
    ops.use_backend("auto")
    with caplog.at_level(logging.WARNING, logger="vmae2_fast.ops"):
        assert backends.resolve(torch.device("cpu")) == "reference"
        assert backends.resolve(torch.device("cpu")) == "reference"
    warned = [r.getMessage() for r in caplog.records if "reference for CPU tensors" in r.getMessage()]
    assert len(warned) == 1 and "could not be built" in warned[0]
    with pytest.raises(RuntimeError, match="could not be built"):
        ops.use_backend("cpp")


def test_config_has_a_kernels_field():
    from vmae2_fast.config import PretrainConfig
    cfg = PretrainConfig()
    assert cfg.kernels == "auto"
    cfg.kernels = "fast"
    with pytest.raises(ValueError, match="--kernels"):
        cfg.check()


_REFUSAL = """
import torch
from vmae2_fast import ops
from vmae2_fast.ops import backends
assert not backends.triton_interpreted(), "TRITON_INTERPRET leaked into the child"
video = torch.randn(1, 3, 4, 32, 32)
vis = torch.arange(4).view(1, 4)
try:
    with ops.backend("triton"):
        ops.visible_patch_embed(video, torch.randn(8, 3, 2, 16, 16), torch.randn(8), torch.randn(1, 8, 8), vis, 2)
except RuntimeError as exc:
    print("refused:", exc)
else:
    print("accepted")
"""


def test_triton_refuses_plain_cpu_tensors_without_the_interpreter():
    """Without TRITON_INTERPRET the kernels must refuse CPU tensors with a message that says how to
    run them, not crash inside triton. This process has the interpreter on (conftest.py), and
    triton fixes that at import, so the check runs in a fresh interpreter without it."""
    needs.triton_kernels()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", _REFUSAL], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "refused:" in res.stdout and "CUDA tensors" in res.stdout, res.stdout
    assert "TRITON_INTERPRET=1" in res.stdout       # the message names the way out


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


@pytest.mark.parametrize("compiler", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_pretrain_step_is_one_graph_with_eager_numbers(compiler, restore_backend):
    """fullgraph=True: dynamo captures masks + model + masked MSE in one graph (any graph break
    raises), AOTAutograd traces its backward through the registered autograd of the custom ops;
    loss and every gradient equal eager's (fp32, 1e-5). aot_eager checks the tracing in seconds;
    inductor (the default compiler) also generates the code (minutes on 2 cold cores)."""
    from torch._dynamo.testing import CompileCounterWithBackend
    ops.use_backend("auto")
    model, step, args = pretrain_step_case()
    eager = loss_and_grads(model, step, args)
    counter = CompileCounterWithBackend(compiler)
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    assert_same(eager, loss_and_grads(model, compiled, args), 1e-5)
    assert counter.frame_count == 1
    graph_ops = {str(n.target) for g in counter.graphs for n in g.graph.nodes if n.op == "call_function"}
    assert {"vmae2_fast.visible_patch_embed.default", "vmae2_fast.decoder_input.default",
            "vmae2_fast.masked_mse_per_token.default"} <= graph_ops


@pytest.mark.gpu
@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_compiled_pretrain_step_on_a_gpu(autocast_dtype, restore_backend):
    """The same on CUDA with the Triton kernels inside the graph (inductor); bf16 autocast too."""
    ops.use_backend("auto")
    model, step, args = pretrain_step_case("cuda")
    eager = loss_and_grads(model, step, args, autocast_dtype)
    compiled = torch.compile(step, fullgraph=True)
    assert_same(eager, loss_and_grads(model, compiled, args, autocast_dtype),
                1e-5 if autocast_dtype is None else 3e-2)
