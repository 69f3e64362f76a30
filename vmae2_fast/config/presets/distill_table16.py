"""Distillation: paper Table 16 (the official repository has no distillation code or script).

Student ViT-B, initialised from its K710 post-pre-trained checkpoint, trained on the KL divergence
to the frozen teacher's logits (ViT-g, K710). K710: lr 1e-3, batch 1024 (16 x 64 GPUs); SSv2: lr
5e-4, batch 512 (8 x 64). Shared: AdamW (0.9, 0.999), weight decay 0.05, cosine, 5 warm-up
epochs, 100 epochs, RandAugment, mixup 0.8, cutmix 1.0, drop path 0.1, flip (not SSv2), no
dropout, layer decay 0.75. Learning rates per 256 videos; batch_size is per process. The table
gives no repeated augmentation, label smoothing or erasing: 1 view, none, and the fine-tuning
default 0.25. Only ViT-B students are in the table (the released ViT-S student has no recipe).
"""
from ..datasets import dataset_fields
from .recipe import Recipe

SOURCE = "paper Table 16"
COMMON = dict(input_size=224, num_frames=16, tubelet_size=2, sampling_rate=4, short_side_size=224,
              num_sample=1, aa="rand-m7-n4-mstd0.5-inc1", mixup=0.8, cutmix=1.0, mixup_prob=1.0,
              mixup_switch_prob=0.5, smoothing=0.0, reprob=0.25, betas=(0.9, 0.999), opt_eps=1e-8,
              weight_decay=0.05, weight_decay_end=None, warmup_epochs=5, epochs=100, drop_path=0.1,
              head_drop=0.0, layer_decay=0.75, min_lr=1e-6, warmup_lr=0.0, clip_grad=None,
              init_scale=0.001, teacher_model="vit_g")

K710 = Recipe("distill", "k710", "distil ViT-g's K710 logits into ViT-B on K710 (paper Table 16)",
              {**COMMON, **dataset_fields("k710")},
              {"vit_b": (SOURCE, dict(lr=1e-3, batch_size=16))})
SSV2 = Recipe("distill", "ssv2", "distil on SSv2 (paper Table 16)",
              {**COMMON, **dataset_fields("ssv2")},
              {"vit_b": (SOURCE, dict(lr=5e-4, batch_size=8))})
