"""Model EMA and the weight-decay schedule against re-statements of the official computations
(timm ModelEma.update as the official engine calls it; utils.cosine_scheduler for the weight
decay), and both end to end in a fine-tuning run."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vmae2_fast.models import build_classifier
from vmae2_fast.models.weights import read_checkpoint
from vmae2_fast.train.ema import ModelEma
from vmae2_fast.train.schedule import run_schedules


def official_ema_update(ema_sd: dict, model_sd: dict, decay: float) -> dict:
    """timm ModelEma.update: for every state-dict entry, ema * decay + (1 - decay) * model."""
    return {k: ema_sd[k] * decay + (1.0 - decay) * model_sd[k] for k in ema_sd}


def test_ema_follows_the_official_update_in_float64():
    torch.manual_seed(0)
    model = build_classifier("vit_micro", 5, img_size=32, num_frames=4, init_values=0.1).double()
    ema = ModelEma(model, decay=0.9)
    truth = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(5):
        with torch.no_grad():                      # an "optimiser step"
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        truth = official_ema_update(truth, model.state_dict(), 0.9)
    got = ema.state_dict()
    assert got.keys() == truth.keys()
    for k in truth:
        assert torch.allclose(got[k], truth[k], rtol=1e-13, atol=1e-15), k
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError):
        ModelEma(model, decay=1.0)


def official_cosine(base, final, epochs, niter, warmup_epochs=0, start=0.0):
    """utils.cosine_scheduler as the official entry points call it for the weight decay."""
    warm = np.linspace(start, base, warmup_epochs * niter) if warmup_epochs > 0 else np.array([])
    iters = np.arange(epochs * niter - warmup_epochs * niter)
    sched = np.array([final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / len(iters))) for i in iters])
    return np.concatenate((warm, sched))


@pytest.mark.parametrize("wd_end", [None, 0.2, 0.0])
def test_weight_decay_schedule_is_the_official_cosine(wd_end):
    cfg = SimpleNamespace(batch_size=4, accum_steps=1, lr=1e-3, min_lr=1e-6, warmup_lr=0.0, epochs=6,
                          warmup_epochs=2, warmup_steps=-1, weight_decay=0.05, weight_decay_end=wd_end)
    _, lr, wd, _ = run_schedules(cfg, steps_per_epoch=7, world_size=2)
    want = official_cosine(0.05, 0.05 if wd_end is None else wd_end, 6, 7)   # no warm-up
    assert wd.shape == lr.shape == (42,)
    np.testing.assert_allclose(wd, want, rtol=1e-14, atol=0)


@pytest.mark.slow
def test_finetune_with_ema_and_wd_schedule(tiny_synthetic, tmp_path):
    from vmae2_fast import finetune
    out = tmp_path / "ft"
    argv = ["--model", "vit_micro", "--preset", "cpu_demo", "--train-list", tiny_synthetic.train_list,
            "--val-list", tiny_synthetic.val_list, "--data-root", tiny_synthetic.root, "--output-dir",
            str(out), "--input-size", "32", "--short-side-size", "32", "--num-frames", "4",
            "--batch-size", "4", "--epochs", "2", "--warmup-epochs", "0", "--num-workers", "0",
            "--model-ema", "--model-ema-decay", "0", "--weight-decay-end", "0.5", "--no-progress"]
    assert finetune.main(argv) == 0
    last = read_checkpoint(out / "checkpoint-last.pth")
    # decay 0: the average is the model itself after every step
    for k, v in last["model"].items():
        assert torch.equal(last["model_ema"][k], v), k
    best_ema = read_checkpoint(out / "checkpoint-best-ema.pth")
    assert best_ema["ema"] and best_ema["model"].keys() == last["model"].keys()
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in recs if "val_top1" in r]
    assert len(vals) == 2 and all(r["ema_val_top1"] == r["val_top1"] for r in vals)
    # the decay groups end the run near --weight-decay-end, the others stay at 0
    groups = last["optimizer"]["param_groups"]
    assert {round(g["weight_decay"], 3) for g in groups} == {0.0, round(official_cosine(0.05, 0.5, 2, 3)[-1], 3)}
