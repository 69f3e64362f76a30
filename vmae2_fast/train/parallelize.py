"""The only place a model is wrapped for training: data parallelism (DDP or FSDP2) and torch.compile.

DDP (`--parallelism ddp`, the default): DDP first, torch.compile over it. Compiling the model
inside DDP's wrapper (the old order) hands DDP one graph whose gradients all become ready at the
end of the backward pass, so the all-reduce cannot overlap it; compiling the DDP module lets
TorchDynamo's DDP optimizer split the graph at DDP's bucket boundaries, so buckets are reduced
while the rest of the backward runs.

FSDP2 (`--parallelism fsdp`, for ViT-L/H/g: each process keeps 1/N of the weights, gradients and
AdamW state instead of all of them), in torchtitan's order:
1. activation checkpointing: the model's own policy (`models/vit.run_blocks` checkpoints the
   call of a block, so the recompute re-enters the block's FSDP hooks and gathers it again);
2. torch.compile per transformer block (its `forward` only: the FSDP hooks stay outside the
   graph, and the state-dict keys keep their official names, no `_orig_mod.`);
3. `fully_shard` on every block, then on the root (which holds the embedding, the
   encoder-to-decoder bridge, the mask token, the norms and the head). The module stays the same
   object: `model` and what this returns are one module, and the optimiser must be built after
   this call (fully_shard replaces the parameters with sharded ones).
`fsdp_param_dtype="bf16"` gathers and computes with bf16 copies of the weights and reduces
gradients in fp32 (MixedPrecisionPolicy); the sharded master weights and AdamW stay fp32.

FP8 (`--fp8`, before any of the above, as torchtitan orders its converters): the encoder blocks'
`attn.proj`, `mlp.fc1` and `mlp.fc2` become torchao `Float8Linear` (dynamic tensorwise scaling:
inputs, weights and output gradients cast to float8 per GEMM, master weights and the state-dict
keys unchanged). `attn.qkv` stays in the autocast dtype: the attention calls it as
`F.linear(x, qkv.weight, q/v bias)`, which a module swap does not reach. The decoder is small
and keeps its dtype. Below sm_89 (no FP8 tensor cores) it is refused with the reason; on a CPU
torchao's emulation runs it (numerics only, for tests). FSDP2 then all-gathers the weights in
their own dtype and each layer casts its shard-gathered weight to float8.

The Trainer never touches DDP or FSDP: it asks `grad_sync(model, sync)` for the context that
skips the gradient reduction on accumulation micro-batches.
"""
from __future__ import annotations

import contextlib
import logging
import warnings

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError, MissingPackageError

__all__ = ["parallelize", "grad_sync", "is_sharded", "full_tensor", "float8_encoder", "PARALLELISMS",
           "FSDP_PARAM_DTYPES"]

log = logging.getLogger("vmae2_fast")

PARALLELISMS = ("ddp", "fsdp")
FSDP_PARAM_DTYPES = ("fp32", "bf16")


def parallelize(model: nn.Module, device: torch.device, dist, *, compile: bool = False,
                parallelism: str = "ddp", fsdp_param_dtype: str = "fp32", fp8: bool = False) -> nn.Module:
    """The module the training step calls. `model` itself stays the one checkpoints hold (under
    FSDP they are the same object). Alone (one process) nothing is wrapped, whatever
    `parallelism` says: a single process has nothing to shard or reduce."""
    if parallelism not in PARALLELISMS:
        raise ConfigError(f"--parallelism must be one of {', '.join(PARALLELISMS)}, got {parallelism!r}")
    if fp8:
        float8_encoder(model, device, log_choice=dist.is_main)
    if parallelism == "fsdp" and dist.enabled:
        return _fsdp(model, device, compile, fsdp_param_dtype)
    wrapped = model
    if dist.enabled:
        wrapped = DistributedDataParallel(wrapped, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        wrapped = torch.compile(wrapped)
    return wrapped


FP8_LAYERS = (".attn.proj", ".mlp.fc1", ".mlp.fc2")
FP8_MIN_CAPABILITY = (8, 9)


def float8_encoder(model: nn.Module, device: torch.device, log_choice: bool = True) -> int:
    """Convert the encoder blocks' `FP8_LAYERS` to torchao Float8Linear in place (see the module
    docstring); returns how many. Raises ValueError, before any compute, where it cannot run."""
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        if cap < FP8_MIN_CAPABILITY:
            raise ConfigError(f"--fp8 needs FP8 tensor cores (compute capability 8.9 or newer: Ada, "
                             f"Hopper, Blackwell); {torch.cuda.get_device_name(device)} is "
                             f"{cap[0]}.{cap[1]}. Drop --fp8 (bf16 is this GPU's fastest precision).")
    elif device.type != "cpu":
        raise ConfigError(f"--fp8 runs on CUDA (sm_89+) or, emulated, on the CPU; not on {device.type}")
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as exc:
        raise MissingPackageError(f"--fp8 needs torchao ({exc}): pip install 'vmae2_fast[fp8]'") from None
    # the pre-training encoder, or the classifier's blocks (the classifier is an encoder)
    prefix = "encoder.blocks." if hasattr(model, "encoder") else "blocks."

    def chosen(module: nn.Module, fqn: str) -> bool:
        return (isinstance(module, nn.Linear) and fqn.startswith(prefix) and fqn.endswith(FP8_LAYERS)
                and module.in_features % 16 == 0 and module.out_features % 16 == 0)   # FP8 GEMM shapes

    names = [n for n, m in model.named_modules() if chosen(m, n)]
    if not names:
        raise ConfigError("--fp8: no encoder linear layer of this model has FP8 GEMM shapes "
                         "(widths that are multiples of 16)")
    emulate = device.type == "cpu"
    convert_to_float8_training(model, config=Float8LinearConfig(emulate=emulate), module_filter_fn=chosen)
    if log_choice:
        log.info("fp8: %d encoder linear layers (attn.proj, mlp.fc1, mlp.fc2 of each block) in float8 "
                 "with dynamic tensorwise scaling (torchao)%s; attn.qkv and the decoder keep the "
                 "autocast dtype", len(names),
                 ", EMULATED on the CPU: the numerics of FP8, none of its speed" if emulate else "")
    return len(names)


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of every stack (encoder and decoder, or the classifier's), in order."""
    from ..models.vit import Block
    return [m for m in model.modules() if isinstance(m, Block)]


def _fsdp(model: nn.Module, device: torch.device, compile: bool, param_dtype: str) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    if param_dtype not in FSDP_PARAM_DTYPES:
        raise ConfigError(f"--fsdp-param-dtype must be one of {', '.join(FSDP_PARAM_DTYPES)}, got {param_dtype!r}")
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if param_dtype == "bf16" else MixedPrecisionPolicy())
    # Each process seeded its own initialisation; DDP would broadcast rank 0's, FSDP keeps what
    # it finds (each process its shard of its own weights): start all from rank 0's.
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            torch.distributed.broadcast(t, src=0)
    blocks = _blocks(model)
    if compile:
        for blk in blocks:      # the forward only: hooks and parameter names are left as they are
            blk.forward = torch.compile(blk.forward)
    for blk in blocks:
        fully_shard(blk, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    # The pre-training head returns a view of its output (a Linear on a 3-D input); FSDP warns
    # that an in-place op on it would skip a hook. Nothing here writes into a model output.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    log.info("FSDP2: %d blocks and the root sharded over %d processes, parameters in %s, gradients "
             "reduced in fp32%s", len(blocks), mesh.size(), param_dtype,
             ", each block's forward compiled" if compile else "")
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether `model` is an FSDP2 module (its forward is then a collective: every process must
    run it)."""
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """`t` as a plain tensor: a DTensor (under FSDP, e.g. the norm of sharded gradients, a partial
    sum on each process) is completed by a collective on the device (no host sync)."""
    from torch.distributed.tensor import DTensor
    return t.full_tensor() if isinstance(t, DTensor) else t


def _ddp(wrapped: nn.Module):
    inner = getattr(wrapped, "_orig_mod", wrapped)          # under torch.compile
    return inner if isinstance(inner, DistributedDataParallel) else None


@contextlib.contextmanager
def _fsdp_sync(module, sync: bool):
    module.set_requires_gradient_sync(sync)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def grad_sync(wrapped: nn.Module, sync: bool):
    """A context for one backward pass: as usual when `sync`, without the gradient reduction
    otherwise (DDP's no_sync; FSDP2's set_requires_gradient_sync(False): gradients accumulate
    locally until the micro-batch that syncs)."""
    if is_sharded(wrapped):
        return _fsdp_sync(wrapped, sync)
    ddp = _ddp(wrapped)
    if sync or ddp is None:
        return contextlib.nullcontext()
    return ddp.no_sync()
