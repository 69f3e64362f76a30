"""Make host syncs raise inside a block: the check behind "the training step makes no host sync".

    with forbid_host_sync(device):
        trainer.train_step(batches)

On a CUDA device, `torch.cuda.set_sync_debug_mode("error")` makes every CUDA call that waits for
the GPU raise. On a CPU there is nothing to wait for, so the same block is also run under a
dispatch mode and a function mode that raise on the operations that WOULD wait on a GPU:

- reading a value on the host: `.item()`, `float()` / `int()` / `bool()` of a tensor (all
  `aten._local_scalar_dense`), `.tolist()`, `.numpy()`, `torch.equal`, `allclose`;
- outputs whose shape depends on values: `nonzero`, `masked_select`, `unique`, boolean-mask
  indexing and index_put, `repeat_interleave` without `output_size`;
- host data made into a tensor (`torch.tensor(list)`, `torch.as_tensor(list, device=...)`): on
  a GPU that is a host-to-device copy, a blocking one from pageable memory;
- copies between devices (`Tensor.to`, `copy_`), in either direction.

The fused ops are custom ops, which a dispatch mode sees only as one call; their Python kernels
(`vmae2_fast.ops.library.KERNELS`) are run under the same modes, so the backend code inside them is
checked too.

What a CPU run cannot show: waits inside CUDA code that has no CPU counterpart (the Triton backend's
launches, cuDNN / flash kernels, fused AdamW's CUDA kernel, the caching allocator calling
cudaMalloc / cudaFree, a copy from pageable memory); the CUDA check (`set_sync_debug_mode`) is
the one that sees those, and it runs in the gpu tests. Nor can a CPU run tell an intended copy
from a forbidden one beyond the rules above: the data loader's copy to the device is outside the
step by construction (batches arrive on the device).
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSyncError", "forbid_host_sync"]


class HostSyncError(RuntimeError):
    """An operation that makes the host wait for the device ran where none may."""


# Composite names (item, to) too: below autograd, where the custom ops' kernels run, the mode
# sees them before they decompose into _local_scalar_dense / _to_copy.
_VALUE_READS = {"_local_scalar_dense", "item", "equal", "is_nonzero", "allclose", "is_set_to"}
_DATA_DEPENDENT_SHAPE = {"nonzero", "masked_select", "masked_scatter", "_unique", "_unique2",
                         "unique_dim", "unique_consecutive", "unique_dim_consecutive"}
_HOST_DATA = {"lift_fresh", "lift_fresh_copy"}
_INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_"}
_COPIES = {"copy_", "_copy_from", "_copy_from_and_resize"}
_NO_DISPATCH = {torch.Tensor.tolist: ".tolist()", torch.Tensor.numpy: ".numpy()",
                torch.Tensor.__array__: "np.asarray(tensor)"}


def _devices(args) -> set:
    return {a.device for a in args if isinstance(a, torch.Tensor)}


def _refusal(func, args, kwargs) -> str | None:
    """Why `func(*args, **kwargs)` would make the host wait for a GPU, or None."""
    name = func._schema.name.split("::")[-1]
    if name in _VALUE_READS:
        return f"aten.{name} reads a tensor's value on the host (.item(), float(), bool(), ...)"
    if name in _DATA_DEPENDENT_SHAPE:
        return f"aten.{name} gives an output whose shape depends on the values"
    if name == "repeat_interleave" and kwargs.get("output_size") is None and isinstance(args[0], torch.Tensor) \
            and len(args) == 1:
        return "repeat_interleave without output_size gives a value-dependent shape"
    if name in _HOST_DATA:
        return "a tensor is made from host data (torch.tensor / as_tensor of Python values)"
    if name in _INDEXING:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ()):
            return f"aten.{name} with a boolean mask (its output shape depends on the values)"
    if name in ("_to_copy", "to"):
        targets = [kwargs.get("device")] + [a.device if isinstance(a, torch.Tensor) else a for a in args[1:]]
        for target in targets:
            if isinstance(target, (str, torch.device)) and torch.device(target) != args[0].device:
                return f"a copy from {args[0].device} to {target} (Tensor.to)"
    if name in _COPIES and len(_devices(args[:2])) > 1:
        return f"a copy between devices {sorted(map(str, _devices(args[:2])))} (copy_)"
    return None


class _FunctionGuard(TorchFunctionMode):
    """Raises on the host reads that never reach the dispatcher (.tolist(), .numpy())."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _NO_DISPATCH:
            raise HostSyncError(f"{_NO_DISPATCH[func]} copies a tensor to the host inside a "
                                "block that must not sync")
        return func(*args, **(kwargs or {}))


class _DispatchGuard(TorchDispatchMode):
    def __init__(self, function_guard: _FunctionGuard):
        super().__init__()
        self.function_guard = function_guard

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = _refusal(func, args, kwargs)
        if why is not None:
            raise HostSyncError(f"host sync inside a block that must not sync: {why}")
        if func.namespace == "vmae2_fast":
            from ..ops.library import KERNELS
            kernel = KERNELS.get(func._schema.name)
            if kernel is not None:          # look inside the custom op: run its kernel guarded
                with self.function_guard, self:
                    return kernel(*args, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def forbid_host_sync(device=None, *, cpu_rules: bool = True):
    """Raise HostSyncError (or, from CUDA, RuntimeError) on any host sync inside the block.

    device: where the block runs; on a CUDA device the CUDA sync check is on as well.
    cpu_rules: the dispatch-level rules above (the CPU stand-in for the CUDA check). Turn them
    off for code compiled with torch.compile, which does not run under a dispatch mode.
    """
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        before = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
    try:
        if cpu_rules:
            function_guard = _FunctionGuard()
            with function_guard, _DispatchGuard(function_guard):
                yield
        else:
            yield
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode(before)
