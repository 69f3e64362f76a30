"""The VideoMAE V2 pre-training model (encoder, bridge, decoder) with dual masking.

Same parameters, key names and function as the official `PretrainVisionTransformer`; the
differences are in how it is computed: masks arrive as sorted index tensors, only the visible
cubes are embedded, the position tables are device buffers gathered by index, and the loss
builds targets only for the decoded tokens (all through `vmae2_fast.ops`).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .. import ops
from ..masking import as_indices, complement_indices, num_tokens
from .vit import (PatchEmbed, checkpoint_policy, make_blocks, position_table, run_blocks,
                  set_position_table, sinusoid_table, xavier_init_)


class PretrainEncoder(nn.Module):
    def __init__(self, img_size, patch_size, num_frames, tubelet_size, embed_dim, depth, num_heads,
                 mlp_ratio, qkv_bias, norm_eps, drop_path_rate, in_chans=3, learnable_pos_emb=False,
                 **block_options):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, num_frames, tubelet_size)
        # A learned table is (1, N, C): the official (1, N + 1, C) cannot be added to N tokens.
        set_position_table(self, position_table(self.patch_embed.num_patches, embed_dim, learnable_pos_emb))
        self.blocks = make_blocks(depth, embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path_rate, norm_eps,
                                  **block_options)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head = nn.Identity()  # the official encoder_num_classes=0
        self.apply(xavier_init_)

    def forward(self, video, vis_idx, activation_checkpointing=False):
        self.patch_embed.check_input(video)
        proj = self.patch_embed.proj
        x = ops.visible_patch_embed(video, proj.weight, proj.bias, self.pos_embed, vis_idx,
                                    self.patch_embed.tubelet_size)
        x = run_blocks(self.blocks, x, activation_checkpointing)
        return self.head(self.norm(x))


class PretrainDecoder(nn.Module):
    def __init__(self, embed_dim, depth, num_heads, num_outputs, mlp_ratio, qkv_bias, norm_eps,
                 drop_path_rate, **block_options):
        super().__init__()
        self.blocks = make_blocks(depth, embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path_rate, norm_eps,
                                  **block_options)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head = nn.Linear(embed_dim, num_outputs)
        self.apply(xavier_init_)

    def forward(self, x, num_predicted, activation_checkpointing=False):
        x = run_blocks(self.blocks, x, activation_checkpointing)
        # Only the trailing mask tokens are normalised and projected (as the official code does).
        return self.head(self.norm(x[:, -num_predicted:]))


class PretrainVisionTransformer(nn.Module):
    def __init__(self, img_size=224, patch_size=16, num_frames=16, tubelet_size=2, in_chans=3,
                 encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12,
                 decoder_embed_dim=384, decoder_depth=4, decoder_num_heads=6, mlp_ratio=4.0,
                 qkv_bias=True, norm_eps=1e-6, drop_path_rate=0.0, decoder_num_classes=None,
                 normalize_target=True, activation_checkpointing=False, init_values=0.0,
                 learnable_pos_emb=False, qk_scale=None, cos_attn=False):
        """The official options (layer scale, qk_scale, cos_attn) apply to the encoder and the
        decoder blocks, as officially; ``learnable_pos_emb`` to the encoder's table only."""
        super().__init__()
        opts = dict(init_values=init_values, qk_scale=qk_scale, cos_attn=cos_attn)
        out = in_chans * tubelet_size * patch_size ** 2
        if decoder_num_classes is not None and decoder_num_classes != out:
            raise ValueError(f"decoder_num_classes must be 3*tubelet*p*p = {out}, got {decoder_num_classes}")
        self.encoder = PretrainEncoder(img_size, patch_size, num_frames, tubelet_size, encoder_embed_dim,
                                       encoder_depth, encoder_num_heads, mlp_ratio, qkv_bias, norm_eps,
                                       drop_path_rate, in_chans, learnable_pos_emb, **opts)
        self.decoder = PretrainDecoder(decoder_embed_dim, decoder_depth, decoder_num_heads, out, mlp_ratio,
                                       qkv_bias, norm_eps, drop_path_rate, **opts)
        # Official init: encoder_to_decoder keeps PyTorch's default Linear init (not xavier).
        self.encoder_to_decoder = nn.Linear(encoder_embed_dim, decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        # Official: truncated at +-1 sigma (a=-std, b=+std), not timm's +-2 absolute.
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        n = self.encoder.patch_embed.num_patches
        self.register_buffer("pos_embed", sinusoid_table(n, decoder_embed_dim), persistent=False)
        self.grid = self.encoder.patch_embed.grid
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.normalize_target = normalize_target
        # 'none' | 'full' | K (every K-th block); booleans are accepted (True: 'full')
        self.activation_checkpointing = checkpoint_policy(activation_checkpointing)

    @property
    def num_tokens(self) -> int:
        return num_tokens(self.grid)

    def no_weight_decay(self):
        return {"mask_token", "pos_embed", "cls_token", "encoder.pos_embed"}

    def forward(self, video, vis_idx, dec_idx):
        """Predictions for the decoded tokens, (B, N_dec, 3*t*p*p), in ascending token order."""
        ckpt = self.activation_checkpointing
        z = self.encoder(video, vis_idx, ckpt)
        seq = ops.decoder_input(z, self.encoder_to_decoder.weight, self.pos_embed, vis_idx, dec_idx,
                                self.mask_token)
        return self.decoder(seq, dec_idx.shape[1], ckpt)

    def loss(self, pred, video, vis_idx, dec_idx, denominator=None):
        return ops.masked_mse(pred, video, vis_idx, dec_idx, self.patch_size, self.tubelet_size,
                              normalize=self.normalize_target, denominator=denominator)

    def forward_loss(self, video, encoder_mask, decoder_mask=None):
        """(loss, pred) for masks given as index tensors or official boolean maps (True = masked).

        encoder_mask: visible indices (B, N_vis) or the tube map (B, N).
        decoder_mask: decoded indices (B, N_dec), or the running-cell map (B, N) whose False
        entries are decoded; None means VideoMAE V1 (decode every encoder-masked token).
        """
        vis_idx = as_indices(encoder_mask).to(video.device)
        if decoder_mask is None:
            dec_idx = complement_indices(vis_idx, self.num_tokens)
        else:
            dec_idx = as_indices(decoder_mask).to(video.device)
        pred = self(video, vis_idx, dec_idx)
        return self.loss(pred, video, vis_idx, dec_idx), pred
