"""Model EMA: the official `--model_ema` (timm's ModelEma, decay 0.9999 by default).

After every optimiser step every entry of the state dict (parameters and persistent buffers)
becomes ``decay * ema + (1 - decay) * model``, as timm's ``ModelEma.update`` computes it; here
with two fused multi-tensor ops on the device instead of a Python loop over the entries (no host
sync). The average starts from the model as it is when the EMA is made (after loading the
initial weights, before any wrapping), lives on the same device, is never trained, and is saved
under the checkpoint key ``model_ema`` (the official name).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

__all__ = ["ModelEma"]


class ModelEma:
    def __init__(self, model: nn.Module, decay: float = 0.9999):
        if not 0 <= decay < 1:
            raise ValueError(f"the EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._pairs = None

    def _tensors(self, model: nn.Module):
        """(ema floats, model floats, ema others, model others), matched by state-dict key; the
        tensors share storage with the modules, so the lists stay valid across steps."""
        if self._pairs is None:
            src = model.state_dict()
            dst = self.module.state_dict()
            if src.keys() != dst.keys():
                raise ValueError("the EMA and the model have different state-dict keys")
            floats = [k for k in dst if dst[k].is_floating_point()]
            others = [k for k in dst if not dst[k].is_floating_point()]
            self._pairs = ([dst[k] for k in floats], [src[k] for k in floats],
                           [dst[k] for k in others], [src[k] for k in others])
        return self._pairs

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema, src, ema_other, src_other = self._tensors(model)
        torch._foreach_mul_(ema, self.decay)
        torch._foreach_add_(ema, src, alpha=1.0 - self.decay)
        for e, s in zip(ema_other, src_other):
            e.copy_(s)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state, strict=True)
