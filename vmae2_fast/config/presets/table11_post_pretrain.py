"""Stage 2, supervised post-pre-training on Kinetics-710: paper Table 11 (ViT-H and ViT-g) with the
per-model values of the official scripts (scripts/finetune/vit_{b,h,g}_k710_ft.sh).

Shared: 710 classes, 16 frames at stride 4, AdamW (0.9, 0.999), cosine, 5 warm-up epochs,
repeated augmentation 2, RandAugment rand-m7-n4-mstd0.5-inc1, label smoothing 0.1, mixup 0.8,
cutmix 1.0, flip. Learning rates are per 256 videos (the scripts' --lr).
"""

COMMON = dict(num_classes=710, input_size=224, num_frames=16, tubelet_size=2, sampling_rate=4,
              num_sample=2, flip=True, aa="rand-m7-n4-mstd0.5-inc1", smoothing=0.1, mixup=0.8,
              cutmix=1.0, betas=(0.9, 0.999), warmup_epochs=5, min_lr=1e-6, warmup_lr=0.0,
              weight_decay=0.05, reprob=0.25)

PER_MODEL = {
    # ViT-S / ViT-L have no official K710 script: ViT-B's recipe.
    "vit_s": dict(lr=7e-4, drop_path=0.1, head_drop=0.0, layer_decay=0.75, epochs=90, batch_size=16),
    "vit_b": dict(lr=7e-4, drop_path=0.1, head_drop=0.0, layer_decay=0.75, epochs=90, batch_size=16),
    "vit_l": dict(lr=7e-4, drop_path=0.1, head_drop=0.0, layer_decay=0.75, epochs=90, batch_size=16),
    # Table 11, H: wd 0.05, 40 epochs, drop path 0.2, dropout 0.5, layer decay 0.8, no clipping.
    "vit_h": dict(lr=1e-3, drop_path=0.2, head_drop=0.5, layer_decay=0.8, epochs=40, batch_size=4,
                  activation_checkpointing=True),
    # Table 11, g: wd 0.1, 35 epochs, drop path 0.3, no dropout, layer decay 0.9, clipping 5.0.
    "vit_g": dict(lr=1e-3, drop_path=0.3, head_drop=0.0, layer_decay=0.9, epochs=35, batch_size=3,
                  weight_decay=0.1, clip_grad=5.0, activation_checkpointing=True),
}


def overrides(model: str) -> dict:
    from ...models.zoo import ALIASES
    return {**COMMON, **PER_MODEL.get(ALIASES.get(model, model), PER_MODEL["vit_b"])}
