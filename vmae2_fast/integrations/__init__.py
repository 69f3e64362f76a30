"""Swap the fused ops into other MAE codebases with one call (in the Liger-Kernel style).

    from vmae2_fast.integrations import apply_to_hf_videomae, apply_to_hf_vitmae
    apply_to_hf_videomae(model)   # transformers VideoMAEForPreTraining
    apply_to_hf_vitmae(model)     # transformers ViTMAEForPreTraining

The model's parameters, state dict, call signature and outputs stay the same; its visible-token
patch embedding (and, for VideoMAE, the decoder assembly) and its masked loss run through
`vmae2_fast.ops` (Triton on CUDA, C++ on CPU, per `ops.use_backend`).
"""
from .hf import apply_to_hf_videomae, apply_to_hf_vitmae

__all__ = ["apply_to_hf_videomae", "apply_to_hf_vitmae"]
