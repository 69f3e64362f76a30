"""SIGKILL in the middle of checkpoint writes, 20 times at random offsets: the newest checkpoint
always loads, every resume continues from it, and the run ends with the weights of a run that was
never interrupted (the truth: the same command, not killed)."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_pretrain_loop import assert_same_weights, final_weights, micro_flags
from vmae2_fast.models.weights import read_checkpoint
from vmae2_fast.train.checkpoint import numbered_checkpoints

DRIVER = Path(__file__).with_name("slow_save_driver.py")
KILLS = 20


class Driver:
    """The warm process of slow_save_driver.py: one forked training run per `run` call."""

    def __init__(self, env):
        self.proc = subprocess.Popen([sys.executable, str(DRIVER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, bufsize=1)

    def line(self) -> str:
        out = self.proc.stdout.readline()
        assert out, "the driver died"
        return out.strip()

    def run(self, argv, slow=False, kill_at_save=0, rng=None):
        """Run one child; with ``kill_at_save`` k, SIGKILL it at a random offset of its k-th
        checkpoint write. Returns (exit status, whether the kill came before the data was all
        written, or None when no kill happened)."""
        self.proc.stdin.write(json.dumps({"argv": argv, "slow": slow}) + "\n")
        self.proc.stdin.flush()
        line = self.line()
        while not line.startswith("child "):
            line = self.line()
        pid = int(line.split()[1])
        saves, inside, t_write = 0, None, 0.3
        while True:
            line = self.line()
            if line.startswith("start"):
                saves += 1
                t0 = time.perf_counter()
                if saves == kill_at_save:
                    # up to 20 % past the write: the fsync / rename / link / prune that follow
                    time.sleep(rng.uniform(0.0, 1.2 * t_write))
                    os.kill(pid, signal.SIGKILL)
                    inside = True
            elif line == "written":
                t_write = time.perf_counter() - t0        # this machine's write time
                if inside:
                    inside = False                        # the kill came after the data
            elif line.startswith("exit"):
                return int(line.split()[1]), inside

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def newest(out: Path) -> Path:
    last = out / "checkpoint-last.pth"
    return last if last.exists() else numbered_checkpoints(out)[-1][1]


def kill_during_saves(driver, argv, out: Path, kills: int, rng, keep_last: int | None = None) -> None:
    """Run `argv` `kills` times, each killed (SIGKILL) during its second checkpoint write (the
    first completes: progress); after each kill the newest checkpoint and every numbered one load.
    The runs must progress, and at least half the kills must land inside a write."""
    steps, inside = [], 0
    for _ in range(kills):
        status, landed_inside = driver.run(argv, slow=True, kill_at_save=2, rng=rng)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        inside += bool(landed_inside)
        state = read_checkpoint(newest(out))                     # always loads
        for _, path in numbered_checkpoints(out):
            read_checkpoint(path)                                # so does every numbered one
        if keep_last is not None:
            assert len(numbered_checkpoints(out)) <= keep_last
        steps.append(state["global_step"])
    print(f"{inside} of {kills} kills landed inside a write; newest checkpoint after each kill at "
          f"global steps {steps}")
    assert steps == sorted(steps) and steps[0] >= 1, steps       # every run resumed and progressed
    assert inside >= kills // 2, f"only {inside} of {kills} kills landed inside a write"


@pytest.mark.slow
def test_twenty_kills_during_saves_always_leave_a_loadable_checkpoint(tiny_synthetic, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    driver = Driver(env)
    try:
        common = dict(no_progress=True, epochs=14, save_every=1, keep_last=2, kernels="reference",
                      log_every=1)
        truth = tmp_path / "truth"
        status, _ = driver.run(micro_flags(tiny_synthetic, truth, **common))
        assert status == 0
        out = tmp_path / "killed"
        argv = micro_flags(tiny_synthetic, out, save_every_steps=1, **common)
        rng = random.Random(int(os.environ.get("VMAE2_KILL_SEED", "20")))   # to repeat with others
        kill_during_saves(driver, argv, out, KILLS, rng, keep_last=2)
        status, _ = driver.run(argv)                             # resume to the end
        assert status == 0
    finally:
        driver.close()
    assert_same_weights(final_weights(truth), final_weights(out))
    assert not list(out.glob(".checkpoint-*.tmp"))               # partial writes cleaned up
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r["global_step"] for r in rows if "loss" in r]
    assert train == list(range(1, 14 * 3 + 1))                   # no row lost, none doubled
    truth_rows = [json.loads(x) for x in (truth / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if "loss" in r] == [r["loss"] for r in truth_rows if "loss" in r]
    assert os.path.samefile(out / "checkpoint-last.pth", out / "checkpoint-13.pth")   # a link
