"""Gradient clipping as the official engine does it (utils.NativeScalerWithGradNormCount with
--clip_grad): the loss scaler's `unscale_` first, then `clip_grad_norm_` over ALL parameters at
once (one L2 norm of every gradient, each scaled by min(1, max_norm / (norm + 1e-6))), then the
step; the logged grad_norm is the norm before clipping. The truth is that formula written out in
float64 from plain autograd gradients, compared with the gradients the optimiser is handed."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from vmae2_fast.data.batches import PretrainBatch
from vmae2_fast.train.distributed import DistInfo
from vmae2_fast.train.loop import LoopSettings, Trainer
from vmae2_fast.train.optim import build_adamw


def make_model():
    torch.manual_seed(0)
    # several parameter groups (decay / no decay) and a frozen layer: the norm is over all that train
    model = nn.Sequential(nn.Linear(5, 7), nn.GELU(), nn.LayerNorm(7), nn.Linear(7, 3), nn.Linear(3, 2))
    model[4].requires_grad_(False)
    return model.double()


class Stage:
    def __init__(self, model):
        self.model = model

    def compute_loss(self, model, batch):
        return model(batch.video).pow(2).sum(-1).mean() * 40.0, batch.video.shape[0]   # large gradients

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def on_epoch_end(self, epoch, trainer):
        return {}


def official_clipped_grads(batch, max_norm):
    """The official computation, written out: autograd gradients, their one global L2 norm, one
    coefficient for all."""
    model = make_model()
    Stage(model).compute_loss(model, batch)[0].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads.values()))
    coef = min(1.0, max_norm / (norm + 1e-6))
    return {n: g * coef for n, g in grads.items()}, norm


def handed_to_the_optimiser(trainer):
    """The gradients at the moment the optimiser's step runs."""
    seen = {}
    step = trainer.optimizer.step
    names = {id(p): n for n, p in trainer.stage.model.named_parameters()}

    def spy(*args, **kwargs):
        for g in trainer.optimizer.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    seen[names[id(p)]] = p.grad.clone()
        return step(*args, **kwargs)

    trainer.optimizer.step = spy
    return seen


def make_trainer(tmp_path, clip, scaler=None):
    model = make_model()
    stage = Stage(model)
    lr = np.full(2, 1e-3)
    settings = LoopSettings(epochs=1, steps_per_epoch=2, clip_grad=clip, output_dir=str(tmp_path), progress=False)
    trainer = Trainer(stage, model, build_adamw(model, 1e-3, 0.05), lambda e, s: iter(()), lr, lr * 0 + 0.05,
                      settings, torch.device("cpu"), DistInfo(), {})
    trainer.scaler = scaler
    return trainer


@pytest.mark.parametrize("clip", [0.05, 1e6])          # clipping active / a bound never reached
@pytest.mark.parametrize("scaled", [False, True], ids=["fp32", "loss-scaler"])
def test_clipping_is_the_official_formula_in_the_official_order(tmp_path, clip, scaled):
    batch = PretrainBatch(torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    want, norm = official_clipped_grads(batch, clip)
    # the loss scaler of fp16 runs (on a CPU here): the gradients are multiplied by 2^10 in the
    # backward and must be unscaled BEFORE the norm and the clipping, as the official scaler does
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) if scaled else None
    trainer = make_trainer(tmp_path, clip, scaler)
    seen = handed_to_the_optimiser(trainer)
    _, gnorm, _ = trainer.train_step([batch])
    assert norm > 1.0                                     # so that 0.05 really clips
    assert float(gnorm) == pytest.approx(norm, rel=1e-6)  # logged (float32): the norm before clipping
    assert seen.keys() == want.keys() and "4.weight" not in seen
    for n in want:
        assert torch.allclose(seen[n], want[n], rtol=1e-9, atol=1e-12), n
