"""The shared loop's step: non-finite updates are skipped on the device, a run of them aborts, and
on a GPU the step makes no host sync. (Activation checkpointing: test_activation_checkpointing.py
counts the recomputed blocks and checks that nothing changes.)"""
import numpy as np
import pytest
import torch
import torch.nn as nn

from vmae2_fast.data.batches import PretrainBatch
from vmae2_fast.models import build_pretrain_model
from vmae2_fast.train.distributed import DistInfo
from vmae2_fast.train.loop import LoopSettings, NonFiniteLossError, Trainer
from vmae2_fast.train.optim import build_adamw


class ToyStage:
    """A linear model whose loss is NaN on the steps listed in `bad`."""

    def __init__(self, bad=()):
        self.model = nn.Linear(4, 1)
        self.bad = set(bad)
        self.calls = 0

    def compute_loss(self, model, batch):
        x = batch.video
        loss = model(x).pow(2).mean()
        if self.calls in self.bad:
            loss = loss * float("nan")
        self.calls += 1
        return loss, x.shape[0]

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def on_epoch_end(self, epoch, trainer):
        return {}


def make_trainer(stage, tmp_path, steps=6, max_nonfinite=3, log_every=1):
    opt = build_adamw(stage.model, 0.1, 0.0)
    batches = [PretrainBatch(torch.randn(8, 4)) for _ in range(steps)]
    settings = LoopSettings(epochs=1, steps_per_epoch=steps, max_nonfinite=max_nonfinite,
                            log_every=log_every, output_dir=str(tmp_path), progress=False)
    lr = np.full(steps, 0.1)
    return Trainer(stage, stage.model, opt, lambda epoch, skip: iter(batches[skip:]), lr, lr * 0,
                   settings, torch.device("cpu"), DistInfo(), {}), batches


def test_nonfinite_update_is_skipped_and_counted(tmp_path):
    stage = ToyStage(bad={1})
    trainer, batches = make_trainer(stage, tmp_path)
    trainer.train_step([batches[0]])
    before = [p.detach().clone() for p in stage.model.parameters()]
    trainer.train_step([batches[1]])                          # NaN loss: no update
    assert all(torch.equal(a, b) for a, b in zip(before, stage.model.parameters()))
    assert int(trainer.skipped_total) == 1 and int(trainer.nonfinite_run) == 1
    trainer.train_step([batches[2]])                          # finite again: update, run resets
    assert not all(torch.equal(a, b) for a, b in zip(before, stage.model.parameters()))
    assert int(trainer.nonfinite_run) == 0
    # AdamW's step count did not advance on the skipped step
    state = next(iter(trainer.optimizer.state.values()))
    assert int(state["step"]) == 2


def test_many_nonfinite_in_a_row_abort_with_advice(tmp_path):
    trainer, _ = make_trainer(ToyStage(bad={1, 2, 3, 4}), tmp_path, max_nonfinite=3)
    with pytest.raises(NonFiniteLossError, match="non-finite losses in a row"):
        trainer.fit()


def test_isolated_nonfinite_losses_do_not_abort(tmp_path):
    trainer, _ = make_trainer(ToyStage(bad={1, 3}), tmp_path, max_nonfinite=2)
    record = trainer.fit()
    assert record["skipped_updates"] == 2 and trainer.global_step == 6


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gpu_train_step_makes_no_host_sync(tmp_path, precision):
    from vmae2_fast.config import PretrainConfig
    from vmae2_fast.stages.pretrain import PretrainStage
    dev = torch.device("cuda")
    model = build_pretrain_model("vit_micro", img_size=64, num_frames=8).to(dev)
    cfg = PretrainConfig(model="vit_micro", input_size=64, num_frames=8, output_dir=str(tmp_path))
    stage = PretrainStage(model, cfg, dev, DistInfo())
    opt = build_adamw(model, 1e-4, 0.05)
    batches = [PretrainBatch(torch.randn(4, 3, 8, 64, 64, device=dev)) for _ in range(3)]
    settings = LoopSettings(epochs=1, steps_per_epoch=3, precision=precision, clip_grad=1.0,
                            output_dir=str(tmp_path), progress=False)
    lr = np.full(3, 1e-4)
    trainer = Trainer(stage, model, opt, lambda e, s: iter(batches), lr, lr, settings, dev, DistInfo(), {})
    trainer.train_step([batches[0]])                      # warm-up (lazy state allocation)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, gnorm, _ = trainer.train_step([batches[1]])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()
