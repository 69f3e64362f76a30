"""Helpers for tests that drive the stage CLIs on the tiny synthetic set and check what a real run
did: the flags of a seconds-long run, its metrics, the first batch its loss saw, and the weights
its first step started from."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from vmae2_fast.data.batches import map_tensors


def as_argv(flags: dict) -> list:
    """{'batch_size': 4, 'progress': False} -> ['--batch-size', '4', '--no-progress']."""
    argv = []
    for k, v in flags.items():
        if isinstance(v, bool):
            argv.append(("--" if v else "--no-") + k.replace("_", "-"))
        else:
            argv += ["--" + k.replace("_", "-"), str(v)]
    return argv


def micro_flags(ds, out, **extra) -> list:
    """Stage-1 flags for vit_micro on the tiny set: 32x32, 4 frames, 3 steps per epoch."""
    flags = dict(model="vit_micro", preset="cpu_demo", data=ds.pretrain_list, data_root=ds.root,
                 output_dir=str(out), input_size=32, num_frames=4, sampling_rate=2, num_sample=2,
                 batch_size=4, epochs=2, warmup_epochs=1, num_workers=0, log_every=1, save_every=1,
                 preview_every=0, mask_ratio=0.75, seed=3)
    flags.update(extra)
    return as_argv(flags)


# lr 0 at every step: the first logged loss is then computed with weights equal to those of the
# checkpoint the run leaves behind (AdamW's decoupled decay is lr * wd, so 0 too).
FROZEN_LR = dict(lr=0.0, warmup_lr=0.0, min_lr=0.0)


def train_records(out) -> list:
    """The per-step records of metrics.jsonl (those with a loss)."""
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


class FirstBatchSpy:
    """Wraps `stage_cls.compute_loss` (via monkeypatch) to keep a copy of the first batch, the
    stage object and, for stage 1, the mask generator's state before the first draw."""

    def __init__(self, monkeypatch, stage_cls):
        self.batch = self.stage = self.mask_state = None
        self.calls = 0
        original = stage_cls.compute_loss

        def spy(stage, model, batch):
            if self.batch is None:
                self.batch = map_tensors(batch, torch.clone)
                self.stage = stage
                gen = getattr(stage, "mask_gen", None)
                self.mask_state = gen.get_state() if gen is not None else None
            self.calls += 1
            return original(stage, model, batch)

        monkeypatch.setattr(stage_cls, "compute_loss", spy)


class StartingWeights:
    """The classifier's weights when its first step begins (before any update): what --init loaded."""

    def __init__(self, monkeypatch):
        from vmae2_fast.stages.classify import ClassifyStage
        self.weights = None
        original = ClassifyStage.compute_loss

        def spy(stage, model, batch):
            if self.weights is None:
                self.weights = {k: v.detach().clone() for k, v in stage.model.state_dict().items()}
            return original(stage, model, batch)

        monkeypatch.setattr(ClassifyStage, "compute_loss", spy)

    def take(self):
        out, self.weights = self.weights, None
        return out
