"""A rank that dies under `torchrun --max-restarts`: the group restarts by itself, every rank
resumes from the newest complete checkpoint (`--resume auto`), and the run ends as if nothing had
happened. The truth is one process with the same global batch, never interrupted (two processes
train like it: test_fsdp.py), compared step by step: the logged losses (fp32, gloo, CPU) and the
final weights; metrics.jsonl holds every step exactly once (what the killed attempt logged after
its checkpoint is cut).

Faults (tests/fault_worker.py, first attempt only): rank 1 SIGKILLed between two steps, and rank 0
SIGKILLed halfway through writing a checkpoint file with --async-checkpoint (the file is written by
the background writer while training goes on), under DDP and FSDP2. Rank 0 holds the output
folder's lock (train/run_lock.py); the restarted group takes it back from its own earlier attempt.

A rank that hangs instead of dying (stuck in I/O) ends the run after --dist-timeout, with an error
that names it.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_runs import micro_flags, train_records
from vmae2_fast.cli import config_for
from vmae2_fast.models.weights import read_checkpoint
from vmae2_fast.stages.pretrain import run

WORKER = Path(__file__).with_name("fault_worker.py")
RTOL = 1e-5
STEPS = 6                          # 2 epochs x 3 optimiser steps


def flags(ds, out, processes, **extra):
    """vit_micro, 2 epochs of 3 steps, 4 videos per step in all; checkpoint-last.pth every 2 steps
    and checkpoint-E.pth every epoch."""
    return micro_flags(ds, out, batch_size=4 // processes, save_every_steps=2, threads=1,
                       kernels="reference", no_progress=True, **extra)


def torchrun(argv, fault, max_restarts=1, timeout=600):
    """Two processes under torchrun with `fault` planted; the whole process tree is killed if it
    outlives `timeout` (a hang fails the test, and leaves nothing running)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", VMAE2_TEST_FAULT=fault)
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "--max-restarts", str(max_restarts), "--monitor-interval", "0.2", str(WORKER), *argv],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun still running after {timeout} s: {out[-2000:]}{err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def truth(tiny_synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("truth")
    run(config_for("pretrain", flags(tiny_synthetic, out, 1)))
    return out


def weights(out):
    return read_checkpoint(Path(out) / "checkpoint-last.pth")["model"]


# name: (flags, fault, global step of the checkpoint the restarted group resumes from). FSDP2's
# restart is the async case (a restarted FSDP group re-reads its optimiser shards); a rank killed
# between steps is the same event under either wrapping, so it runs once (each case is a torchrun
# of two attempts: the suite's time).
CASES = {
    "ddp-rank1-killed-mid-epoch": (dict(parallelism="ddp"), "kill-at-step:1:5", 4),
    # rank 0's third file (checkpoint-last.pth of step 4): checkpoint-last.pth stays the step-3 one
    "ddp-async-rank0-killed-inside-a-save": (dict(parallelism="ddp", async_checkpoint=True), "kill-in-save:0:3", 3),
    "fsdp-async-rank0-killed-inside-a-save": (dict(parallelism="fsdp", async_checkpoint=True), "kill-in-save:0:3", 3),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_a_killed_rank_restarts_the_group_which_resumes_exactly(tiny_synthetic, truth, tmp_path, case):
    extra, fault, resumed_at = CASES[case]
    out = tmp_path / "run"
    res = torchrun(flags(tiny_synthetic, out, 2, **extra), fault)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "fault: rank" in res.stdout, "the fault never fired: " + res.stdout[-2000:]
    log = (out / "log.txt").read_text()
    assert f"global step {resumed_at}" in log.split("resumed from ")[1].splitlines()[0], log[-3000:]
    if fault.startswith("kill-in-save:0"):       # rank 0 died holding the folder: its successor takes it
        assert "took over the lock" in log and "its process is gone" in log, log[-3000:]
    rows = train_records(out)
    assert [r["global_step"] for r in rows] == list(range(1, STEPS + 1))        # none lost, none doubled
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in train_records(truth)], rel=RTOL)
    a, b = weights(out), weights(truth)
    bad = [k for k in a if not torch.allclose(a[k], b[k], rtol=RTOL, atol=1e-6)]
    assert a.keys() == b.keys() and not bad, bad
    assert not (out / "run.lock").exists()                                       # released at the end
    assert not list(out.glob(".*.tmp"))                                          # the half-written file cleaned up


@pytest.mark.slow
def test_a_stalled_rank_ends_the_run_with_an_error_naming_it(tiny_synthetic, tmp_path):
    """Rank 1 stuck (a sleep standing for a hung read) before step 3: rank 0's collective gives up
    after --dist-timeout, and the run ends with an error naming rank 1, not after the stall."""
    stall_s, timeout_s = 300, 15
    t0 = time.perf_counter()
    res = torchrun(flags(tiny_synthetic, tmp_path / "run", 2, dist_timeout=timeout_s),
                   f"stall-at-step:1:2:{stall_s}", max_restarts=0, timeout=stall_s - 60)
    took = time.perf_counter() - t0
    assert res.returncode != 0 and "fault: rank 1 stalls before step 3" in res.stdout
    error = next((line for line in res.stderr.splitlines() if line.startswith("error: rank 0: a collective")), None)
    assert error is not None, res.stderr[-3000:]
    assert f"--dist-timeout {timeout_s} s: rank 1 did not come" in error
    assert "rank 1 last reached 'reading the batches of global step 3'" in error, error
    assert took < stall_s - 60
