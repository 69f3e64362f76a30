"""Distillation: paper Table 16. Student (ViT-B, initialised from its K710 post-pre-trained
checkpoint) trained on the KL divergence to the frozen teacher's logits (ViT-g, K710).

K710: lr 1e-3, batch 1024; SSv2: lr 5e-4, batch 512. Shared: AdamW, weight decay 0.05, cosine,
5 warm-up epochs, 100 epochs, RandAugment, mixup 0.8, cutmix 1.0, drop path 0.1, flip (not
SSv2), no dropout, layer decay 0.75. Learning rates per 256 videos; batch_size is per process
(16 x 64 GPUs = 1024).
"""

COMMON = dict(input_size=224, num_frames=16, tubelet_size=2, sampling_rate=4, num_sample=1,
              aa="rand-m7-n4-mstd0.5-inc1", mixup=0.8, cutmix=1.0, smoothing=0.0,
              betas=(0.9, 0.999), weight_decay=0.05, warmup_epochs=5, epochs=100, drop_path=0.1,
              head_drop=0.0, layer_decay=0.75, min_lr=1e-6, warmup_lr=0.0, batch_size=16,
              teacher_model="vit_g")

DATASETS = {
    "k710": dict(num_classes=710, lr=1e-3, flip=True),
    "ssv2": dict(num_classes=174, lr=5e-4, flip=False, sparse_sample=True),
}


def make(dataset: str):
    def overrides(model: str) -> dict:
        return {**COMMON, **DATASETS[dataset]}
    return overrides
