"""Frames decoded the plain way, for tests that rebuild what a CLI fed its model: every frame of
the video with PyAV's own decode loop (not vmae2_fast.data.video_io), as float (T, 3, H, W) in
0..255, and the two pixel normalisations the CLIs offer."""
from __future__ import annotations

import av
import numpy as np
import torch

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def all_frames(path) -> torch.Tensor:
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()


def to_model_input(clip: torch.Tensor, imagenet_norm: bool = True) -> torch.Tensor:
    """(T, 3, H, W) in 0..255 -> (3, T, H, W): ImageNet-normalised, or [0, 1] pixels."""
    x = clip / 255.0
    if imagenet_norm:
        x = (x - MEAN) / STD
    return x.permute(1, 0, 2, 3)
