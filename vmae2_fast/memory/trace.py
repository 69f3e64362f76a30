"""One training step traced on fake tensors: every storage it allocates, when, how big, and why.

The step is the engine's own: the model the stage builds (on the meta device, then given fake
storage), its forward under the run's autocast, the stage's loss, the backward with the run's
activation checkpointing. FakeTensorMode runs it without computing or allocating anything, so a
step of ViT-g takes about a second on a CPU. A TorchDispatchMode sees every storage each aten op
creates; a `weakref.finalize` on the storage tells when it dies. What comes out is the lifetime
of each storage in op counts, which is exact for the eager step: no rule of thumb, no
bytes-per-token table.

The batch is a prime (`PROBE_BATCH`) that no model dimension is a multiple of, so a storage whose
size it divides grows with the batch and one that it does not divide is the same at every batch:
one trace gives the memory at every batch size (`StepTrace.live`).

A dispatcher-level trace does not see what a kernel allocates and frees inside one op; the ones
that matter are added from `kernel_workspace` (the fused ops' backends, the CPU's uint8 conversion,
FlashAttention-2's backward accumulators). Left out, and stated by the plan: cuBLAS's workspace
(allocated once per process), the CUDA caching allocator's rounding of each block to 512 bytes,
and what torch.compile would save or fuse (the trace is of the eager step).

The trace runs on fake CPU tensors (fake CUDA tensors need a CUDA build). What differs on a CUDA
device, and how the trace stands in for it:
- autocast: CUDA's runs layer norm in float32 (a float32 copy of a bf16 input, which the
  backward keeps), the CPU's in the input dtype: the fake model's norms follow CUDA's rule for a
  CUDA plan (`_CudaAutocastLayerNorm`). The other ops these models call autocast alike on both,
  except softmax, which only the `math` attention backend calls: a CUDA plan of `--attention
  math` counts its probabilities in bf16 where CUDA keeps them in float32 (under by B*H*N^2*2
  bytes per block).
- attention: SDPA on the CPU runs its flash kernel, which saves what FlashAttention and the
  memory-efficient kernel save on a GPU (q, k, v, the output and the log-sum-exp; the GPU
  kernels pad the latter to 32 or 128 rows, a few KiB).
"""
from __future__ import annotations

import contextlib
import functools
import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["StepSpec", "StepTrace", "trace_step", "PROBE_BATCH", "KINDS"]

PROBE_BATCH = 10007                 # prime; the largest prime factor of a zoo dimension is 1117
KINDS = ("transient", "activation", "grad", "input")
TRANSIENT, ACTIVATION, GRAD, INPUT = range(4)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class StepSpec:
    """What decides the memory of one micro-batch's forward and backward (not the batch: a trace
    serves every batch size)."""
    model: str
    input_size: int = 224
    num_frames: int = 16
    tubelet_size: int = 2
    num_classes: int | None = None     # None: the pre-training model; else the classifier's head
    decoder_depth: int = 4
    mask_ratio: float = 0.9
    decoder_mask_ratio: float = 0.5
    checkpointing: str = "none"        # none | full | K
    precision: str = "bf16"            # resolved: bf16 | fp16 | fp32 (autocast dtype, or none)
    device: str = "cuda"               # the device the plan is for: cuda | cpu
    attention: str = "auto"            # --attention
    param_dtype: str = "fp32"          # bf16: FSDP's bf16 gathered weights (no autocast copies)
    grads_exist: bool = False          # an accumulation micro-batch after the first
    options: tuple = ()                # model options (init_values, qk_scale, ...) as (name, value)


@dataclass
class StepTrace:
    """Storage lifetimes of one traced step: storage i lives from op `alloc[i]` up to, not
    including, op `free[i]`; its bytes are `const[i] + per_clip[i] * batch`."""
    alloc: np.ndarray
    free: np.ndarray
    const: np.ndarray
    per_clip: np.ndarray
    kind: np.ndarray
    forward_end: int                   # the op index between forward (autocast left) and backward

    def live(self, batch: int, scale: dict | None = None) -> np.ndarray:
        """Bytes live after each op at `batch` clips, each kind times `scale[kind]` (default 1)."""
        weight = np.ones(len(KINDS))
        for k, v in (scale or {}).items():
            weight[KINDS.index(k)] = v
        size = (self.const + self.per_clip * float(batch)) * weight[self.kind]
        n = int(self.free.max(initial=0)) + 1
        delta = np.bincount(self.alloc, size, n + 1) - np.bincount(self.free, size, n + 1)
        return np.cumsum(delta)[:n]

    def bytes_at(self, op: int, batch: int, kinds=KINDS) -> int:
        """Bytes of the storages of `kinds` live at op index `op`."""
        sel = (self.alloc <= op) & (self.free > op) & np.isin(self.kind, [KINDS.index(k) for k in kinds])
        return int(self.const[sel].sum() + self.per_clip[sel].sum() * batch)

    def peak_of(self, batch: int, kinds, scale: dict | None = None) -> int:
        """The most bytes of `kinds` live at one time."""
        weight = {k: (scale or {}).get(k, 1.0) if k in kinds else 0.0 for k in KINDS}
        return int(round(self.live(batch, weight).max(initial=0)))


class _Tracker(TorchDispatchMode):
    """Records each new storage an op returns and, through a finalizer, the op count at its death."""

    def __init__(self, existing=(), device: str = "cpu"):
        super().__init__()
        self.device = device
        self.ops = 0
        self.rows: list[list] = []           # [alloc, free, nbytes, kind]
        self._index: dict[int, int] = {}     # id(storage) -> row, while it lives
        # storages from before the step (parameters, buffers): a view of one allocates nothing
        self._existing = {id(t.untyped_storage()) for t in existing}

    def _died(self, key: int, row: int):
        self.rows[row][1] = self.ops
        self._index.pop(key, None)

    def watch(self, t: torch.Tensor) -> int:
        s = t.untyped_storage()
        key = id(s)                          # storages keep one Python object while they live
        if key in self._existing:
            return -1
        row = self._index.get(key)
        if row is None:
            row = self._index[key] = len(self.rows)
            self.rows.append([self.ops, -1, s.nbytes(), TRANSIENT])
            weakref.finalize(s, self._died, key, row)
        return row

    def set_kind(self, t: torch.Tensor, kind: int) -> None:
        row = self._index.get(id(t.untyped_storage()))
        if row is not None:
            self.rows[row][3] = kind

    def mark(self) -> int:
        """A point between two ops (e.g. the end of the forward): an op index of its own."""
        self.ops += 1
        return self.ops - 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.watch(t)
        for nbytes in kernel_workspace(func.name(), args, self.device):
            if nbytes:                       # lives during this op only
                self.rows.append([self.ops, self.ops + 1, nbytes, TRANSIENT])
        self.ops += 1
        return out


def _elt(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def kernel_workspace(op: str, args: tuple, device: str) -> tuple[int, ...]:
    """Bytes a kernel allocates and frees inside one op besides its outputs, which a trace at
    the dispatcher cannot see: the fused ops' backends (Triton on CUDA, C++ on the CPU; the shared
    backward code in each ops/<op>.py), the CPU's dtype-converting copy of a uint8 input, and
    FlashAttention-2's backward accumulators on CUDA. Terms that grow with the batch and terms
    that do not come apart (see `PROBE_BATCH`)."""
    return tuple(_workspace(op, args, device) or ())


def _workspace(op: str, args: tuple, device: str):
    if op == "vmae2_fast::masked_mse_per_token" and device == "cpu":
        pred = args[0]                   # the C++ loops read float32 predictions (ops/masked_loss.py)
        return (pred.numel() * 4,) if pred.dtype != torch.float32 else None
    if op == "vmae2_fast::masked_mse_per_token_backward" and device == "cpu":
        pred = args[1]                   # float32 copy of pred + float32 gradient; the copy is
        if pred.dtype == torch.float32:  # freed before the gradient is cast to pred's dtype
            return None
        return (2 * pred.numel() * 4 - pred.numel() * pred.element_size(),)
    if op == "vmae2_fast::visible_patch_embed" and device == "cpu":
        video, weight, out_dtype = args[0], args[1], args[6]
        rows = args[4].numel() * weight[0].numel()          # the gathered cubes, video dtype
        return (rows * video.element_size() + (rows * _elt(out_dtype) if out_dtype != video.dtype else 0),)
    if op == "vmae2_fast::visible_patch_embed_backward" and device == "cpu" and args[8]:
        video, weight, out_dtype = args[1], args[2], args[6]
        rows = args[4].numel() * weight[0].numel()          # cubes again, cast, (Ce, K) product
        cast = out_dtype != video.dtype
        return rows * (video.element_size() + _elt(out_dtype) * cast), weight.numel() * _elt(out_dtype) * cast
    if op == "vmae2_fast::decoder_input" and device == "cpu":
        z, w, out_dtype = args[0], args[1], args[6]
        return (z.numel() * _elt(out_dtype), w.numel() * _elt(out_dtype)) if z.dtype != out_dtype else None
    if op == "vmae2_fast::decoder_input_backward":
        grad, z, w, out_dtype, need_z, need_w = args[0], args[1], args[2], args[7], args[8], args[9]
        rows = z.shape[0] * z.shape[1]   # ops/decoder_assembly._grads: its casts and one copy
        cast = _elt(out_dtype) if z.dtype != out_dtype else 0
        gz = rows * w.shape[1] * cast if need_z else 0
        gw = rows * (w.shape[0] * grad.element_size() + w.shape[1] * cast) if need_w else 0
        return max(gz, gw), w.numel() * _elt(out_dtype)
    if op == "aten::addcmul.out" and device == "cpu":
        return [a.numel() * 4 for a in args[:3] if isinstance(a, torch.Tensor) and a.dtype == torch.uint8]
    if op == "aten::_scaled_dot_product_flash_attention_for_cpu_backward" and device == "cuda" \
            and args[1].dtype != torch.float32:
        b, h, n, d = args[1].shape       # FA2's float32 dq accumulator and softmax sums
        n = -(-n // 128) * 128
        return (b * h * n * (-(-d // 32) * 32 + 1) * 4,)
    return None


class _CudaAutocastLayerNorm(nn.LayerNorm):
    """CUDA autocast runs layer norm in float32 (a copy of a bf16 input, saved for the backward);
    CPU autocast runs it in the input dtype. The fake model's norms follow CUDA's rule."""

    def forward(self, x):
        return super().forward(x.float() if torch.is_autocast_enabled("cpu") else x)


@functools.lru_cache(maxsize=2)
def _fake_model(spec: StepSpec):
    """(fake mode, model with fake CPU storage) of `spec`, checkpointing aside (set per trace)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from ..models.attention import Attention
    from ..models.zoo import build_classifier, build_pretrain_model
    options = dict(spec.options)
    shape = dict(img_size=spec.input_size, num_frames=spec.num_frames, tubelet_size=spec.tubelet_size)
    with torch.device("meta"):
        if spec.num_classes is None:
            model = build_pretrain_model(spec.model, decoder_depth=spec.decoder_depth, **shape, **options)
        else:
            model = build_classifier(spec.model, spec.num_classes, **shape, **options)
    # real constants the code builds on the fly (normalisation tables, mask tables) become fake
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake:
        model.to_empty(device="cpu")
        if spec.param_dtype != "fp32":
            model.to(_DTYPES[spec.param_dtype])
    backend = "math" if spec.attention in ("math", "sdpa-math") else "sdpa"
    for m in model.modules():
        if isinstance(m, Attention):
            m.backend = backend
        if spec.device == "cuda" and type(m) is nn.LayerNorm:
            m.__class__ = _CudaAutocastLayerNorm
    model.train()
    return fake, model


def _step(model, spec: StepSpec, batch: int, tracker: _Tracker, masking):
    """The stage's forward and loss (compute_loss of stages/pretrain.py and stages/classify.py):
    (loss, the clip batch), which the loop holds until the step ends."""
    from ..data.pixels import normalize_on_device
    video = torch.empty(batch, 3, spec.num_frames, spec.input_size, spec.input_size, dtype=torch.uint8)
    tracker.set_kind(video, INPUT)
    dtype = _DTYPES[spec.precision]
    autocast = (torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext())
    with autocast:
        x = normalize_on_device(video, torch.float32)
        if masking is not None:
            vis, dec = masking(batch)
            loss = model.loss(model(x, vis, dec), x, vis, dec)
        else:
            labels = torch.zeros(batch, dtype=torch.int64)
            loss = F.cross_entropy(model(x).float(), labels)
    return loss, video


def trace_step(spec: StepSpec) -> StepTrace:
    """Trace one micro-batch of `spec` (forward, loss, backward) at `PROBE_BATCH` clips."""
    from ..models.vit import checkpoint_policy
    fake, model = _fake_model(_without_checkpointing(spec))
    model.activation_checkpointing = checkpoint_policy(spec.checkpointing)
    masking = None
    if spec.num_classes is None:        # made before the fake mode: it reads its tables' values
        from ..masking import DualMasking
        masking = DualMasking(model.grid, spec.mask_ratio, spec.decoder_mask_ratio)
    with fake:
        for p in model.parameters():
            p.grad = torch.zeros_like(p) if spec.grads_exist else None
    tracker = _Tracker([*model.parameters(), *model.buffers(),
                        *(p.grad for p in model.parameters() if p.grad is not None)], spec.device)
    with fake:
        with tracker:
            loss, batch = _step(model, spec, PROBE_BATCH, tracker, masking)
            forward_end = tracker.mark()
            loss.backward()
            del loss, batch
            for p in model.parameters():
                if p.grad is not None:
                    tracker.set_kind(p.grad, GRAD)
                    p.grad = None
            tracker.mark()
    rows = np.array(tracker.rows, dtype=np.int64).reshape(-1, 4)
    end = tracker.ops
    free = np.where(rows[:, 1] < 0, end, rows[:, 1])
    nbytes = rows[:, 2]
    grows = nbytes % PROBE_BATCH == 0
    per_clip = np.where(grows, nbytes // PROBE_BATCH, 0)
    const = np.where(grows, 0, nbytes)
    kind = rows[:, 3].copy()
    held = (rows[:, 0] < forward_end) & (free > forward_end) & (kind == TRANSIENT)
    kind[held] = ACTIVATION
    return StepTrace(rows[:, 0], free, const, per_clip, kind, forward_end)


def _without_checkpointing(spec: StepSpec) -> StepSpec:
    from dataclasses import replace
    return replace(spec, checkpointing="none")
