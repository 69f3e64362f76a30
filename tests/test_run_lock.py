"""One run per output folder (train/run_lock.py): a second run on a held folder is refused before
any compute with `error:` naming the holder; a lock whose holder is gone is taken over with a
warning; an elastic restart takes its own earlier attempt's lock back (test_elastic.py runs that
under torchrun)."""
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from cli_runs import micro_flags, train_records
from vmae2_fast.errors import OutputDirError
from vmae2_fast.pretrain import main
from vmae2_fast.train import run_lock
from vmae2_fast.train.run_lock import LOCK_NAME, RunLock


def plant(folder, **record):
    """A lock file as another run would have left it."""
    base = {"host": socket.gethostname(), "pid": 0, "process_start": None, "started": "2026-01-01T00:00:00+00:00",
            "job": "", "attempt": [0, 0], "command": "python -m vmae2_fast.pretrain"}
    (folder / LOCK_NAME).write_text(json.dumps({**base, **record}))


@pytest.fixture
def live_pid():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_held_folder_is_refused_naming_the_holder(tmp_path, live_pid):
    plant(tmp_path, pid=live_pid, started="2026-05-04T03:02:01+00:00")
    with pytest.raises(OutputDirError) as err:
        RunLock.acquire(tmp_path, env={})
    msg = str(err.value)
    assert f"pid {live_pid}" in msg and socket.gethostname() in msg and "2026-05-04T03:02:01" in msg
    assert str(tmp_path / LOCK_NAME) in msg


def test_the_holder_is_written_and_released(tmp_path):
    lock = RunLock.acquire(tmp_path, env={})
    held = json.loads((tmp_path / LOCK_NAME).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and held["started"]
    with pytest.raises(OutputDirError):             # the same process cannot hold it twice either
        RunLock.acquire(tmp_path, env={})
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_dead_holder_on_this_host_is_taken_over_with_a_warning(tmp_path, dead_pid, caplog):
    plant(tmp_path, pid=dead_pid)
    with caplog.at_level(logging.WARNING, logger="vmae2_fast"):
        lock = RunLock.acquire(tmp_path, env={})
    assert f"pid {dead_pid}" in caplog.text and "its process is gone" in caplog.text
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_reused_pid_does_not_keep_a_lock(tmp_path, live_pid):
    started = run_lock._process_start(live_pid)
    plant(tmp_path, pid=live_pid, process_start=started - 1)        # the holder was an older process
    RunLock.acquire(tmp_path, env={}).release()


def test_an_elastic_restart_takes_its_own_lock_back_from_another_node(tmp_path, live_pid):
    """The holder lived on another node (its pid cannot be asked there); the same job means an
    earlier attempt of this one, as a job runs one attempt at a time."""
    job = {"TORCHELASTIC_RUN_ID": "job-7", "TORCHELASTIC_RESTART_COUNT": "1"}
    plant(tmp_path, pid=live_pid, host="node-b", job="job-7")
    RunLock.acquire(tmp_path, env=job).release()
    plant(tmp_path, pid=live_pid, host="node-b", job="job-8")                   # another job
    with pytest.raises(OutputDirError):
        RunLock.acquire(tmp_path, env=job)
    plant(tmp_path, pid=live_pid, job="job-7")         # a live process of this host is never displaced
    with pytest.raises(OutputDirError):
        RunLock.acquire(tmp_path, env=job)
    # torchrun's default --rdzv-id is "none", shared by unrelated jobs: no identity
    plant(tmp_path, pid=live_pid, host="node-b", job="")
    with pytest.raises(OutputDirError):
        RunLock.acquire(tmp_path, env={"TORCHELASTIC_RUN_ID": "none"})
    # a requeued Slurm job restarts its steps from 0; another step of a running job is another run
    slurm = {"SLURM_JOB_ID": "5", "SLURM_STEP_ID": "0"}
    plant(tmp_path, pid=live_pid, host="node-b", job="slurm-5.0")
    RunLock.acquire(tmp_path, env=slurm).release()
    plant(tmp_path, pid=live_pid, host="node-b", job="slurm-5.1")
    with pytest.raises(OutputDirError):
        RunLock.acquire(tmp_path, env=slurm)


def test_another_hosts_lock_is_stale_only_without_heartbeat(tmp_path):
    plant(tmp_path, host="node-far", pid=1)
    with pytest.raises(OutputDirError, match="node-far"):
        RunLock.acquire(tmp_path, env={})
    old = time.time() - run_lock.STALE_AFTER_S - 60
    os.utime(tmp_path / LOCK_NAME, (old, old))
    RunLock.acquire(tmp_path, env={}).release()


def test_the_holder_refreshes_its_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
    lock = RunLock.acquire(tmp_path, env={})
    old = time.time() - 1000
    os.utime(tmp_path / LOCK_NAME, (old, old))
    time.sleep(0.5)
    assert time.time() - (tmp_path / LOCK_NAME).stat().st_mtime < 5
    lock.release()


# Holds the stage-1 CLI (prints "paused", then sleeps) before its first optimiser step.
_HELD_RUN = """
import sys, time
from vmae2_fast.train.loop import Trainer
from vmae2_fast.pretrain import main
def held(self, batches):
    print("paused", flush=True)
    time.sleep(600)
Trainer.train_step = held
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_second_run_on_a_busy_folder_is_refused_and_a_killed_ones_folder_is_taken_over(
        tiny_synthetic, tmp_path, capsys):
    out = tmp_path / "run"
    argv = micro_flags(tiny_synthetic, out, no_progress=True, epochs=1, kernels="reference")
    first = subprocess.Popen([sys.executable, "-c", _HELD_RUN, *argv], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
    timer = threading.Timer(120, first.kill)        # a child that never pauses fails, not hangs
    timer.start()
    try:
        line = first.stdout.readline()
        while line and "paused" not in line:
            line = first.stdout.readline()
        assert "paused" in line, "the first run never reached its first step"
        assert main(argv) == 2                                  # refused
        err = capsys.readouterr().err
        assert err.startswith("error: ") and f"pid {first.pid}" in err and "in use by another run" in err
        assert not (out / "metrics.jsonl").exists() or not train_records(out)
        first.send_signal(signal.SIGKILL)                       # the first run dies holding the folder
        first.wait(timeout=60)
    finally:
        timer.cancel()
        if first.poll() is None:
            first.kill()
        first.wait()
    assert main(argv) == 0                                      # its lock is stale: taken over
    took = [x for x in (out / "log.txt").read_text().splitlines() if "took over the lock" in x]
    assert len(took) == 1 and f"pid {first.pid}" in took[0] and "its process is gone" in took[0]
    assert [r["global_step"] for r in train_records(out)] == [1, 2, 3]
    assert not (out / LOCK_NAME).exists()
