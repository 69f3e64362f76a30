"""A tiny stand-in for a checkout of OpenGVLab/VideoMAEv2, written into a temporary folder.

It has the official module layout and the import lines the benchmark's loader must cope with
(the four timm helpers, timm's ImageNet constants, an `import utils` that cannot be imported
here), but its contents are ours: the model is vmae2_fast's own behind the official
constructor arguments and boolean-mask call, the mask generators return fixed patterns, and
the engine computes the documented official target and loss in plain torch. Statements before
and after the loss raise if they run, so a test sees that only the loss statements were taken.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

FINETUNE = '''
from timm.models.layers import drop_path, to_2tuple, trunc_normal_
from timm.models.registry import register_model

HELPERS = (drop_path, to_2tuple, trunc_normal_, register_model)
'''

PRETRAIN = '''
from vmae2_fast.masking import as_indices
from vmae2_fast.models.pretrain import PretrainVisionTransformer as _Ours

from .modeling_finetune import HELPERS


class PretrainVisionTransformer(_Ours):
    """Official constructor keywords and (B, N) boolean masks, vmae2_fast's computation."""

    def __init__(self, img_size, patch_size, encoder_embed_dim, encoder_depth, encoder_num_heads,
                 decoder_num_classes, decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio,
                 qkv_bias, norm_layer, tubelet_size, all_frames, encoder_num_classes=0):
        super().__init__(img_size=img_size, patch_size=patch_size, num_frames=all_frames,
                         tubelet_size=tubelet_size, encoder_embed_dim=encoder_embed_dim,
                         encoder_depth=encoder_depth, encoder_num_heads=encoder_num_heads,
                         decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
                         decoder_num_heads=decoder_num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                         norm_eps=norm_layer(4).eps, decoder_num_classes=decoder_num_classes)
        self.init_kwargs = dict(img_size=img_size, patch_size=patch_size, encoder_embed_dim=encoder_embed_dim,
                                encoder_depth=encoder_depth, decoder_num_classes=decoder_num_classes,
                                decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
                                mlp_ratio=mlp_ratio, all_frames=all_frames, eps=norm_layer(4).eps)

    def forward(self, x, mask, decode_mask):
        return super().forward(x, as_indices(mask), as_indices(decode_mask))
'''

MASKING = '''
import numpy as np


class TubeMaskingGenerator:
    def __init__(self, input_size, mask_ratio):
        self.t, self.h, self.w = input_size
        self.n_mask = int(mask_ratio * self.h * self.w)

    def __call__(self):
        row = np.hstack([np.zeros(self.h * self.w - self.n_mask), np.ones(self.n_mask)])
        np.random.shuffle(row)
        return np.tile(row, (self.t, 1))


class RunningCellMaskingGenerator:
    """Every second token of every slot is decoded (a fixed pattern is enough for the plumbing)."""

    def __init__(self, input_size, mask_ratio=0.5):
        self.t, self.h, self.w = input_size

    def __call__(self):
        return np.tile(np.arange(self.h * self.w) % 2, (self.t, 1)).astype(np.float64)
'''

ENGINE = '''
import torch
import utils  # the real engine imports it; it cannot be imported here and must not be needed
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
{extra_import}

def train_one_epoch(model, data_loader, optimizer, device, epoch, loss_scaler, max_norm=0, patch_size=16,
                    normlize_target=True, start_steps=None):
    for step, batch in enumerate(data_loader):
        it = start_steps + step  # start_steps is None: raises if this statement is run
        images, bool_masked_pos, decode_masked_pos = batch
        images = images.to(device, non_blocking=True)
        bool_masked_pos = bool_masked_pos.to(device).flatten(1).to(torch.bool)
        decode_masked_pos = decode_masked_pos.to(device).flatten(1).to(torch.bool)
        with torch.no_grad():
            mean = torch.as_tensor(IMAGENET_DEFAULT_MEAN).to(device)[None, :, None, None, None]
            std = torch.as_tensor(IMAGENET_DEFAULT_STD).to(device)[None, :, None, None, None]
            un = images * std + mean
            B, C, T, H, W = un.shape
            p = patch_size
            sq = un.reshape(B, C, T // 2, 2, H // p, p, W // p, p).permute(0, 2, 4, 6, 3, 5, 7, 1)
            sq = sq.reshape(B, -1, 2 * p * p, C)
            if normlize_target:
                sq = (sq - sq.mean(dim=-2, keepdim=True)) / (sq.var(dim=-2, unbiased=True, keepdim=True).sqrt()
                                                             + 1e-6)
            patches = sq.reshape(B, sq.shape[1], -1)
            labels = patches[~decode_masked_pos].reshape(B, -1, patches.shape[-1])
        {loss_test}:
            outputs = model(images, bool_masked_pos, decode_masked_pos)
            loss = ((outputs - labels) ** 2).mean(dim=-1)
            weight = bool_masked_pos[~decode_masked_pos].reshape(B, -1)
            loss = (loss * weight).sum() / weight.sum()
        else:
            raise RuntimeError("the loss-scaler branch ran")
        raise RuntimeError("a statement after the loss ran")
'''


def make_fake_checkout(root: Path, *, loss_test: str = "if loss_scaler is None", extra_import: str = "",
                       skip: tuple[str, ...] = ()) -> Path:
    """Write the stand-in checkout under `root`; `skip` leaves files out, the keywords vary the engine."""
    files = {"models/modeling_finetune.py": FINETUNE, "models/modeling_pretrain.py": PRETRAIN,
             "dataset/masking_generator.py": MASKING,
             "engine_for_pretraining.py": ENGINE.format(loss_test=loss_test, extra_import=extra_import)}
    for rel, text in files.items():
        if rel in skip:
            continue
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root
