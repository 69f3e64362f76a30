"""`--parallelism fsdp` (FSDP2) against one process, on the CPU (two gloo processes under torchrun).

The truth is one process with the same global batch: two processes with half of it each, under
DDP or FSDP2 and with gradient accumulation (the no-sync micro-batch goes through
`parallelize.grad_sync`) and clipping, log the same losses and gradient norms (fp32, 1e-5) and
end with the same weights. A checkpoint written by two FSDP processes (optimiser shards by
torch.distributed.checkpoint, the model consolidated) resumes in one process, and one written by
one process resumes in two FSDP processes, each continuing the uninterrupted run.
"""
import os
import subprocess
import sys

import pytest
import torch

from cli_runs import FROZEN_LR, micro_flags, train_records
from vmae2_fast.cli import config_for
from vmae2_fast.models.weights import read_checkpoint
from vmae2_fast.stages.pretrain import run

GLOBAL_BATCH = 2                   # videos per micro-batch, all processes together (x2 views)
RTOL = 1e-5


def flags(ds, out, processes, **extra):
    """Two epochs of 3 optimiser steps, 2 micro-batches each, clipped (vit_micro, 32x32)."""
    return micro_flags(ds, out, batch_size=GLOBAL_BATCH // processes, accum_steps=2, clip_grad=0.05,
                       threads=1, no_progress=True, **extra)


def torchrun(argv):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                          "2", "-m", "vmae2_fast.pretrain", *argv], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def series(out, key):
    return [r[key] for r in train_records(out)]


def weights(path):
    return read_checkpoint(path)["model"]


def assert_close_weights(a, b):
    assert a.keys() == b.keys()
    bad = {k: float((a[k] - b[k]).abs().max()) for k in a if not torch.allclose(a[k], b[k], rtol=RTOL, atol=1e-6)}
    assert not bad, f"weights differ: {bad}"


@pytest.fixture(scope="module")
def one_process(tiny_synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    run(config_for("pretrain", flags(tiny_synthetic, out, 1)))
    assert len(train_records(out)) == 6
    return out


@pytest.fixture(scope="module")
def fsdp_run(tiny_synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    torchrun(flags(tiny_synthetic, out, 2, parallelism="fsdp"))
    return out


@pytest.mark.slow
def test_fsdp_two_processes_train_like_one(one_process, fsdp_run):
    assert series(fsdp_run, "loss") == pytest.approx(series(one_process, "loss"), rel=RTOL)
    # AdamW's first steps are about lr * sign(g): the norms show a wrong gradient scale, the weights may not
    assert series(fsdp_run, "grad_norm") == pytest.approx(series(one_process, "grad_norm"), rel=RTOL)
    assert_close_weights(weights(fsdp_run / "checkpoint-last.pth"), weights(one_process / "checkpoint-last.pth"))


@pytest.mark.slow
def test_ddp_two_processes_with_accumulation_train_like_one(tiny_synthetic, one_process, tmp_path):
    torchrun(flags(tiny_synthetic, tmp_path, 2, parallelism="ddp", max_steps=4))
    assert series(tmp_path, "loss") == pytest.approx(series(one_process, "loss")[:4], rel=RTOL)
    assert series(tmp_path, "grad_norm") == pytest.approx(series(one_process, "grad_norm")[:4], rel=RTOL)


@pytest.mark.slow
def test_an_fsdp_checkpoint_is_a_readable_checkpoint_with_its_shards(one_process, fsdp_run):
    state = read_checkpoint(fsdp_run / "checkpoint-0.pth")
    assert state["optimizer"] is None and state["sharded"]["world_size"] == 2
    folder = fsdp_run / state["sharded"]["folder"]
    assert (folder / ".metadata").is_file() and state["sharded"]["folder"] == "checkpoint-0.g3.optim"
    # the consolidated model under the official key names, as a one-process run writes it
    assert_close_weights(state["model"], weights(one_process / "checkpoint-0.pth"))
    # one folder per checkpoint file, nothing left over (checkpoint-last.pth links checkpoint-1.pth)
    assert sorted(p.name for p in fsdp_run.glob("*.optim")) == ["checkpoint-0.g3.optim", "checkpoint-1.g6.optim"]
    assert not list(fsdp_run.glob(".*.tmp"))


@pytest.mark.slow
def test_two_fsdp_processes_resume_in_one(tiny_synthetic, one_process, fsdp_run, tmp_path):
    run(config_for("pretrain", flags(tiny_synthetic, tmp_path, 1, resume=str(fsdp_run / "checkpoint-0.pth"))))
    assert series(tmp_path, "loss") == pytest.approx(series(one_process, "loss")[3:], rel=RTOL)
    assert_close_weights(weights(tmp_path / "checkpoint-1.pth"), weights(one_process / "checkpoint-1.pth"))


@pytest.mark.slow
def test_one_process_resumes_in_two_fsdp_processes(tiny_synthetic, one_process, tmp_path):
    torchrun(flags(tiny_synthetic, tmp_path, 2, parallelism="fsdp", resume=str(one_process / "checkpoint-0.pth")))
    assert series(tmp_path, "loss") == pytest.approx(series(one_process, "loss")[3:], rel=RTOL)
    assert_close_weights(weights(tmp_path / "checkpoint-1.pth"), weights(one_process / "checkpoint-1.pth"))


def flat_update(after, before):
    return torch.cat([(after[k].double() - before[k].double()).flatten() for k in sorted(before)])


@pytest.mark.slow
def test_fsdp_bf16_parameters_train_like_fp32(tiny_synthetic, tmp_path):
    """bf16 gathered weights with fp32 gradient reduction and fp32 master weights: the losses,
    the gradient norms and the update the weights take over three steps are one fp32 process's,
    to bf16 precision. The lr is constant, so every step moves every weight (a warm-up's near-zero
    lr would let a run that never updates pass), and small (1.6e-4 per step: AdamW's steps are
    about lr x sign(g)): below bf16's resolution of most weights, so that bf16 master weights
    would lose the updates."""
    moving = dict(warmup_epochs=0, lr=0.02, min_lr=0.02, max_steps=3)   # 0.02 x 2 / 256 per step
    run(config_for("pretrain", flags(tiny_synthetic, tmp_path / "init", 1, max_steps=1, **FROZEN_LR)))
    run(config_for("pretrain", flags(tiny_synthetic, tmp_path / "fp32", 1, **moving)))
    torchrun(flags(tiny_synthetic, tmp_path / "bf16", 2, parallelism="fsdp", fsdp_param_dtype="bf16", **moving))
    assert series(tmp_path / "bf16", "loss") == pytest.approx(series(tmp_path / "fp32", "loss"), rel=2e-2)
    assert series(tmp_path / "bf16", "grad_norm") == pytest.approx(series(tmp_path / "fp32", "grad_norm"), rel=3e-2)
    w0 = weights(tmp_path / "init" / "checkpoint-last.pth")
    want = flat_update(weights(tmp_path / "fp32" / "checkpoint-last.pth"), w0)
    got = flat_update(weights(tmp_path / "bf16" / "checkpoint-last.pth"), w0)
    assert (want != 0).float().mean() > 0.9                       # the fp32 run moved (nearly) every weight
    # measured: 0.05 (bf16 gradients flip the sign of a few tiny ones); bf16 master weights: 0.48
    assert ((got - want).norm() / want.norm()).item() < 0.15, ((got - want).norm() / want.norm()).item()


def test_classification_stages_refuse_fsdp():
    with pytest.raises(ValueError, match="pre-training only"):
        config_for("finetune", ["--model", "vit_micro", "--parallelism", "fsdp"])
