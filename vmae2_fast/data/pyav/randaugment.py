"""Video RandAugment: the ops of the official ``rand-m7-n4-mstd0.5-inc1`` policy, with ONE draw of
op, magnitude and sign per clip applied identically to every frame (PIL, full resolution).

Policy string ``rand-m{M}-n{N}[-mstd{S}][-inc{0|1}]``: N ops drawn with replacement from the
15-op "increasing" list, each applied with probability 0.5, magnitude ~ N(M, S) clipped to
[0, 10] per op call. Fill colour (128, 128, 128), bicubic resampling for geometric ops. Our own
implementation of the published behaviour; the magnitude-to-parameter maps follow it (rotate up
to 30 degrees, shear 0.3, translate 0.45 of the side, enhance factors 1 +- 0.9, ...).
"""
from __future__ import annotations

import re
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from ...errors import ConfigError

__all__ = ["VideoRandAugment", "parse_policy"]

_FILL = (128, 128, 128)
_MAX = 10.0


def _signed(v: float, rng: np.random.Generator) -> float:
    return -v if rng.random() < 0.5 else v


def _affine(img: Image.Image, m) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, m, resample=Image.Resampling.BICUBIC,
                         fillcolor=_FILL)


# Each op: (name, param_fn(magnitude, rng) -> param, apply(img, param) -> img). The param is drawn
# once per clip and every frame gets the same one.
def _ops():
    enh = lambda cls: (lambda m, r: 1.0 + _signed(m / _MAX * 0.9, r),        # noqa: E731
                       lambda im, f: cls(im).enhance(f))
    return [
        ("AutoContrast", lambda m, r: None, lambda im, p: ImageOps.autocontrast(im)),
        ("Equalize", lambda m, r: None, lambda im, p: ImageOps.equalize(im)),
        ("Invert", lambda m, r: None, lambda im, p: ImageOps.invert(im)),
        ("Rotate", lambda m, r: _signed(m / _MAX * 30.0, r),
         lambda im, a: im.rotate(a, resample=Image.Resampling.BICUBIC, fillcolor=_FILL)),
        ("PosterizeIncreasing", lambda m, r: 4 - int(m / _MAX * 4),
         lambda im, b: ImageOps.posterize(im, max(b, 1)) if b < 8 else im),
        ("SolarizeIncreasing", lambda m, r: 256 - int(m / _MAX * 256),
         lambda im, t: ImageOps.solarize(im, t)),
        ("SolarizeAdd", lambda m, r: int(m / _MAX * 110), _solarize_add),
        ("ColorIncreasing",) + enh(ImageEnhance.Color),
        ("ContrastIncreasing",) + enh(ImageEnhance.Contrast),
        ("BrightnessIncreasing",) + enh(ImageEnhance.Brightness),
        ("SharpnessIncreasing",) + enh(ImageEnhance.Sharpness),
        ("ShearX", lambda m, r: _signed(m / _MAX * 0.3, r), lambda im, s: _affine(im, (1, s, 0, 0, 1, 0))),
        ("ShearY", lambda m, r: _signed(m / _MAX * 0.3, r), lambda im, s: _affine(im, (1, 0, 0, s, 1, 0))),
        ("TranslateXRel", lambda m, r: _signed(m / _MAX * 0.45, r),
         lambda im, p: _affine(im, (1, 0, p * im.size[0], 0, 1, 0))),
        ("TranslateYRel", lambda m, r: _signed(m / _MAX * 0.45, r),
         lambda im, p: _affine(im, (1, 0, 0, 0, 1, p * im.size[1]))),
    ]


def _solarize_add(img: Image.Image, add: int, thresh: int = 128) -> Image.Image:
    lut = [min(255, i + add) if i < thresh else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


def parse_policy(policy: str) -> Optional[dict]:
    """``'rand-m7-n4-mstd0.5-inc1'`` -> ``{'m': 7.0, 'n': 4, 'mstd': 0.5}``; ``''``/``'none'`` -> None."""
    if not policy or policy.lower() == "none":
        return None
    parts = policy.split("-")
    if parts[0] != "rand":
        raise ConfigError(f"--aa {policy!r}: only RandAugment policies 'rand-m<M>-n<N>[-mstd<S>]"
                         f"[-inc1]' (or 'none') are supported")
    out = {"m": 9.0, "n": 2, "mstd": 0.0}
    for part in parts[1:]:
        match = re.fullmatch(r"(mstd|m|n|inc)([0-9.]+)", part)
        if not match:
            raise ConfigError(f"--aa {policy!r}: cannot parse {part!r}")
        key, value = match.groups()
        if key == "inc":
            if value != "1":
                raise ConfigError(f"--aa {policy!r}: only the 'increasing' op set (inc1) is supported")
            continue
        out[key] = int(value) if key == "n" else float(value)
    return out


class VideoRandAugment:
    def __init__(self, magnitude: float = 7.0, num_ops: int = 4, magnitude_std: float = 0.5,
                 prob: float = 0.5):
        self.magnitude, self.num_ops, self.magnitude_std, self.prob = magnitude, num_ops, magnitude_std, prob
        self.ops = _ops()

    @classmethod
    def from_policy(cls, policy: str) -> Optional["VideoRandAugment"]:
        p = parse_policy(policy)
        return None if p is None else cls(p["m"], p["n"], p["mstd"])

    def plan(self, rng: np.random.Generator) -> List[tuple]:
        """The clip's ops with their parameters: ``[(name, apply, param), ...]``."""
        chosen = []
        for k in rng.integers(len(self.ops), size=self.num_ops):
            name, param_fn, apply = self.ops[int(k)]
            if rng.random() >= self.prob:
                continue
            m = self.magnitude
            if self.magnitude_std > 0:
                m = rng.normal(m, self.magnitude_std)
            m = float(np.clip(m, 0.0, _MAX))
            chosen.append((name, apply, param_fn(m, rng)))
        return chosen

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint8 ``(T, H, W, 3)`` -> uint8 ``(T, H, W, 3)``, one plan for every frame."""
        plan = self.plan(rng)
        if not plan:
            return frames
        return np.stack([_apply_plan(Image.fromarray(f), plan) for f in frames])


def _apply_plan(img: Image.Image, plan: Sequence[tuple]) -> np.ndarray:
    for _, apply, param in plan:
        img = apply(img, param)
    return np.asarray(img)
