"""Mixup / CutMix for video batches and the soft-target cross-entropy (fine-tuning recipe).

Behaviour of the official recipe (timm ``Mixup`` in ``mode='batch'`` on ``(B, C*T, H, W)``):

* with probability ``prob`` a batch is mixed; then CutMix is chosen with probability
  ``switch_prob`` (when both alphas are > 0), else Mixup;
* ``lam ~ Beta(alpha, alpha)``; sample ``i`` is mixed with sample ``B-1-i`` (the batch flipped);
* CutMix pastes one box, the SAME box in every frame; ``lam`` is then corrected to the kept area;
* targets are one-hot with label smoothing (``off = s / K``, ``on = 1 - s + off``), mixed with the
  same ``lam``.

Written from that description (no timm dependency). Random draws come from a NumPy generator
seeded by ``(seed, call index)``, so a resumed run mixes exactly as an uninterrupted one; lam
and the box are host numbers, so mixing adds no device-to-host sync.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["VideoMixup", "smoothed_one_hot", "soft_target_cross_entropy", "cutmix_box"]


def smoothed_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    out = torch.full((labels.shape[0], num_classes), off, device=labels.device, dtype=torch.float32)
    return out.scatter_(1, labels.long().view(-1, 1), on)


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean_i sum_k -target[i, k] * log_softmax(logits)[i, k]`` (computed in float32)."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def cutmix_box(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box ``(y0, y1, x0, x1)`` of about ``(1 - lam)`` of the area, centre uniform, clipped."""
    ratio = math.sqrt(1.0 - lam)
    ch, cw = int(h * ratio), int(w * ratio)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = int(np.clip(cy - ch // 2, 0, h)), int(np.clip(cy + ch // 2, 0, h))
    x0, x1 = int(np.clip(cx - cw // 2, 0, w)), int(np.clip(cx + cw // 2, 0, w))
    return y0, y1, x0, x1


class VideoMixup:
    """Callable ``(video (B, C, T, H, W), labels (B,)) -> (mixed video, soft targets (B, K))``."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 prob: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.1,
                 seed: int = 0):
        if num_classes < 1:
            raise ValueError("mixup needs num_classes >= 1")
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob = float(prob), float(switch_prob)
        self.smoothing = float(label_smoothing)
        self.seed = int(seed)
        self.calls = 0                      # saved with the stage: resume replays the same draws

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def draw(self, rng: np.random.Generator) -> tuple[float, bool]:
        """``(lam, use_cutmix)`` for one batch; ``lam == 1`` means no mixing."""
        if not self.active or rng.random() >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = bool(rng.random() < self.switch_prob)
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(rng.beta(alpha, alpha)), use_cutmix

    def __call__(self, video: torch.Tensor, labels: torch.Tensor):
        if video.shape[0] % 2:
            raise ValueError(f"mixup needs an even batch, got {video.shape[0]} clips "
                             "(batch size x --num-sample must be even)")
        rng = np.random.default_rng([self.seed, self.calls])
        self.calls += 1
        lam, use_cutmix = self.draw(rng)
        if lam < 1.0:
            flipped = video.flip(0)
            if use_cutmix:
                h, w = video.shape[-2:]
                y0, y1, x0, x1 = cutmix_box(h, w, lam, rng)
                video = video.clone()
                # The same box in every frame (and channel).
                video[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
                lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
            else:
                video = video * lam + flipped * (1.0 - lam)
        y1 = smoothed_one_hot(labels, self.num_classes, self.smoothing)
        target = y1 * lam + y1.flip(0) * (1.0 - lam)
        return video, target

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state["calls"])
