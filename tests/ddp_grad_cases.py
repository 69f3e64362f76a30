"""The two training stages as the gradient check builds them, identically in the test process
(one process, the global batch) and in each torchrun rank (tests/ddp_grad_worker.py)."""
from __future__ import annotations

import torch

from vmae2_fast.train.distributed import DistInfo

GLOBAL_BATCH = 4
SGD_LR = 0.5
CASES = ("pretrain", "classify")


def build_case(name: str, dist: DistInfo):
    """(model, stage, global batch) with fixed seeds; float64 weights and clips (pixels in
    0..255, as the loaders deliver them; the stage normalises them)."""
    from vmae2_fast.stages.classify import ClassifyStage
    from vmae2_fast.config import PretrainConfig
    from vmae2_fast.config import FinetuneConfig
    from vmae2_fast.data.batches import ClassifyBatch, PretrainBatch
    from vmae2_fast.models import build_classifier, build_pretrain_model
    from vmae2_fast.stages.pretrain import PretrainStage
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    video = 255 * torch.rand(GLOBAL_BATCH, 3, 4, 64, 64, generator=g, dtype=torch.float64)
    cpu = torch.device("cpu")
    if name == "pretrain":
        model = build_pretrain_model("vit_micro", img_size=64, num_frames=4).double()
        cfg = PretrainConfig(model="vit_micro", input_size=64, num_frames=4, mask_ratio=0.75,
                             decoder_mask_ratio=0.5, seed=5)
        return model, PretrainStage(model, cfg, cpu, dist), PretrainBatch(video)
    if name == "classify":
        model = build_classifier("vit_micro", 6, img_size=64, num_frames=4).double()
        with torch.no_grad():           # a real head (the official init scale 0.001 makes it ~0)
            model.head.weight.normal_(0, 0.2)
        cfg = FinetuneConfig(model="vit_micro", input_size=64, num_frames=4, mixup=0.0, cutmix=0.0,
                             smoothing=0.1, seed=5)
        labels = torch.tensor([0, 3, 5, 1])
        return model, ClassifyStage(model, cfg, cpu, dist), ClassifyBatch(video, labels)   # no erasing
    raise ValueError(f"unknown case {name!r}; choose one of {CASES}")
