"""One rank of the two-process non-finite-skip check (run by tests/test_nonfinite_skip.py under
torchrun, gloo on the CPU). Not a test module: pytest does not collect it.

For each parallelism (ddp, fsdp: DTensor parameters and a fused AdamW over their shards) each rank
trains a small MLP through the engine's Trainer, with clipping, for four steps on its own batches:
step 1 gives rank 1 a NaN loss (NaN gradients), step 2 gives rank 1 an infinite loss whose
gradients are finite (only that rank knows the step is bad). Then the same run without steps 1
and 2. The full weights after every step, and AdamW's step count, are saved per rank.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vmae2_fast.data.batches import PretrainBatch  # noqa: E402
from vmae2_fast.train.distributed import cleanup, init_distributed  # noqa: E402
from vmae2_fast.train.loop import LoopSettings, Trainer  # noqa: E402
from vmae2_fast.train.optim import build_adamw  # noqa: E402
from vmae2_fast.train.parallelize import full_tensor, parallelize  # noqa: E402

NAN_STEP, INF_STEP, STEPS = 1, 2, 4


class Stage:
    def __init__(self, model, rank):
        self.model, self.rank, self.calls = model, rank, 0

    def compute_loss(self, model, batch):
        loss = model(batch.video).pow(2).mean()
        if self.rank == 1 and self.calls == NAN_STEP:
            loss = loss * float("nan")
        if self.rank == 1 and self.calls == INF_STEP:
            loss = loss + float("inf")               # d(loss)/d(weights) stays finite
        self.calls += 1
        return loss, batch.video.shape[0]

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def on_epoch_end(self, epoch, trainer):
        return {}


def weights(model):
    return [full_tensor(p.detach()).clone() for p in model.parameters()]


def train(parallelism, dist, steps):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 1))
    stage = Stage(model, dist.rank)
    wrapped = parallelize(model, torch.device("cpu"), dist, parallelism=parallelism)
    opt = build_adamw(model, 0.05, 0.05)        # after the wrapping (FSDP replaces the parameters)
    lr = np.full(STEPS, 0.05)
    settings = LoopSettings(epochs=1, steps_per_epoch=STEPS, clip_grad=0.5, output_dir=tempfile.mkdtemp(),
                            progress=False)
    trainer = Trainer(stage, wrapped, opt, lambda e, s: iter(()), lr, lr * 0 + 0.05, settings,
                      torch.device("cpu"), dist, {})
    out = []
    for step in steps:
        stage.calls = step
        gen = torch.Generator().manual_seed(100 * step + dist.rank)
        trainer.train_step([PretrainBatch(torch.randn(6, 4, generator=gen))])
        out.append(weights(model))
    counts = sorted({int(s["step"]) for s in opt.state.values()})
    return out, counts


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    dist = init_distributed("cpu")
    assert dist.world_size == 2, "run under torchrun --nproc-per-node 2"
    try:
        result = {}
        for parallelism in ("ddp", "fsdp"):
            with_bad, counts = train(parallelism, dist, range(STEPS))
            without, _ = train(parallelism, dist, [s for s in range(STEPS) if s not in (NAN_STEP, INF_STEP)])
            result[parallelism] = {"with_bad": with_bad, "without": without, "adamw_steps": counts}
        torch.save(result, Path(args.out) / f"rank{dist.rank}.pt")
    finally:
        cleanup(dist)


if __name__ == "__main__":
    main()
