"""A non-finite update is skipped whatever the optimiser and the parallelism: the weights and
the optimiser state are those of a run in which the bad step never happened (constant lr), and
under DDP and FSDP every process skips together, also when only one of them saw the bad loss."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from vmae2_fast.data.batches import PretrainBatch
from vmae2_fast.train.distributed import DistInfo
from vmae2_fast.train.loop import LoopSettings, Trainer

HERE = Path(__file__).resolve().parent


class ToyStage:
    """A linear model; its loss is NaN at the calls listed in `bad`."""

    def __init__(self, bad=()):
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)
        self.bad, self.calls = set(bad), 0

    def compute_loss(self, model, batch):
        loss = model(batch.video).pow(2).mean()
        if self.calls in self.bad:
            loss = loss * float("nan")
        self.calls += 1
        return loss, batch.video.shape[0]

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def on_epoch_end(self, epoch, trainer):
        return {}


class HandWrittenSGD(torch.optim.Optimizer):
    """An optimiser that knows nothing of `found_inf` (as any third-party one)."""

    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr, "weight_decay": 0.0})

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-g["lr"])


OPTIMISERS = {
    "adamw-foreach": lambda params: torch.optim.AdamW(params, lr=0.1, foreach=True),
    "adamw-for-loop": lambda params: torch.optim.AdamW(params, lr=0.1, foreach=False),
    "hand-written-sgd": lambda params: HandWrittenSGD(params, lr=0.1),
    "adamw-fused": lambda params: torch.optim.AdamW(params, lr=0.1, fused=True),
}


def run(tmp_path, make_opt, bad, steps):
    stage = ToyStage(bad)
    opt = make_opt(stage.model.parameters())
    lr = np.full(8, 0.1)
    settings = LoopSettings(epochs=1, steps_per_epoch=8, output_dir=str(tmp_path), progress=False)
    trainer = Trainer(stage, stage.model, opt, lambda e, s: iter(()), lr, lr * 0, settings,
                      torch.device("cpu"), DistInfo(), {})
    gen = torch.Generator().manual_seed(0)
    batches = [PretrainBatch(torch.randn(8, 4, generator=gen)) for _ in range(4)]
    for i in steps:
        stage.calls = i
        trainer.train_step([batches[i]])
    return trainer, stage, opt


@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_a_nonfinite_update_is_skipped_whatever_the_optimiser(tmp_path, name, caplog):
    with caplog.at_level(logging.WARNING, logger="vmae2_fast"):
        trainer, stage, opt = run(tmp_path / "a", OPTIMISERS[name], bad={1}, steps=range(4))
    truth, truth_stage, truth_opt = run(tmp_path / "b", OPTIMISERS[name], bad=(), steps=[0, 2, 3])
    for a, b in zip(stage.model.parameters(), truth_stage.model.parameters()):
        assert torch.isfinite(a).all() and torch.equal(a, b)      # as if step 1 never happened
    assert int(trainer.skipped_total) == 1
    for sa, sb in zip(opt.state.values(), truth_opt.state.values()):
        assert all(torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])) for k in sa)
    fused = name == "adamw-fused"
    assert trainer.skip_on_device is fused
    assert ("cannot skip a non-finite update on the device" in caplog.text) is not fused


@pytest.mark.slow
def test_ddp_and_fsdp_processes_skip_together(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(HERE / "nonfinite_worker.py"), "--out", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for parallelism in ("ddp", "fsdp"):
        for r in ranks:
            got, want = r[parallelism]["with_bad"], r[parallelism]["without"]
            # steps 1 (rank 1's NaN loss) and 2 (rank 1's infinite loss, finite gradients) left
            # every weight as step 0 did; step 3 then moved them as if those steps never existed
            for step in (1, 2):
                assert all(torch.equal(a, b) for a, b in zip(got[step], got[0])), (parallelism, step)
            assert not all(torch.equal(a, b) for a, b in zip(got[3], got[0]))
            for a, b in zip(got[3], want[1]):
                assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), parallelism
            assert r[parallelism]["adamw_steps"] == [2]
        for a, b in zip(ranks[0][parallelism]["with_bad"][3], ranks[1][parallelism]["with_bad"][3]):
            assert torch.equal(a, b), parallelism                   # the processes agree
