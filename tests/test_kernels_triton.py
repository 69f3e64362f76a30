"""The Triton face of every fused op against the float64 reference (values and gradients).

Without CUDA the kernels run on the Triton CPU interpreter (TRITON_INTERPRET=1, set here before
the kernels are first imported); the `gpu` set runs the same checks on a CUDA device.
"""
import zlib

import pytest
import torch

from kernel_cases import (CASES, CHECKS, assert_close, check_mse, enable_interpreter, make_inputs,
                          triton_face)

enable_interpreter()


@pytest.fixture(scope="module")
def tk():
    kernels, reason = triton_face()
    if kernels is None:
        pytest.skip(reason)
    return kernels


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


def test_triton_refuses_plain_cpu_tensors_without_the_interpreter(tk):
    if tk.interpreter_active():
        pytest.skip("the interpreter is on, so CPU tensors are accepted")
    x = make_inputs(CASES[0])
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        tk.visible_patch_embed(x["video"], x["weight"], x["bias"], x["pos_e"], x["vis"], 2)


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
