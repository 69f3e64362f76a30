"""`--tf32` (the default) / `--no-tf32`: on CUDA, float32 matmuls and convolutions run on TF32
tensor cores or in IEEE float32, torch's own and the fused ops' Triton dots (which read torch's
flag, `ops.common.matmul_precision`) alike; the run's log says which. On the CPU the flags
are set as a CUDA device would set them (setting them needs no GPU); the arithmetic is a `gpu`
test."""
import pytest
import torch

from cli_runs import micro_flags
from vmae2_fast.cli import config_for
from vmae2_fast.ops.common import matmul_precision
from vmae2_fast.stages.build import set_float32_matmul

CUDA = torch.device("cuda")


def test_tf32_is_on_by_default_and_no_tf32_turns_it_off(tmp_path):
    assert config_for("pretrain", ["--output-dir", str(tmp_path)]).tf32 is True
    assert config_for("pretrain", ["--output-dir", str(tmp_path), "--no-tf32"]).tf32 is False
    assert config_for("finetune", ["--output-dir", str(tmp_path), "--no-tf32"]).tf32 is False


@pytest.mark.parametrize("tf32", [True, False])
def test_on_cuda_the_flag_sets_torch_and_the_fused_ops_alike(tf32):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not tf32
    line = set_float32_matmul(CUDA, tf32)
    assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
    assert matmul_precision(CUDA) == ("tf32" if tf32 else "ieee")
    assert line.startswith("float32 matmuls: TF32 tensor cores" if tf32 else "float32 matmuls: IEEE float32")


def test_on_the_cpu_nothing_changes():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    for tf32 in (True, False):
        assert "IEEE float32" in set_float32_matmul(torch.device("cpu"), tf32)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    assert matmul_precision(torch.device("cpu")) == "ieee"


def test_a_run_passes_its_flag_and_logs_its_float32_matmul_arithmetic(tiny_synthetic, tmp_path, monkeypatch):
    from vmae2_fast.stages import build
    from vmae2_fast.stages.pretrain import run
    calls = []
    real = build.set_float32_matmul
    monkeypatch.setattr(build, "set_float32_matmul", lambda device, tf32: calls.append((device.type, tf32))
                        or real(device, tf32))
    run(config_for("pretrain", micro_flags(tiny_synthetic, tmp_path, max_steps=1, epochs=1, no_progress=True,
                                           device="cpu", tf32=False)))
    assert calls == [("cpu", False)]
    lines = [ln for ln in (tmp_path / "log.txt").read_text().splitlines() if "float32 matmuls:" in ln]
    assert len(lines) == 1 and lines[0].endswith("float32 matmuls: IEEE float32 (TF32 is a CUDA setting)")


def relative_error(a, b):
    return float((a.double() - b).norm() / b.norm())


@pytest.mark.gpu
def test_tf32_on_a_gpu_rounds_float32_matmuls_and_triton_dots_and_no_tf32_does_not():
    """TF32 keeps 10 mantissa bits of each factor: a 1024-deep float32 product is off by about
    1e-3 relative; IEEE float32 by about 1e-6. The fused patch embedding's Triton dots (1536 deep
    at patch 16) follow."""
    from op_cases import TILE_CASES, check_embed, use
    g = torch.Generator(device="cuda").manual_seed(0)
    a, b = (torch.randn(512, 1024, device="cuda", generator=g) for _ in range(2))
    exact = a.double() @ b.double().T
    errors = {}
    for tf32 in (True, False):
        set_float32_matmul(CUDA, tf32)
        with use("triton"):
            embed = check_embed(TILE_CASES[1], torch.float32, device="cuda", seed=0)
        errors[tf32] = (relative_error(a @ b.T, exact), max(embed.values()))
    (torch_tf32, triton_tf32), (torch_ieee, triton_ieee) = errors[True], errors[False]
    assert torch_ieee < 1e-5 < 1e-4 < torch_tf32, errors
    assert triton_ieee < 1e-5 < triton_tf32, errors
