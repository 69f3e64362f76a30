"""Multiply-accumulates (MACs) per clip, training FLOPs and MFU for the VideoMAE V2 models.

The paper's "FLOPs" are MACs per clip, counted with fvcore on the official model. Two counts:

- `count="engine"` (default): the matmul MACs our implementation performs. Pre-training embeds
  only the N_vis visible cubes (tube masking keeps (H'W' - int(ratio*H'W')) * T' tokens), the
  encoder runs on N_vis tokens, the decoder on N_vis + N_dec (running cell keeps N_dec; decoder
  ratio 0 is VideoMAE V1, N_dec = N - N_vis), and its norm + head run on the N_dec trailing
  tokens. The classifier runs on all N tokens, mean-pools, and applies the head once.
- `count="fvcore"`: what fvcore reports for the official model, to compare with the paper.
  fvcore counts matmul-like ops (linear, matmul, bmm, conv: one per MAC, bias adds skipped) and
  norms (LayerNorm: 5 per element with affine), and counts nothing for elementwise and reduction
  ops (adds, residuals, the attention scale, softmax, GELU, dropout, mean pooling, gathers).
  It differs from the engine count by exactly two terms:
  1. the official encoder runs the Conv3d on all N cubes and selects the visible ones
     afterwards: + (N - N_vis) * 3*t*p*p * C MACs (ViT-B 1.66 G, ViT-g 3.05 G per clip);
  2. LayerNorm, 5 per element: ViT-B 0.042 G (V1) / 0.031 G (dual), ViT-g 0.165 / 0.146 G.
  The other ops fvcore skips are left out of both counts; all of them are memory-bound.
  fvcore count against the paper (Tables 1, 2): ViT-B V1 35.482 G (35.48), dual 25.871 G
  (25.87), running cell 0.25 31.629 (31.63),
  0.75 21.057 (21.06); ViT-g V1 264.122 (263.93), dual 241.760 (241.61). ViT-B matches to
  0.02 %; ViT-g matches better without the LayerNorm term (263.957, 241.614), as if the paper's
  ViT-g count had not seen its norms. Engine count: ViT-B 33.779 / 24.179 G, ViT-g 260.910 /
  238.567 G (1.2 % to 8 % under fvcore's: the skipped embedding is work really saved).

Attention is 2 * N^2 * C MACs per block (Q K^T and P V), whatever the kernel.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import NamedTuple

from .errors import ConfigError
from .masking import DualMasking, num_tokens
from .models.classifier import VisionTransformer
from .models.pretrain import PretrainVisionTransformer
from .models.zoo import ModelSpec, model_spec

DECODER_DEPTH = 4      # every VideoMAE V2 decoder (zoo.build_pretrain_model's default)
TUBELET = 2
IN_CHANS = 3
COUNTS = ("engine", "fvcore")
PARTS = ("patch_embed", "encoder_linear", "encoder_attention", "decoder_linear",
         "decoder_attention", "head", "norm")


@dataclass(frozen=True)
class _Stack:
    """A stack of identical pre-norm transformer blocks."""
    depth: int
    width: int
    mlp_hidden: int

    def linear_macs(self, n: int) -> int:
        """One block on n tokens: qkv (3C^2) + proj (C^2) + fc1 and fc2 (2CM) per token."""
        return n * (4 * self.width ** 2 + 2 * self.width * self.mlp_hidden)

    def attention_macs(self, n: int) -> int:
        return 2 * n * n * self.width


@dataclass(frozen=True)
class _Shape:
    grid: tuple[int, int, int]
    cube: int                   # values per cube, 3 * t * p * p: the embedding's input width
    encoder: _Stack
    decoder: _Stack | None      # None: the classifier
    head_out: int               # pixels per cube (pre-training) or classes (classifier)
    ratios: tuple[float, float] = (0.9, 0.5)


def _stack_of(blocks, width: int) -> _Stack:
    return _Stack(len(blocks), width, blocks[0].mlp.fc1.out_features if len(blocks) else 0)


def _from_spec(s: ModelSpec, frames: int, img_size: int, num_classes: int | None) -> _Shape:
    if img_size <= 0 or img_size % s.patch_size:
        raise ConfigError(f"image size {img_size} must be a positive multiple of the patch size {s.patch_size}")
    if frames <= 0 or frames % TUBELET:
        raise ConfigError(f"{frames} frames: must be a positive multiple of the tubelet size {TUBELET}")
    grid = (frames // TUBELET, img_size // s.patch_size, img_size // s.patch_size)
    cube = IN_CHANS * TUBELET * s.patch_size ** 2
    encoder = _Stack(s.depth, s.embed_dim, int(s.embed_dim * s.mlp_ratio))
    if num_classes is not None:
        return _Shape(grid, cube, encoder, None, num_classes)
    decoder = _Stack(DECODER_DEPTH, s.decoder_embed_dim, int(s.decoder_embed_dim * s.mlp_ratio))
    return _Shape(grid, cube, encoder, decoder, cube)


def _shape_of(model, frames, img_size, num_classes) -> _Shape:
    """The shapes that decide the count, from a zoo name, a ModelSpec or a built model."""
    if isinstance(model, str):
        model = model_spec(model)
    if isinstance(model, ModelSpec):
        if num_classes is not None and num_classes < 0:
            raise ConfigError(f"number of classes must be >= 0, got {num_classes}")
        return _from_spec(model, 16 if frames is None else frames, 224 if img_size is None else img_size,
                          num_classes)
    if isinstance(model, PretrainVisionTransformer):
        pe = model.encoder.patch_embed
        head = model.decoder.head
        shape = _Shape(pe.grid, pe.proj.weight[0].numel(), _stack_of(model.encoder.blocks, pe.proj.out_channels),
                       _stack_of(model.decoder.blocks, head.in_features), head.out_features)
    elif isinstance(model, VisionTransformer):
        pe = model.patch_embed
        head = model.head.out_features if hasattr(model.head, "out_features") else 0
        shape = _Shape(pe.grid, pe.proj.weight[0].numel(), _stack_of(model.blocks, pe.proj.out_channels),
                       None, head)
    else:
        raise TypeError(f"expected a zoo model name, a ModelSpec, a PretrainVisionTransformer or a "
                        f"VisionTransformer, got {type(model).__name__}")
    for given, own, what in ((frames, pe.num_frames, "frames"), (img_size, pe.img_size, "img_size")):
        if given is not None and given != own:
            raise ValueError(f"{what}={given} differs from the built model's {own}; leave it unset")
    return shape


def _tokens(s: _Shape, encoder_mask_ratio, decoder_mask_ratio) -> tuple[int, int]:
    """(encoder tokens, decoded tokens): the counts our masks produce (classifier: N, 0)."""
    if s.decoder is None:
        return num_tokens(s.grid), 0
    rho = s.ratios[0] if encoder_mask_ratio is None else encoder_mask_ratio
    rho_d = s.ratios[1] if decoder_mask_ratio is None else decoder_mask_ratio
    if not 0 <= rho < 1:
        raise ConfigError(f"encoder mask ratio must be in [0, 1), got {rho}")
    if not 0 <= rho_d < 1:
        raise ConfigError(f"decoder mask ratio must be in [0, 1) (0: VideoMAE V1), got {rho_d}")
    masks = DualMasking(s.grid, rho, rho_d)
    return masks.num_visible, masks.num_decoded


def macs_breakdown(model, encoder_mask_ratio: float | None = None, decoder_mask_ratio: float | None = None,
                   frames: int | None = None, img_size: int | None = None, *,
                   num_classes: int | None = None, count: str = "engine") -> dict[str, int]:
    """MACs per clip of one forward pass, per part (keys: `PARTS`).

    model: a zoo name or alias, a `ModelSpec` (with `num_classes`: its classifier), or a built
    `PretrainVisionTransformer` / `VisionTransformer` (its own shapes; masks are not a model
    property, so pass the ratios the run uses). Defaults: ratios 0.9 / 0.5, 16 frames of 224^2. decoder_linear includes
    encoder_to_decoder; "norm" is fvcore's LayerNorm estimate (0 in the engine count).
    """
    if count not in COUNTS:
        raise ConfigError(f"count must be one of {', '.join(COUNTS)}, got {count!r}")
    s = _shape_of(model, frames, img_size, num_classes)
    n_enc, n_dec = _tokens(s, encoder_mask_ratio, decoder_mask_ratio)
    enc, dec, n = s.encoder, s.decoder, num_tokens(s.grid)
    out = dict.fromkeys(PARTS, 0)
    # The official encoder embeds every cube; ours only the visible ones (the same for a classifier).
    out.update(patch_embed=(n if count == "fvcore" else n_enc) * s.cube * enc.width,
               encoder_linear=enc.depth * enc.linear_macs(n_enc),
               encoder_attention=enc.depth * enc.attention_macs(n_enc))
    if dec is None:
        # Classifier: mean pooling, then fc_norm and the head on one vector per clip.
        out["head"] = enc.width * s.head_out
        if count == "fvcore":
            out["norm"] = 5 * (2 * enc.depth * n + 1) * enc.width
        return out
    n_seq = n_enc + n_dec
    out.update(decoder_linear=n_enc * enc.width * dec.width + dec.depth * dec.linear_macs(n_seq),
               decoder_attention=dec.depth * dec.attention_macs(n_seq),
               head=n_dec * dec.width * s.head_out)
    if count == "fvcore":
        # Two norms per block, the encoder's final norm, the decoder's norm on N_dec tokens.
        out["norm"] = 5 * ((2 * enc.depth + 1) * n_enc * enc.width
                           + (2 * dec.depth * n_seq + n_dec) * dec.width)
    return out


def forward_macs(model, encoder_mask_ratio: float | None = None, decoder_mask_ratio: float | None = None,
                 frames: int | None = None, img_size: int | None = None, **kwargs) -> int:
    """Total MACs per clip of one forward pass (see `macs_breakdown` for the arguments)."""
    return sum(macs_breakdown(model, encoder_mask_ratio, decoder_mask_ratio, frames, img_size,
                              **kwargs).values())


class TrainFlops(NamedTuple):
    model: int      # 2 x 3 x forward MACs: the work the step needs (MFU)
    hardware: int   # model + 2 x the MACs of re-running the checkpointed blocks (HFU)


def _checkpointed(depth: int, checkpointing) -> int:
    """Blocks of a stack that activation checkpointing recomputes: all, none, or every k-th."""
    if checkpointing in ("none", None):
        return 0
    if checkpointing == "full":
        return depth
    # k: an int, or a string of digits (the CLI flag).
    k = int(checkpointing) if isinstance(checkpointing, int) or str(checkpointing).isdigit() else 0
    if k < 1 or isinstance(checkpointing, bool):
        raise ConfigError(f"checkpointing must be 'none', 'full' or a block interval k >= 1, "
                         f"got {checkpointing!r}")
    return depth // k          # blocks k, 2k, ... (1-based) of each stack, like torchtitan's ac_freq


def train_flops(model, encoder_mask_ratio: float | None = None, decoder_mask_ratio: float | None = None,
                frames: int | None = None, img_size: int | None = None, *, checkpointing="none",
                reentrant: bool = False, num_classes: int | None = None,
                count: str = "engine") -> TrainFlops:
    """Training FLOPs per clip: forward + backward = 3 forwards, 2 FLOPs per MAC.

    The backward is counted as two forwards, the usual MFU convention. A FLOP counter measures
    two terms more or less: the video needs no gradient, so the embedding's backward is one
    matmul, not two (- 2 x patch_embed MACs), and a FlashAttention backward recomputes Q K^T
    (+ attention MACs). `checkpointing` ("none", "full" or k: every k-th block of the encoder
    and of the decoder) adds the recompute of those blocks to `hardware`: with torch's
    non-reentrant checkpoint (the engine's), recomputation stops once the tensors the backward
    needs are rebuilt, so a block's last matmul (fc2) is not re-run (measured, tests/test_flops.py);
    `reentrant=True` (the official code's checkpoint) re-runs the whole block.
    """
    macs = forward_macs(model, encoder_mask_ratio, decoder_mask_ratio, frames, img_size,
                        num_classes=num_classes, count=count)
    s = _shape_of(model, frames, img_size, num_classes)
    n_enc, n_dec = _tokens(s, encoder_mask_ratio, decoder_mask_ratio)
    recompute = 0
    for stack, n in ((s.encoder, n_enc), (s.decoder, n_enc + n_dec)):
        if stack is not None:
            block = stack.linear_macs(n) + stack.attention_macs(n)
            if not reentrant:
                block -= n * stack.mlp_hidden * stack.width
            recompute += block * _checkpointed(stack.depth, checkpointing)
    return TrainFlops(6 * macs, 6 * macs + 2 * recompute)


# Dense (no sparsity) peak throughput per GPU from NVIDIA's data sheets, TFLOP/s. bf16 / fp16 /
# tf32 on tensor cores; fp32 on the CUDA cores. Rows are tried in order; a name matches a row
# when it contains every "need" substring and no "avoid" one (NVL boards run at lower clocks).
_PEAKS = (
    (("H100", "PCIE"), ("NVL",), {"bf16": 756, "fp16": 756, "tf32": 378, "fp32": 51.2}),
    (("H100",), ("NVL",), {"bf16": 989, "fp16": 989, "tf32": 494.7, "fp32": 66.9}),
    (("H200",), ("NVL",), {"bf16": 989, "fp16": 989, "tf32": 494.7, "fp32": 66.9}),
    (("A100",), (), {"bf16": 312, "fp16": 312, "tf32": 156, "fp32": 19.5}),
)


def peak_flops(device_name: str, dtype: str = "bf16") -> float:
    """Peak FLOP/s of one GPU, matched on substrings of `torch.cuda.get_device_name()`."""
    if dtype not in _PEAKS[0][2]:
        raise ConfigError(f"dtype must be one of {', '.join(_PEAKS[0][2])}, got {dtype!r}")
    name = device_name.upper()
    for need, avoid, peaks in _PEAKS:
        if all(x in name for x in need) and not any(x in name for x in avoid):
            return peaks[dtype] * 1e12
    raise ConfigError(f"no peak FLOP/s known for {device_name!r}: the table in vmae2_fast/flops.py "
                     f"(_PEAKS) has A100, H100 SXM, H100 PCIe and H200; pass the peak yourself "
                     f"(--peak-tflops, or mfu(..., peak=...))")


# Memory per GPU, GiB: what torch.cuda.get_device_properties().total_memory reports (the HBM
# less what the driver reserves), rounded down; matched like _PEAKS. The A100 comes in two sizes.
_MEMORY_GIB = (
    (("A100", "40G"), (), 39.4),
    (("A100",), (), 79.1),
    (("H100", "NVL"), (), 93.0),
    (("H100",), (), 79.1),
    (("H200",), (), 139.8),
)
GPU_NAMES = ("A100-40GB", "A100-80GB", "H100", "H100-PCIe", "H200")


def gpu_memory_bytes(device_name: str) -> int:
    """Memory of one GPU named like `torch.cuda.get_device_name()` (or a `GPU_NAMES` entry)."""
    name = device_name.upper()
    for need, avoid, gib in _MEMORY_GIB:
        if all(x in name for x in need) and not any(x in name for x in avoid):
            return int(gib * 2 ** 30)
    raise ConfigError(f"no memory size known for {device_name!r}: the table in vmae2_fast/flops.py "
                     f"(_MEMORY_GIB) has {', '.join(GPU_NAMES)}; pass --memory-gib")


def mfu(clips_per_s: float, flops_per_clip: float, peak: float) -> float:
    """Fraction of the peak spent on useful work: clips/s x FLOPs per clip / peak FLOP/s (one GPU)."""
    if clips_per_s <= 0 or flops_per_clip <= 0 or peak <= 0:
        raise ValueError(f"clips/s, FLOPs per clip and peak must be > 0, got {clips_per_s}, "
                         f"{flops_per_clip}, {peak}")
    return clips_per_s * flops_per_clip / peak


def _report(a: argparse.Namespace) -> None:
    peak, where = None, ""
    if a.clips_per_s is not None:                   # find the peak first: its error before the table
        if a.peak_tflops is not None:
            peak, where = a.peak_tflops * 1e12, "given peak"
        else:
            gpu = a.gpu or _current_gpu()
            peak, where = peak_flops(gpu, a.dtype), f"{gpu} {a.dtype}"
    kw = dict(num_classes=a.num_classes, count=a.count)
    ratios = (a.encoder_mask_ratio, a.decoder_mask_ratio, a.frames, a.img_size)
    parts = macs_breakdown(a.model, *ratios, **kw)
    train = train_flops(a.model, *ratios, checkpointing=a.checkpointing, reentrant=a.reentrant, **kw)
    what = f"classifier, {a.num_classes} classes" if a.num_classes is not None else \
        f"pre-training, mask ratios {a.encoder_mask_ratio} / {a.decoder_mask_ratio}"
    print(f"{a.model} ({what}), {a.frames}x{a.img_size}^2, {a.count} count: forward MACs per clip")
    for name in PARTS:
        if parts[name]:
            print(f"  {name:<18} {parts[name] / 1e9:10.3f} G")
    print(f"  {'total':<18} {sum(parts.values()) / 1e9:10.3f} G")
    how = f"checkpointing={a.checkpointing}" + (", reentrant" if a.reentrant else "")
    print(f"training per clip: {train.model / 1e12:.4f} TFLOP (model, 6 x MACs), "
          f"{train.hardware / 1e12:.4f} TFLOP with the recompute of {how}")
    if peak is not None:
        print(f"at {a.clips_per_s} clips/s per GPU ({where}, {peak / 1e12:g} TFLOP/s): "
              f"MFU {100 * mfu(a.clips_per_s, train.model, peak):.1f} %, "
              f"HFU {100 * mfu(a.clips_per_s, train.hardware, peak):.1f} %")


def _current_gpu() -> str:
    import torch
    if not torch.cuda.is_available():
        raise ConfigError("no GPU here to read the peak from: pass --gpu NAME or --peak-tflops")
    return torch.cuda.get_device_name()


def main(argv=None) -> int:
    from .cli import exit_code
    p = argparse.ArgumentParser(prog="python -m vmae2_fast.flops",
                                description="MACs per clip (paper's FLOPs), training FLOPs, MFU")
    p.add_argument("--model", required=True, help="zoo name (vit_s ... vit_g, vit_micro) or official alias")
    p.add_argument("--encoder-mask-ratio", type=float, default=0.9)
    p.add_argument("--decoder-mask-ratio", type=float, default=0.5, help="0: VideoMAE V1 decoding")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=None, help="count the classifier, not pre-training")
    p.add_argument("--checkpointing", default="none", help="none, full, or k: every k-th block")
    p.add_argument("--reentrant", action="store_true",
                   help="reentrant checkpoint (the official code's): recompute whole blocks")
    p.add_argument("--count", choices=COUNTS, default="engine",
                   help="engine: what vmae2_fast computes; fvcore: the paper's count of the official model")
    p.add_argument("--clips-per-s", type=float, default=None, help="measured clips/s per GPU: print MFU")
    p.add_argument("--gpu", default=None, help="device name for the peak table (default: this GPU)")
    p.add_argument("--dtype", default="bf16", help="bf16, fp16, tf32 or fp32")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s per GPU (overrides --gpu)")
    return exit_code(_report, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
