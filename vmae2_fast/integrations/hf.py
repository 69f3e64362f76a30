"""Hugging Face transformers: VideoMAEForPreTraining and ViTMAEForPreTraining.

The patched methods are bound to the given instance only (other instances and the classes are
untouched), and compute the same function as transformers' own forward:

- VideoMAE: the encoder embeds only the visible cubes (no full Conv3d over every token, no
  boolean indexing of the token grid), the decoder input is assembled by `ops.decoder_input`, and
  the loss gathers and normalises only the masked cubes (`ops.masked_mse`, VideoMAE V1 weighting:
  every masked token, so the same number as transformers' `MSELoss`).
- ViTMAE: the kept patches are embedded straight from the image by their shuffled indices; with
  `norm_pix_loss=False` (the default) the loss runs through `ops.masked_mse`. ViTMAE's
  `norm_pix_loss=True` normalises over all channels at once with eps on the variance, which is not
  the VideoMAE target, so that loss stays transformers' own (logged once).
"""
from __future__ import annotations

import logging
import sys
import types

import torch

from .. import ops
from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..masking import mask_to_indices

log = logging.getLogger(__name__)


def _table(owner, attr: str, like: torch.Tensor) -> torch.Tensor:
    """transformers keeps some position tables as plain CPU tensors: cache one device copy."""
    cache = owner.__dict__.setdefault("_vmae2_fast_tables", {})
    key = (attr, like.device, like.dtype)
    if key not in cache:
        cache[key] = getattr(owner, attr).detach().to(device=like.device, dtype=like.dtype)
    return cache[key]


def _output_class(model, name):
    return getattr(sys.modules[type(model).__module__], name)


def _check_class(model, name):
    if type(model).__name__ != name and name not in [c.__name__ for c in type(model).__mro__]:
        raise TypeError(f"expected a transformers {name}, got {type(model).__name__}")
    if getattr(model, "_vmae2_fast_patched", False):
        return False
    model._vmae2_fast_patched = True
    return True


# --------------------------------------------------------------------------------------- VideoMAE
def _videomae_embed(self, pixel_values, bool_masked_pos):
    video = pixel_values.permute(0, 2, 1, 3, 4)             # (B, T, C, H, W) -> (B, C, T, H, W) view
    proj = self.patch_embeddings.projection
    n = self.patch_embeddings.num_patches
    if bool_masked_pos is None:
        vis = torch.arange(n, device=video.device).expand(video.shape[0], n)
    else:
        vis = mask_to_indices(bool_masked_pos.to(video.device))
    pos = _table(self, "position_embeddings", video)
    return ops.visible_patch_embed(video, proj.weight, proj.bias, pos, vis,
                                   self.patch_embeddings.tubelet_size)


def _videomae_forward(self, pixel_values, bool_masked_pos, **kwargs):
    if bool_masked_pos is None:
        raise ValueError("VideoMAEForPreTraining needs bool_masked_pos")
    cfg = self.config
    outputs = self.videomae(pixel_values, bool_masked_pos=bool_masked_pos, **kwargs)
    mask = bool_masked_pos.to(pixel_values.device)
    vis, dec = mask_to_indices(mask), mask_to_indices(~mask)  # visible / masked, ascending
    z = outputs.last_hidden_state
    pos = _table(self, "position_embeddings", z)
    seq = ops.decoder_input(z, self.encoder_to_decoder.weight, pos, vis, dec, self.mask_token)
    logits = self.decoder(seq, dec.shape[1]).logits
    c = cfg.num_channels
    if c == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif cfg.norm_pix_loss:
        mean, std = (0.0,) * c, (1.0,) * c
    else:
        raise ValueError("Can't unnormalize non-RGB images. Consider setting config.norm_pix_loss to True.")
    video = pixel_values.detach().permute(0, 2, 1, 3, 4)
    loss = ops.masked_mse(logits, video, vis, dec, cfg.patch_size, cfg.tubelet_size,
                          normalize=cfg.norm_pix_loss, mean=mean, std=std)
    out_cls = _output_class(self, "VideoMAEForPreTrainingOutput")
    return out_cls(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                   attentions=outputs.attentions)


def apply_to_hf_videomae(model):
    """Route a transformers `VideoMAEForPreTraining`'s visible patch embedding, decoder assembly
    and masked loss through the fused ops. Returns the model (patched in place, once)."""
    if _check_class(model, "VideoMAEForPreTraining"):
        emb = model.videomae.embeddings
        emb.forward = types.MethodType(_videomae_embed, emb)
        model.forward = types.MethodType(_videomae_forward, model)
        log.info("vmae2_fast: VideoMAEForPreTraining patched (embedding, decoder input, loss)")
    return model


# ----------------------------------------------------------------------------------------- ViTMAE
def _vitmae_embed(self, pixel_values, noise=None, interpolate_pos_encoding=False):
    if interpolate_pos_encoding:   # resized position tables: transformers' own path, said once
        if not getattr(self, "_vmae2_fast_said_interp", False):
            self._vmae2_fast_said_interp = True
            log.info("vmae2_fast: ViTMAE interpolate_pos_encoding=True uses transformers' embedding")
        return self._vmae2_fast_original_forward(pixel_values, noise, interpolate_pos_encoding)
    b, _, h, w = pixel_values.shape
    if (h, w) != tuple(self.image_size):
        raise ValueError(f"Input image size ({h}*{w}) doesn't match model ({self.image_size[0]}*"
                         f"{self.image_size[1]}).")
    n = self.patch_embeddings.num_patches
    if noise is None:
        noise = torch.rand(b, n, device=pixel_values.device)
    ids_shuffle = torch.argsort(noise, dim=1).to(pixel_values.device)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    keep = ids_shuffle[:, : int(n * (1 - self.config.mask_ratio))]
    proj = self.patch_embeddings.projection
    pos = self.position_embeddings
    x = ops.visible_patch_embed(pixel_values.unsqueeze(2), proj.weight.unsqueeze(2), proj.bias,
                                pos[:, 1:], keep, 1)          # an image is a 1-frame video
    mask = torch.ones(b, n, device=pixel_values.device)
    mask[:, : keep.shape[1]] = 0
    mask = torch.gather(mask, 1, ids_restore)
    cls = (self.cls_token + pos[:, :1]).expand(b, -1, -1)
    return torch.cat([cls, x], dim=1), mask, ids_restore


def _vitmae_forward(self, pixel_values=None, noise=None, interpolate_pos_encoding=None,
                    attention_mask=None, **kwargs):
    if interpolate_pos_encoding:
        return self._vmae2_fast_original_forward(pixel_values, noise, interpolate_pos_encoding,
                                                 attention_mask, **kwargs)
    outputs = self.vit(pixel_values, noise=noise, interpolate_pos_encoding=interpolate_pos_encoding,
                       attention_mask=attention_mask, **kwargs)
    mask, ids_restore = outputs.mask, outputs.ids_restore
    logits = self.decoder(outputs.last_hidden_state, ids_restore,
                          interpolate_pos_encoding=interpolate_pos_encoding).logits
    b, n = mask.shape
    keep = torch.argsort(ids_restore, dim=1)[:, : int(n * (1 - self.config.mask_ratio))]
    every = torch.arange(n, device=mask.device).expand(b, n)     # ViTMAE decodes every patch
    c = self.config.num_channels
    loss = ops.masked_mse(logits, pixel_values.detach().unsqueeze(2), keep, every, self.config.patch_size,
                          1, normalize=False, mean=(0.0,) * c, std=(1.0,) * c)
    out_cls = _output_class(self, "ViTMAEForPreTrainingOutput")
    return out_cls(loss=loss, logits=logits, mask=mask, ids_restore=ids_restore,
                   hidden_states=outputs.hidden_states, attentions=outputs.attentions)


def apply_to_hf_vitmae(model):
    """Route a transformers `ViTMAEForPreTraining`'s kept-patch embedding (and, with
    `norm_pix_loss=False`, its masked loss) through the fused ops. Returns the model."""
    if _check_class(model, "ViTMAEForPreTraining"):
        emb = model.vit.embeddings
        emb._vmae2_fast_original_forward = emb.forward
        emb.forward = types.MethodType(_vitmae_embed, emb)
        if model.config.norm_pix_loss:
            log.info("vmae2_fast: ViTMAE norm_pix_loss=True normalises over all channels with eps on "
                     "the variance (not the VideoMAE target); its loss stays transformers' own")
        else:
            model._vmae2_fast_original_forward = model.forward
            model.forward = types.MethodType(_vitmae_forward, model)
        log.info("vmae2_fast: ViTMAEForPreTraining patched (embedding%s)",
                 "" if model.config.norm_pix_loss else ", loss")
    return model
