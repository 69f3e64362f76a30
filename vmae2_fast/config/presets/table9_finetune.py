"""Stage 3, specific fine-tuning: paper Table 9 (ViT-g after K710 post-pre-training), with the
values of the official scripts where the table is silent (vit_g_k710_it_*.sh, vit_g_ssv2_ft.sh).

Shared: AdamW (0.9, 0.999), weight decay 0.05, cosine, repeated augmentation 2, RandAugment,
label smoothing 0.1, mixup 0.8, cutmix 1.0, flip (not SSv2), dropout 0.5, layer decay 0.9, no
clipping. Learning rates are per 256 videos (the scripts' --lr; Table 9's "batch" is the paper's
total). Test views (for `evaluate`): 5 clips x 3 crops, SSv2 2 x 3.
Kinetics: start from the K710 checkpoint and pass --head-map label_710to400.json (or 600) to reuse
the K710 head rows.
"""

COMMON = dict(input_size=224, num_frames=16, tubelet_size=2, sampling_rate=4, num_sample=2,
              flip=True, aa="rand-m7-n4-mstd0.5-inc1", smoothing=0.1, mixup=0.8, cutmix=1.0,
              betas=(0.9, 0.999), weight_decay=0.05, head_drop=0.5, layer_decay=0.9,
              clip_grad=None, min_lr=1e-6, warmup_lr=0.0, batch_size=3, reprob=0.25)

DATASETS = {
    "k400": dict(num_classes=400, lr=1e-5, warmup_epochs=0, epochs=3, drop_path=0.3),
    "k600": dict(num_classes=600, lr=1e-5, warmup_epochs=0, epochs=3, drop_path=0.3),
    "ssv2": dict(num_classes=174, lr=3e-4, warmup_epochs=5, epochs=10, drop_path=0.35, flip=False,
                 sparse_sample=True),
    "ucf101": dict(num_classes=101, lr=1e-3, warmup_epochs=5, epochs=50, drop_path=0.35),
    "hmdb51": dict(num_classes=51, lr=5e-4, warmup_epochs=5, epochs=15, drop_path=0.35,
                   sampling_rate=2),
}


def make(dataset: str):
    def overrides(model: str) -> dict:
        act = model in ("vit_h", "vit_g", "vit_huge_patch16_224", "vit_giant_patch14_224")
        return {**COMMON, **DATASETS[dataset], "activation_checkpointing": act}
    return overrides
