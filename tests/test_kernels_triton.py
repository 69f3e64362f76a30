"""The Triton face of every fused op against the float64 reference (values and gradients).

Without CUDA the kernels run on the Triton CPU interpreter (TRITON_INTERPRET=1, set here before
the kernels are first imported); the `gpu` set runs the same checks on a CUDA device.
"""
import os
import subprocess
import sys
import zlib

import pytest
import torch

import needs
from kernel_cases import CASES, CHECKS, assert_close, check_mse, enable_interpreter, make_inputs

enable_interpreter()


@pytest.fixture(scope="module")
def tk():
    return needs.triton_kernels()      # not installed: skip locally, fail on CI; broken: fail


def _seed(case, op):
    return zlib.crc32(f"triton-{case}-{op}".encode())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op", sorted(CHECKS))
@pytest.mark.parametrize("case", CASES, ids=str)
def test_triton_face_on_cpu_interpreter(tk, case, op, dtype):
    if not tk.interpreter_active():
        pytest.skip("the kernels were compiled for CUDA in this process; see the gpu tests")
    assert_close(CHECKS[op](tk, case, dtype, seed=_seed(case, op)), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("op", sorted(CHECKS))
def test_triton_face_other_dtypes_on_cpu_interpreter(tk, op, dtype):
    if not tk.interpreter_active():
        pytest.skip("the kernels were compiled for CUDA in this process; see the gpu tests")
    assert_close(CHECKS[op](tk, CASES[1], dtype, seed=_seed(CASES[1], op)), dtype)


def test_triton_mse_without_normalisation_and_given_denominator(tk):
    if not tk.interpreter_active():
        pytest.skip("CPU interpreter only")
    assert_close(check_mse(tk, CASES[0], torch.float32, normalize=False, denominator=5.0), torch.float32)


_REFUSAL = """
import torch
from vmae2_fast import kernels
assert not kernels.interpreter_active(), "TRITON_INTERPRET leaked into the child"
video = torch.randn(1, 3, 4, 32, 32)
vis = torch.arange(4).view(1, 4)
try:
    kernels.visible_patch_embed(video, torch.randn(8, 3, 2, 16, 16), torch.randn(8),
                                torch.randn(1, 8, 8), vis, 2)
except RuntimeError as exc:
    print("refused:", exc)
else:
    print("accepted")
"""


def test_triton_refuses_plain_cpu_tensors_without_the_interpreter(tk):
    """Without TRITON_INTERPRET the kernels must refuse CPU tensors with a message that says how to
    run them, not crash inside triton. This process has the interpreter on (conftest.py), and
    triton fixes that at import, so the check runs in a fresh interpreter without it (on a CPU
    machine and on a GPU machine alike)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", _REFUSAL], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "refused:" in res.stdout and "CUDA tensors" in res.stdout, res.stdout
    assert "TRITON_INTERPRET=1" in res.stdout       # the message names the way out


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("op", sorted(CHECKS))
@pytest.mark.parametrize("case", CASES, ids=str)
def test_triton_face_on_cuda(tk, case, op, dtype):
    assert_close(CHECKS[op](tk, case, dtype, device="cuda", seed=_seed(case, op)), dtype)


@pytest.mark.gpu
def test_triton_under_cuda_autocast_gives_the_reference_dtype(tk):
    from vmae2_fast.ops import reference
    x = make_inputs(CASES[0], device="cuda")
    args = (x["video"].float().cuda(), x["weight"].float().cuda(), x["bias"].float().cuda(),
            x["pos_e"].float().cuda(), x["vis"], 2)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = reference.visible_patch_embed(*args)
        out = tk.visible_patch_embed(*args)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert ((out.float() - ref.float()).norm() / ref.float().norm()).item() < 1e-2
