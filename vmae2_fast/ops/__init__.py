"""The fused ops of VideoMAE V2 pre-training, one file each: its reference (the spec), its one
torch.library registration and autograd, and its backends (Triton in kernels/, C++ in csrc/).

    visible_patch_embed  ops/patch_embed.py       the encoder's tokens for the visible cubes only
    decoder_input        ops/decoder_assembly.py  the decoder's sequence, visible tokens first
    masked_mse           ops/masked_loss.py       the normalised masked MSE, targets only for
                                                  the decoded tokens

The model and the loss call these, never a backend directly; `use_backend` (or the `backend`
context manager) chooses the implementation, see `ops/backends.py`. Any MAE-style model can call
them: they take index tensors (see `vmae2_fast.masking`), never boolean maps.
"""
from __future__ import annotations

from .backends import BACKENDS, active_backend, backend, use_backend
from .decoder_assembly import decoder_input
from .masked_loss import loss_token_count, masked_mse, masked_mse_per_token, normalized_targets
from .patch_embed import visible_patch_embed

__all__ = ["BACKENDS", "active_backend", "backend", "use_backend", "visible_patch_embed",
           "decoder_input", "masked_mse", "masked_mse_per_token", "normalized_targets",
           "loss_token_count"]
