"""The attention backends: every backend that runs on this machine against the official explicit
computation (values and gradients), `--attention auto`'s choice and its one log line, named
backends refused with the reason where they cannot run, and the flag on every stage's config."""
import logging

import pytest
import torch

from vmae2_fast.models import build_classifier
from vmae2_fast.models.attention import (BACKENDS, Attention, AttentionBackendError, attention,
                                         set_attention_backend)
from vmae2_fast.models.attention_backends import why_not

CONCRETE = [b for b in BACKENDS if b != "auto"]
# Head dims of the zoo: 64 (S/B/L, every decoder), 80 (ViT-H), 88 (ViT-g), and vit_micro's 32.
HEAD_DIMS = [32, 64, 80, 88]


def runnable(device, dtype, head_dim):
    return [b for b in CONCRETE if why_not(b, torch.device(device), dtype, head_dim) is None]


def qkv(device, dtype, head_dim, seed=0, batch=2, heads=3, tokens=37):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, tokens, head_dim, generator=g, dtype=torch.float64)
            .to(device=device, dtype=dtype).requires_grad_() for _ in range(3)]


def compare_with_math(backend, device, dtype, head_dim):
    """(relative error of the output, of the q/k/v gradients) of `backend` in `dtype` against the
    explicit math computed in float64 on the same inputs."""
    q, k, v = qkv(device, dtype, head_dim)
    out = attention(q, k, v, 0.0, backend)
    go = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), go)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = attention(q64, k64, v64, 0.0, "math")
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), go.double())

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm()).item()
    return rel(out, ref), max(rel(a, b) for a, b in zip(grads, ref_grads))


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_every_cpu_backend_matches_math(dtype, head_dim):
    backends = runnable("cpu", dtype, head_dim)
    assert {"sdpa", "sdpa-math", "math"} <= set(backends)      # what any torch runs on a CPU
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for backend in backends:
        out_err, grad_err = compare_with_math(backend, "cpu", dtype, head_dim)
        assert out_err < tol and grad_err < tol, (backend, out_err, grad_err)


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_every_gpu_backend_matches_math(dtype, head_dim):
    backends = runnable("cuda", dtype, head_dim)
    assert {"sdpa", "sdpa-math", "math"} <= set(backends)
    # bf16 keeps 8 bits of mantissa: relative errors of a few 1e-3 are its rounding
    tol = {torch.bfloat16: 2e-2, torch.float16: 3e-3, torch.float32: 2e-3}[dtype]
    for backend in backends:
        out_err, grad_err = compare_with_math(backend, "cuda", dtype, head_dim)
        assert out_err < tol and grad_err < tol, (backend, out_err, grad_err)
    print(f"{dtype} head dim {head_dim}: {', '.join(backends)} match math")


def test_model_backends_agree_and_are_set_everywhere():
    torch.manual_seed(0)
    model = build_classifier("vit_micro", 3, img_size=32, num_frames=4).double()
    x = torch.randn(2, 3, 4, 32, 32, dtype=torch.float64)
    results = {}
    for backend in runnable("cpu", torch.float64, 32):
        set_attention_backend(model, backend, "cpu", torch.float64)
        assert {m.backend for m in model.modules() if isinstance(m, Attention)} == {backend}
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        results[backend] = (out.detach(), [p.grad.clone() for p in model.parameters()])
    a, ga = results.pop("math")
    for backend, (b, gb) in results.items():
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), backend
        assert all(torch.allclose(x1, x2, rtol=1e-9, atol=1e-12) for x1, x2 in zip(ga, gb)), backend


def test_auto_on_a_cpu_picks_sdpa_and_logs_the_reason_once(caplog):
    from vmae2_fast.models import attention as attention_module
    attention_module._logged.clear()
    model = build_classifier("vit_micro", 3, img_size=32, num_frames=4)
    with caplog.at_level(logging.INFO, logger="vmae2_fast"):
        for _ in range(3):
            set_attention_backend(model, "auto", "cpu", torch.float32)
    assert {m.backend for m in model.modules() if isinstance(m, Attention)} == {"sdpa"}
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("attention:")]
    assert lines == ["attention: sdpa for head dim 32 (float32 on cpu), chosen by --attention auto: "
                     "torch SDPA (its fused CPU kernel)"]


@pytest.mark.parametrize("backend, words", [
    ("sdpa-efficient", "cannot run head dim 32 in float32 on cpu"),
    ("sdpa-cudnn", "cannot run head dim 32 in float32 on cpu"),
    ("flash-attn2", "runs on CUDA devices only"),
    ("flash-attn3", "runs on CUDA devices only"),
    ("xformers", "runs on CUDA devices only"),
])
def test_a_named_backend_that_cannot_run_is_refused_not_replaced(backend, words):
    model = build_classifier("vit_micro", 3, img_size=32, num_frames=4)
    with pytest.raises(AttentionBackendError, match=words):
        set_attention_backend(model, backend, "cpu", torch.float32)
    assert {m.backend for m in model.modules() if isinstance(m, Attention)} == {"sdpa"}   # untouched
    with pytest.raises(ValueError, match="unknown attention backend"):
        set_attention_backend(model, "flash9")


def test_a_missing_library_says_how_to_install_it(monkeypatch):
    from vmae2_fast.models import attention_backends as ab
    import sys
    monkeypatch.setitem(sys.modules, "flash_attn", None)          # import fails: "not installed"
    ab.external_function.cache_clear()
    try:
        with pytest.raises(AttentionBackendError, match=r"not installed.*vmae2_fast\[flash\]"):
            ab.external_function("flash-attn2")
    finally:
        ab.external_function.cache_clear()


def test_every_stage_has_the_attention_flag():
    from vmae2_fast.config import EvaluateConfig, FinetuneConfig, PretrainConfig
    for cls in (PretrainConfig, FinetuneConfig):
        cfg = cls()
        assert cfg.attention == "auto"
        cfg.attention = "flash9"
        with pytest.raises(ValueError, match="--attention"):
            cfg.check()
    cfg = EvaluateConfig(checkpoint="x.pth", attention="flash9")
    with pytest.raises(ValueError, match="--attention"):
        cfg.check()


def test_the_pretrain_stage_applies_the_flag(caplog):
    from vmae2_fast.config import PretrainConfig
    from vmae2_fast.stages.pretrain import build_model
    cfg = PretrainConfig(model="vit_micro", input_size=32, num_frames=4, attention="sdpa-math")
    model = build_model(cfg, torch.device("cpu"))
    assert {m.backend for m in model.modules() if isinstance(m, Attention)} == {"sdpa-math"}
    with pytest.raises(AttentionBackendError, match="sdpa-cudnn"):
        build_model(PretrainConfig(model="vit_micro", input_size=32, num_frames=4, attention="sdpa-cudnn"),
                    torch.device("cpu"))


@pytest.mark.gpu
def test_auto_on_a_gpu_picks_a_backend_that_runs_every_zoo_head_dim(caplog):
    for name, dtype in (("vit_g", torch.bfloat16), ("vit_h", torch.bfloat16), ("vit_b", torch.float32)):
        with torch.device("meta"):
            model = build_classifier(name, 10)
        set_attention_backend(model, "auto", "cuda", dtype)
        for m in model.modules():
            if isinstance(m, Attention):
                assert why_not(m.backend, torch.device("cuda"), dtype, m.head_dim) is None
