"""The only place a model is wrapped for training: data parallelism (DDP or FSDP2) and torch.compile.

torch.compile (`--compile`), under every parallelism, compiles each transformer block's
`forward` as a region (torchtitan's and PyTorch's "regional compilation" recipe), with static
shapes. The blocks of a stack share one code object (`Block.forward`) and differ only in their
weights and drop-path rate tensors (`models/vit.DropPath`), which Dynamo takes as graph inputs:
the first block compiles a graph and every other block of the same shape and options reuses it,
so a 40-block encoder and its decoder cost two compilations, not one over 44 unrolled blocks.
Compiling `forward` only (not the module's call) keeps module hooks (FSDP's) outside the graphs
and the state-dict keys official (no `_orig_mod.`); what lies between the blocks (the fused
embedding, decoder assembly and loss ops, the norms and heads) runs eagerly. Activation
checkpointing wraps the call of a compiled block (`models/vit.run_blocks`): its recompute in
the backward pass runs the same graph again.

DDP (`--parallelism ddp`, the default): the blocks are compiled, then DDP wraps the model. DDP's
gradient hooks stay outside the graphs, so a block's gradients are ready when its backward graph
ends and their buckets are reduced while the blocks before it run their backward (one graph over
the whole model would make every gradient ready at the end of the backward pass).

FSDP2 (`--parallelism fsdp`, for ViT-L/H/g: each process keeps 1/N of the weights, gradients and
AdamW state instead of all of them), in torchtitan's order:
1. activation checkpointing: the model's own policy (`models/vit.run_blocks` checkpoints the
   call of a block, so the recompute re-enters the block's FSDP hooks and gathers it again);
2. torch.compile per transformer block, as above;
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
import types
import warnings

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError, MissingPackageError

__all__ = ["parallelize", "compile_blocks", "grad_sync", "is_sharded", "full_tensor", "float8_encoder",
           "PARALLELISMS", "FSDP_PARAM_DTYPES"]

log = logging.getLogger("vmae2_fast")

PARALLELISMS = ("ddp", "fsdp")
FSDP_PARAM_DTYPES = ("fp32", "bf16")


def parallelize(model: nn.Module, device: torch.device, dist, *, compile: bool | str = False,
                parallelism: str = "ddp", fsdp_param_dtype: str = "fp32", fp8: bool = False) -> nn.Module:
    """The module the training step calls. `model` itself stays the one checkpoints hold (under
    FSDP they are the same object). Alone (one process) nothing is wrapped, whatever
    `parallelism` says: a single process has nothing to shard or reduce. `compile`: True compiles
    each block with inductor, a string names another torch.compile backend (e.g. "aot_eager")."""
    if parallelism not in PARALLELISMS:
        raise ConfigError(f"--parallelism must be one of {', '.join(PARALLELISMS)}, got {parallelism!r}")
    if fp8:
        float8_encoder(model, device, log_choice=dist.is_main)
    if compile:
        compile_blocks(model, backend=compile if isinstance(compile, str) else "inductor")
    if parallelism == "fsdp" and dist.enabled:
        return _fsdp(model, device, fsdp_param_dtype)
    if dist.enabled:
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


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


def compile_blocks(model: nn.Module, backend: str = "inductor") -> int:
    """Compile every transformer block's `forward` in place, static shapes; returns how many.

    One compiled function per block class, bound to each block as its `forward`: Dynamo keeps
    its graphs on the code object the blocks share, so blocks of one shape and configuration
    share one graph. Bound methods (not closures over each block) keep `copy.deepcopy` right:
    a copy (an EMA of the model) calls the compiled code with its own weights. Blocks compiled
    already are left alone."""
    compiled: dict[type, object] = {}
    blocks = [blk for blk in _blocks(model) if "forward" not in vars(blk)]
    for blk in blocks:
        cls = type(blk)
        if cls not in compiled:
            compiled[cls] = torch.compile(cls.forward, backend=backend, dynamic=False)
        blk.forward = types.MethodType(compiled[cls], blk)
    if blocks:
        log.info("torch.compile (%s): %d transformer blocks compiled as regions, one graph per "
                 "distinct block shape, shared by the blocks of that shape", backend, len(blocks))
    return len(blocks)


def _fsdp(model: nn.Module, device: torch.device, param_dtype: str) -> nn.Module:
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
    for blk in blocks:
        fully_shard(blk, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    # The pre-training head returns a view of its output (a Linear on a 3-D input); FSDP warns
    # that an in-place op on it would skip a hook. Nothing here writes into a model output.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    log.info("FSDP2: %d blocks and the root sharded over %d processes, parameters in %s, gradients "
             "reduced in fp32", len(blocks), mesh.size(), param_dtype)
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
    if sync or not isinstance(wrapped, DistributedDataParallel):
        return contextlib.nullcontext()
    return wrapped.no_sync()
