"""The VideoMAE V2 video classifier (fine-tuning / evaluation model), official key names."""
from __future__ import annotations

import torch
import torch.nn as nn

from .vit import (PatchEmbed, checkpoint_policy, make_blocks, position_table, run_blocks,
                  set_position_table, trunc_normal_init_)


class VisionTransformer(nn.Module):
    """The official classifier. Options at their official defaults: ``use_mean_pooling=False``
    takes ``norm`` of the FIRST PATCH token (the official code has no cls token), layer scale
    (``init_values``), ``learnable_pos_emb``, ``qk_scale``, ``cos_attn`` (see `vit.Block`)."""

    def __init__(self, img_size=224, patch_size=16, num_frames=16, tubelet_size=2, in_chans=3,
                 num_classes=400, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True,
                 norm_eps=1e-6, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
                 head_drop_rate=0.0, use_mean_pooling=True, init_scale=0.001,
                 activation_checkpointing=False, init_values=0.0, learnable_pos_emb=False,
                 qk_scale=None, cos_attn=False):
        super().__init__()
        self.num_classes = num_classes
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, num_frames, tubelet_size)
        set_position_table(self, position_table(self.patch_embed.num_patches, embed_dim, learnable_pos_emb))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = make_blocks(depth, embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path_rate,
                                  norm_eps, drop_rate, attn_drop_rate, init_values=init_values,
                                  qk_scale=qk_scale, cos_attn=cos_attn)
        # Official layout: mean pooling -> norm is Identity and fc_norm holds the LayerNorm.
        self.norm = nn.Identity() if use_mean_pooling else nn.LayerNorm(embed_dim, eps=norm_eps)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if use_mean_pooling else None
        self.head_dropout = nn.Dropout(head_drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.use_mean_pooling = use_mean_pooling
        # 'none' | 'full' | K (every K-th block); booleans are accepted (True: 'full')
        self.activation_checkpointing = checkpoint_policy(activation_checkpointing)
        self.apply(trunc_normal_init_)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(init_scale)
                self.head.bias.mul_(init_scale)

    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}

    def get_num_layers(self) -> int:
        return len(self.blocks)

    def forward_features(self, video):
        """The pooled clip feature (B, C): fc_norm of the token mean (or norm of the first token)."""
        x = self.patch_embed(video)
        x = self.pos_drop(x + self.pos_embed.to(x.dtype))
        x = run_blocks(self.blocks, x, self.activation_checkpointing)
        if self.use_mean_pooling:
            return self.fc_norm(x.mean(1))
        return self.norm(x[:, 0])

    def forward(self, video):
        return self.head(self.head_dropout(self.forward_features(video)))
