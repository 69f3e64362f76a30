"""The memory of a training run per GPU, from a traced step (`trace.py`) and the persistent state.

Per GPU and per micro-batch of `batch_size` videos x `num_sample` views (the clips the model sees):

- parameters, gradients and AdamW state (exp_avg, exp_avg_sq, and the fused kernel's step
  scalar per tensor), all float32; under FSDP each process holds its dim-0 shard of every
  tensor (FSDP2 pads dim 0 to a multiple of the process count);
- buffers of the parallelism, modelled from FSDP2's and DDP's documented behaviour, not traced:
  DDP keeps one float32 bucket copy of the gradients; FSDP2 keeps the root module's parameters
  gathered through the step, and gathers one block while the next is prefetched (its all-gather
  output and the copy-out, in the param dtype) and reduce-scatters one block's float32 gradients;
- the traced step: the clip batch (uint8, plus the batch prefetched on a CUDA device), the
  activations held for the backward (every storage alive between forward and backward: saved
  tensors, checkpoint boundaries, the bf16 weight copies autocast keeps), gradients as the
  backward makes them, and every transient;
- peak = persistent state + buffers + the most the traced step holds at one time.

Gradient accumulation: micro-batches after the first add their gradients into the existing
ones, so those are traced with the gradients present; FSDP2 without gradient sync keeps them
unsharded until the last micro-batch.

A plan "fits" a device when its peak is at most (1 - `HEADROOM`) of the memory: the rest covers
what torch's allocator does not hand out as tensors (the CUDA context, NCCL and DALI buffers,
the caching allocator's fragmentation).
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ..errors import ConfigError
from .trace import KINDS, StepSpec, StepTrace, trace_step

__all__ = ["Setup", "MemoryPlan", "plan_memory", "max_batch", "least_recompute", "recompute_ladder",
           "setup_from_config", "stack_depths", "recomputed_blocks", "HEADROOM", "REPORTED_POLICIES"]

HEADROOM = 0.10                    # of the device memory, left for what is not a tensor
REPORTED_POLICIES = ("none", "full")             # and the policy asked for (or auto chose)
_FP32 = 4
_CUDA_BLOCK = 512                  # the CUDA caching allocator rounds every tensor up to this
PARALLELISMS = ("none", "ddp", "fsdp")


@dataclass(frozen=True)
class Setup:
    """A run's memory-relevant settings: the step (`spec`, its checkpointing aside) and the batch
    and parallelism around it."""
    spec: StepSpec
    batch_size: int = 1                # videos per process per micro-batch
    num_sample: int = 1                # views per video: the model sees batch_size x num_sample clips
    accum_steps: int = 1
    parallelism: str = "none"          # none (one process) | ddp | fsdp
    world_size: int = 1
    fsdp_param_dtype: str = "fp32"

    def __post_init__(self):
        if self.parallelism not in PARALLELISMS:
            raise ConfigError(f"--parallelism must be one of {', '.join(PARALLELISMS)}, got {self.parallelism!r}")
        for name in ("batch_size", "num_sample", "accum_steps", "world_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")

    @property
    def sharded(self) -> bool:
        return self.parallelism == "fsdp" and self.world_size > 1

    @property
    def clips(self) -> int:
        return self.batch_size * self.num_sample

    def step_spec(self, checkpointing: str) -> StepSpec:
        return replace(self.spec, checkpointing=checkpointing, grads_exist=self.accum_steps > 1,
                       param_dtype=self.fsdp_param_dtype if self.sharded else "fp32")


@dataclass
class MemoryPlan:
    """Bytes per GPU of one run at one batch size and checkpointing policy."""
    checkpointing: str
    batch_size: int
    clips: int
    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    buffers_bytes: int                 # DDP buckets / FSDP gathered parameters and gradients
    input_bytes: int                   # the clip batch (and the one prefetched on CUDA)
    activation_bytes: int              # held between forward and backward
    transient_bytes: int               # the most that is neither state, activation nor gradient
    peak_bytes: int
    at_peak: dict = field(default_factory=dict)   # what the traced step holds at its peak

    def to_dict(self) -> dict:
        return asdict(self)


def setup_from_config(cfg, device: str, world_size: int, num_classes: int | None = None) -> Setup:
    """The `Setup` of a run's config (`RunConfig` or `PlanConfig`) on `device` ("cuda" or "cpu")
    over `world_size` processes; `num_classes` given: the classifier's step."""
    from ..models.zoo import model_options
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device == "cuda" else "fp32")
    spec = StepSpec(
        model=cfg.model, input_size=cfg.input_size, num_frames=cfg.num_frames,
        tubelet_size=cfg.tubelet_size, num_classes=num_classes,
        decoder_depth=getattr(cfg, "decoder_depth", 4), mask_ratio=getattr(cfg, "mask_ratio", 0.9),
        decoder_mask_ratio=getattr(cfg, "decoder_mask_ratio", 0.5), precision=precision, device=device,
        attention=cfg.attention, options=tuple(sorted(model_options(cfg).items())))
    parallelism = cfg.parallelism if world_size > 1 else "none"
    return Setup(spec, batch_size=cfg.batch_size, num_sample=cfg.num_sample, accum_steps=cfg.accum_steps,
                 parallelism=parallelism, world_size=world_size, fsdp_param_dtype=cfg.fsdp_param_dtype)


# ------------------------------------------------------------------------------ persistent state
def _round(nbytes: int, cuda: bool) -> int:
    return -(-nbytes // _CUDA_BLOCK) * _CUDA_BLOCK if cuda else nbytes


def _shard(shape: tuple, world: int) -> int:
    """Elements of one process's FSDP2 shard of a tensor: dim 0 split into `world` padded chunks."""
    if not shape:
        return 1
    return -(-shape[0] // world) * math.prod(shape[1:])


@functools.lru_cache(maxsize=16)
def _state(setup: Setup) -> dict:
    """Parameters, gradients, optimiser state and parallelism buffers, bytes per GPU."""
    from .trace import _fake_model
    _, model = _fake_model(replace(setup.step_spec("none"), param_dtype="fp32"))
    cuda = setup.spec.device == "cuda"
    world = setup.world_size if setup.sharded else 1
    shapes = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    full = [math.prod(s) * _FP32 for _, s in shapes]
    local = [_round(_shard(s, world) * _FP32, cuda) for _, s in shapes]
    params = sum(local)
    step_scalars = len(shapes) * _round(_FP32, cuda)        # fused AdamW: a float32 step per tensor
    out = dict(params=params, grads=params, optimizer=2 * params + step_scalars, buffers=0,
               grad_scale=1.0, full_grads=sum(_round(b, cuda) for b in full))
    if setup.parallelism == "ddp" and setup.world_size > 1:
        out["buffers"] = sum(full)                            # the reducer's float32 buckets
    if setup.sharded:
        gathered = 2 if setup.fsdp_param_dtype == "bf16" else _FP32
        per_block: dict[str, int] = {}
        root = 0
        for (name, shape), nbytes in zip(shapes, full):
            block = _block_of(name)
            if block is None:
                root += math.prod(shape) * gathered
            else:
                per_block[block] = per_block.get(block, 0) + math.prod(shape)
        biggest = max(per_block.values(), default=0)
        # root gathered all step; a block's all-gather output + its copy-out, the next block
        # prefetched; one block's float32 gradients and their reduce-scatter input
        out["buffers"] = root + 3 * biggest * gathered + 2 * biggest * _FP32
        out["grad_scale"] = params / max(sum(full), 1)
        if setup.accum_steps > 1:           # no reduce-scatter before the last micro-batch
            out["grads"] = out["full_grads"]
    return out


def _block_of(name: str) -> str | None:
    parts = name.split(".")
    if "blocks" in parts:
        i = parts.index("blocks")
        return ".".join(parts[:i + 2])
    return None


# ------------------------------------------------------------------------------ plans
@functools.lru_cache(maxsize=64)
def _trace(spec: StepSpec) -> StepTrace:
    return trace_step(spec)


def _held(setup: Setup, state: dict, trace: StepTrace, clips: int) -> dict:
    """What is held through the whole traced step besides it: the state, the buffers, the
    gradients of earlier micro-batches, the batch prefetched on a CUDA device."""
    return dict(state=state["params"] + state["optimizer"] + state["buffers"],
                carried_grads=state["grads"] if setup.accum_steps > 1 else 0,
                prefetched=trace.peak_of(clips, ("input",)) if setup.spec.device == "cuda" else 0)


def plan_memory(setup: Setup, checkpointing: str = "none", batch_size: int | None = None) -> MemoryPlan:
    """The plan of `setup` under `checkpointing` at `batch_size` videos (default: the setup's)."""
    batch = setup.batch_size if batch_size is None else batch_size
    clips = batch * setup.num_sample
    trace = _trace(setup.step_spec(checkpointing))
    state = _state(setup)
    curve = trace.live(clips, {"grad": state["grad_scale"]})
    t = int(np.argmax(curve))
    held = _held(setup, state, trace, clips)
    at_peak = {k: trace.bytes_at(t, clips, (k,)) for k in KINDS}
    at_peak["grad"] = int(at_peak["grad"] * state["grad_scale"])
    return MemoryPlan(
        checkpointing=checkpointing, batch_size=batch, clips=clips, params_bytes=state["params"],
        grads_bytes=state["grads"], optimizer_bytes=state["optimizer"], buffers_bytes=state["buffers"],
        input_bytes=trace.peak_of(clips, ("input",)) + held["prefetched"],
        activation_bytes=trace.bytes_at(trace.forward_end, clips, ("activation",)),
        transient_bytes=trace.peak_of(clips, ("transient",)),
        peak_bytes=sum(held.values()) + int(round(curve[t])), at_peak=at_peak)


def max_batch(setup: Setup, checkpointing: str, budget_bytes: float) -> int:
    """The most videos per GPU (`--batch-size`) whose planned peak is at most `budget_bytes`."""
    trace = _trace(setup.step_spec(checkpointing))
    state = _state(setup)
    weight = np.ones(len(KINDS))
    weight[KINDS.index("grad")] = state["grad_scale"]
    # the step's live bytes are const(t) + per_clip(t) * clips: one curve for each part
    n = int(trace.free.max(initial=0)) + 1

    def curve(values):
        w = values * weight[trace.kind]
        return np.cumsum(np.bincount(trace.alloc, w, n + 1) - np.bincount(trace.free, w, n + 1))[:n]

    const, per_clip = curve(trace.const.astype(float)), curve(trace.per_clip.astype(float))
    held = _held(setup, state, trace, 1)
    fixed = held["state"] + held["carried_grads"]
    room = budget_bytes - fixed - const
    if (room < 0).any():
        return 0
    growth = per_clip + held["prefetched"]          # the prefetched batch is per clip only
    clips = np.floor(np.min(np.where(growth > 0, room / np.maximum(growth, 1e-9), np.inf)))
    if not np.isfinite(clips):
        raise ValueError("the traced step does not grow with the batch")
    return int(clips) // setup.num_sample


def recompute_ladder(depths: tuple[int, ...]) -> list[str]:
    """Checkpointing policies from the least recompute to the most: none, then every K-th block
    for the K that give a distinct number of recomputed blocks, then full."""
    seen, ladder = set(), []
    for k in range(max(depths), 0, -1):
        n = tuple(d // k for d in depths)
        if n not in seen and any(n):
            seen.add(n)
            ladder.append("full" if k == 1 else str(k))
    return ["none", *ladder]


def recomputed_blocks(setup: Setup, policy: str) -> tuple[int, int]:
    """(blocks whose activations the backward recomputes under `policy`, blocks in all)."""
    from ..models.vit import checkpoint_interval
    k = checkpoint_interval(policy)
    depths = stack_depths(setup)
    return (sum(d // k for d in depths) if k else 0), sum(depths)


def stack_depths(setup: Setup) -> tuple[int, ...]:
    from ..models.zoo import model_spec
    depth = model_spec(setup.spec.model).depth
    return (depth,) if setup.spec.num_classes is not None else (depth, setup.spec.decoder_depth)


def least_recompute(setup: Setup, budget_bytes: float) -> tuple[str | None, dict[str, MemoryPlan]]:
    """The checkpointing policy with the least recompute whose plan fits `budget_bytes` at the
    setup's batch (None: not even full checkpointing fits), and the plans it looked at.

    The peak falls as more blocks are checkpointed, so the ladder (`recompute_ladder`) is
    searched between a policy that does not fit and one that does; each probe is the rung the
    straight line between their exact peaks puts at the budget, against the activations of the
    blocks each rung recomputes (tokens x width per block), then traced exactly."""
    ladder = recompute_ladder(stack_depths(setup))
    weight = [_recomputed_activations(setup, p) for p in ladder]
    tried: dict[str, MemoryPlan] = {}

    def peak(i: int) -> int:
        if ladder[i] not in tried:
            tried[ladder[i]] = plan_memory(setup, ladder[i])
        return tried[ladder[i]].peak_bytes

    if peak(0) <= budget_bytes:
        return "none", tried
    if peak(len(ladder) - 1) > budget_bytes:
        return None, tried
    lo, hi = 0, len(ladder) - 1            # lo does not fit, hi fits
    while hi - lo > 1:
        share = (peak(lo) - budget_bytes) / max(peak(lo) - peak(hi), 1)
        target = weight[lo] + share * (weight[hi] - weight[lo])
        guess = next((i for i in range(lo + 1, hi) if weight[i] >= target), hi - 1)
        if peak(guess) <= budget_bytes:
            hi = guess
        else:
            lo = guess
    return ladder[hi], tried


def _recomputed_activations(setup: Setup, policy: str) -> float:
    """Tokens x width of the blocks `policy` recomputes: what orders the ladder's savings."""
    from ..masking import DualMasking, num_tokens
    from ..models.vit import checkpoint_interval
    from ..models.zoo import model_spec
    s = model_spec(setup.spec.model)
    k = checkpoint_interval(policy)
    if not k:
        return 0.0
    grid = (setup.spec.num_frames // setup.spec.tubelet_size, setup.spec.input_size // s.patch_size,
            setup.spec.input_size // s.patch_size)
    if setup.spec.num_classes is not None:
        return s.depth // k * num_tokens(grid) * s.embed_dim
    masks = DualMasking(grid, setup.spec.mask_ratio, setup.spec.decoder_mask_ratio)
    return (s.depth // k * masks.num_visible * s.embed_dim
            + setup.spec.decoder_depth // k * (masks.num_visible + masks.num_decoded) * s.decoder_embed_dim)
