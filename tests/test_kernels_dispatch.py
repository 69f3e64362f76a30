"""ops.py dispatch, and the pre-training step with every available backend equal to the official
fixture (loss, predictions and every gradient, float64)."""
import logging

import pytest
import torch

import needs
from kernel_cases import CASES, enable_interpreter, make_inputs
from vmae2_fast import ops
from vmae2_fast.ops import cpp as cpp_ops, reference

enable_interpreter()


@pytest.fixture
def restore_backend():
    before = ops.active_backend()
    yield
    ops.use_backend(before)


def _backend_or_skip(name):
    """Skip (locally, package not installed) or fail (CI, or a broken install): see needs.py."""
    if name == "cpp":
        needs.cpp_ops()
    if name == "triton":
        needs.triton_kernels()


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton", "auto", "fallback"])
def test_pretrain_fixture_parity_with_every_backend(backend, restore_backend, monkeypatch):
    from test_parity import TOL, build_pretrain, rel
    _backend_or_skip(backend)
    if backend == "fallback":     # 'auto' without C++ ops: the custom ops' kernels run the reference
        monkeypatch.setattr(cpp_ops, "_module", None)
        monkeypatch.setattr(cpp_ops, "_error", "the C++ CPU ops could not be built (test)")
        backend = "auto"
    fx = torch.load("tests/fixtures/pretrain_parity.pt", weights_only=False)
    ops.use_backend(backend)
    model = build_pretrain(fx)
    loss, pred = model.forward_loss(fx["video"], fx["encoder_mask"], fx["decoder_mask"])
    assert abs(loss.item() - fx["loss"].item()) <= TOL * abs(fx["loss"].item())
    assert rel(pred, fx["output"]) < TOL
    loss.backward()
    for name, p in model.named_parameters():
        assert rel(p.grad, fx["grads"][name]) < TOL, (backend, name)


def test_auto_picks_cpp_for_cpu_tensors_and_logs_once(restore_backend, caplog):
    _backend_or_skip("cpp")
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


def test_reference_on_request(restore_backend):
    ops.use_backend("reference")
    x = make_inputs(CASES[0])
    a = ops.masked_mse(x["pred"], x["video"], x["vis"], x["dec"], 16, 2)
    b = reference.masked_mse(x["pred"], x["video"], x["vis"], x["dec"], 16, 2)
    assert torch.equal(a, b)


def test_unknown_backend_and_cpp_on_other_devices_are_errors(restore_backend):
    with pytest.raises(ValueError, match="unknown kernel backend"):
        ops.use_backend("cuda")
    _backend_or_skip("cpp")
    ops.use_backend("cpp")
    with pytest.raises(RuntimeError, match="CPU tensors only"):
        ops._impl(torch.device("meta"))


def test_auto_falls_back_to_the_reference_with_a_logged_reason(restore_backend, monkeypatch, caplog):
    monkeypatch.setattr(cpp_ops, "_module", None)
    monkeypatch.setattr(cpp_ops, "_error", "the C++ CPU ops could not be built or loaded (test)")
    ops.use_backend("auto")
    with caplog.at_level(logging.WARNING, logger="vmae2_fast.ops"):
        assert ops._impl(torch.device("cpu")) is reference
        assert ops._impl(torch.device("cpu")) is reference
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
