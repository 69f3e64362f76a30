"""Stage-1 pre-training recipe: paper Table 10, with the per-model values of the official
launch scripts (scripts/pretrain/vit_{b,l,h,g}_hybrid_pt.sh).

Shared: tube mask 0.9, running-cell decoder mask 0.5, decoder depth 4, 16 frames at stride 4,
repeated augmentation 4, AdamW betas (0.9, 0.95), weight decay 0.05, cosine schedule,
300 epochs (= 1200 "view epochs") with 30 warm-up epochs, 32 videos per GPU.
Learning rates are per 256 videos (views not counted), as in the official code.
"""

COMMON = dict(input_size=224, num_frames=16, tubelet_size=2, decoder_depth=4, mask_ratio=0.9,
              decoder_mask_ratio=0.5, sampling_rate=4, num_sample=4, batch_size=32, epochs=300,
              warmup_epochs=30, lr=1e-3, min_lr=1e-5, warmup_lr=1e-6, weight_decay=0.05,
              betas=(0.9, 0.95), clip_grad=None, activation_checkpointing=False)

PER_MODEL = {
    "vit_s": {},                                     # no official script: ViT-B's recipe
    "vit_b": {},
    "vit_l": {},
    "vit_h": dict(activation_checkpointing=True),
    "vit_g": dict(lr=6e-4, clip_grad=0.02, activation_checkpointing=True),
}


def overrides(model: str) -> dict:
    from ...models.zoo import ALIASES
    return {**COMMON, **PER_MODEL.get(ALIASES.get(model, model), {})}
