"""--async-checkpoint (train/checkpoint_writer.py): the loop hands a host copy of its state to a
background writer and trains on while it is written.

- The files are those of a synchronous run (the truth), although the writes are slowed down so
  that the next optimiser steps change the weights in place while they run: the copy is taken
  at the save point. Training does go on during a write, one save at most is in flight, and the
  time the loop waited is in metrics.jsonl.
- SIGKILL at random offsets of background writes (tests/slow_save_driver.py): the newest
  checkpoint always loads, every resume continues from it, and the run ends with the weights and
  losses of a run never interrupted. (DDP and FSDP2 under torchrun: test_elastic.py.)
"""
import json
import os
import random
import threading
import time

import pytest
import torch

from cli_runs import micro_flags, train_records
from test_checkpoint_kill import Driver, kill_during_saves
from test_pretrain_loop import assert_same_weights, final_weights
from vmae2_fast.cli import config_for
from vmae2_fast.models.weights import read_checkpoint
from vmae2_fast.stages.pretrain import run
from vmae2_fast.train import checkpoint as ckpt
from vmae2_fast.train.loop import Trainer


def flags(ds, out, **extra):
    return micro_flags(ds, out, no_progress=True, kernels="reference", threads=1, epochs=3, **extra)


def assert_same_state(a, b, where="state"):
    """Equal nested checkpoint contents (tensors bit for bit); the run records, which hold file
    sizes of the run's own logs (timings differ), are left out."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        keys = set(a) - {"records", "config"}
        assert keys == set(b) - {"records", "config"}, where
        for k in keys:
            assert_same_state(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_background_saves_write_the_state_of_the_save_point(tiny_synthetic, tmp_path, monkeypatch):
    sync = tmp_path / "sync"
    run(config_for("pretrain", flags(tiny_synthetic, sync)))
    steps, writes, in_flight = [0], [], [0, 0]          # steps trained; (steps at write start, at end)
    write_s = []
    real_save, real_step = ckpt.torch.save, Trainer.train_step

    def slow_save(obj, f, *a, **k):
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        start, t0 = steps[0], time.perf_counter()
        time.sleep(0.4)                                  # the loop trains on meanwhile
        real_save(obj, f, *a, **k)
        writes.append((start, steps[0], threading.current_thread() is threading.main_thread()))
        write_s.append(time.perf_counter() - t0)
        in_flight[0] -= 1

    def counted_step(self, batches):
        steps[0] += 1
        return real_step(self, batches)

    monkeypatch.setattr(ckpt.torch, "save", slow_save)
    monkeypatch.setattr(Trainer, "train_step", counted_step)
    out = tmp_path / "async"
    run(config_for("pretrain", flags(tiny_synthetic, out, async_checkpoint=True)))
    assert len(writes) == 3 and not any(main for _, _, main in writes)     # in the background
    assert any(end > start for start, end, _ in writes), writes             # training went on
    assert in_flight[1] == 1                                                # one save at a time
    for epoch in range(3):
        name = f"checkpoint-{epoch}.pth"
        assert_same_state(read_checkpoint(out / name), read_checkpoint(sync / name), name)
    rows, truth = train_records(out), train_records(sync)
    assert [r["loss"] for r in rows] == [r["loss"] for r in truth]
    assert all(r["ckpt_wait_s"] >= 0 for r in rows)
    # a synchronous save keeps the loop for its whole write; a background one for its copy, and
    # for what is left of the previous write when saves come closer than a write's length. The
    # first save (end of epoch 0, in the row of step 4) has no write before it: the copy alone.
    waited = [r["ckpt_wait_s"] for r in rows]
    assert waited[3] < 0.5 * min(write_s), (waited, write_s)
    assert sum(waited) < 0.5 * sum(write_s), (waited, write_s)


KILLS, EPOCHS = 4, 4              # each kill is one more run of the stage: the suite's time


@pytest.mark.slow
def test_kills_during_background_saves_always_leave_a_loadable_checkpoint(tiny_synthetic, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    driver = Driver(env)
    try:
        common = dict(no_progress=True, epochs=EPOCHS, save_every=1, keep_last=2, kernels="reference", log_every=1)
        truth = tmp_path / "truth"
        status, _ = driver.run(micro_flags(tiny_synthetic, truth, **common))
        assert status == 0
        out = tmp_path / "killed"
        argv = micro_flags(tiny_synthetic, out, save_every_steps=1, async_checkpoint=True, **common)
        rng = random.Random(int(os.environ.get("VMAE2_KILL_SEED", "24")))
        kill_during_saves(driver, argv, out, KILLS, rng)
        status, _ = driver.run(argv)                             # resume to the end
        assert status == 0
    finally:
        driver.close()
    assert_same_weights(final_weights(truth), final_weights(out))
    assert not list(out.glob(".checkpoint-*.tmp"))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows if "loss" in r] == list(range(1, EPOCHS * 3 + 1))
    truth_rows = [json.loads(x) for x in (truth / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if "loss" in r] == [r["loss"] for r in truth_rows if "loss" in r]
