"""One run per output folder: a lock file that names the run holding the folder.

Two runs on one ``--output-dir`` would overwrite each other's checkpoints and interleave
``metrics.jsonl``. A training run therefore holds the folder for its lifetime: ``run.lock`` in the
folder, created exclusively (a hard link of a complete temp file, so a reader never sees half a
lock), names the holder's host, pid, start time and job, and is removed when the run ends. Under
torchrun rank 0 holds it for the whole group (`hold_output_dir`).

A run that finds the folder held stops before any compute with ``error: ...`` naming the holder,
unless the lock is stale, which is taken over with a warning:
- same host: the holder's process is gone (or its pid now belongs to a younger process);
- another host, the same job (torchrun's run id, i.e. ``--rdzv-id``; else Slurm's job and step):
  an elastic restart, or a requeued Slurm job, takes back the lock of its own earlier attempt,
  whose rank 0 may have lived on another node. Safe because a job runs one attempt at a time:
  torchrun starts the next only once every worker of the previous one has stopped, Slurm requeues
  a job only once it has ended, and the rank 0 of this attempt is the process asking;
- another host, another job: the holder has not refreshed the lock for `STALE_AFTER_S` (its
  process touches the file every `HEARTBEAT_S`; a pid on another host cannot be asked).
"""
from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import OutputDirError

log = logging.getLogger("vmae2_fast")

__all__ = ["RunLock", "hold_output_dir", "LOCK_NAME", "HEARTBEAT_S", "STALE_AFTER_S"]

LOCK_NAME = "run.lock"
HEARTBEAT_S = 30.0          # how often the holder touches the lock
STALE_AFTER_S = 600.0       # a lock of another host untouched this long has lost its holder


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (Linux); None without /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _process_start(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot, to tell a reused pid from the
    holder; None where /proc is not there."""
    stat = _proc_stat(pid)
    return int(stat[19]) if stat else None          # field 22 of /proc/PID/stat


def _alive(pid: int, started: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:            # exists, owned by another user
        return True
    stat = _proc_stat(pid)
    if stat is None:
        return True
    return stat[0] != "Z" and (started is None or int(stat[19]) == started)   # a zombie has ended


def job_identity(env=os.environ) -> tuple[str, list[int]]:
    """(the job this process belongs to, its attempt): torchrun's run id (the ``--rdzv-id``, a
    random id under ``--standalone``), else Slurm's job and step ids; and, for the record,
    [Slurm requeues, torchrun restarts of this node's agent]. Empty for a run that is neither."""
    run_id = env.get("TORCHELASTIC_RUN_ID", "")
    # "none" is torchrun's --rdzv-id when none is given: shared by unrelated jobs, so no identity
    job = run_id if run_id not in ("", "none") else ""
    if not job and env.get("SLURM_JOB_ID"):
        job = f"slurm-{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', 'batch')}"
    attempt = [int(env.get("SLURM_RESTART_COUNT", 0) or 0), int(env.get("TORCHELASTIC_RESTART_COUNT", 0) or 0)]
    return job, attempt


def describe(holder: dict) -> str:
    job = f", job {holder['job']} attempt {holder.get('attempt')}" if holder.get("job") else ""
    return f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}{job}"


class RunLock:
    """The lock of one output folder, held by this process (`acquire`) until `release`."""

    def __init__(self, path: Path, record: dict):
        self.path, self.record = path, record
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="vmae2_fast-run-lock", daemon=True)
        self._beat.start()

    @classmethod
    def acquire(cls, out, env=os.environ) -> "RunLock":
        """Hold `out` for this process, taking a stale lock over (with a warning); raise
        `OutputDirError` naming the holder when another run holds it."""
        path = Path(out) / LOCK_NAME
        job, attempt = job_identity(env)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_start(os.getpid()),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "job": job, "attempt": attempt, "command": " ".join(sys.argv)[:300]}
        for _ in range(5):
            if _create(path, me):
                return cls(path, me)
            held, raw = _read(path)
            if raw is None:                    # removed between our try and the read
                continue
            why = _stale_because(held, path, me)
            if why is None:
                raise OutputDirError(
                    f"--output-dir {out} is in use by another run ({describe(held)}; lock file {path}). "
                    "Wait for it to end or pass another --output-dir; if no run uses this folder any "
                    f"longer (e.g. its node was lost), delete {path}")
            if _read(path)[1] == raw:          # still the lock we judged: nobody took it meanwhile
                path.unlink(missing_ok=True)
                log.warning("took over the lock of %s from %s: %s", out, describe(held), why)
        raise OutputDirError(f"could not take the lock {path}: other runs keep taking it; start one run "
                             "per --output-dir")

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if _read(self.path)[0].get("pid") == self.record["pid"]:
                    os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        """Remove the lock if it is still this process's (a forked child never removes it)."""
        self._stop.set()
        if os.getpid() != self.record["pid"]:
            return
        held, _ = _read(self.path)
        if held.get("pid") == self.record["pid"] and held.get("host") == self.record["host"]:
            self.path.unlink(missing_ok=True)


def _stale_because(held: dict, path: Path, me: dict) -> str | None:
    """Why a lock held by `held` may be taken by `me`, or None when its holder may be running."""
    if held.get("host") == me["host"]:
        pid = held.get("pid")
        if not isinstance(pid, int) or not _alive(pid, held.get("process_start")):
            return "its process is gone"
        return None
    if held.get("job") and held.get("job") == me["job"]:
        return f"an earlier attempt of the same job {me['job']}"
    try:
        idle = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return "it was removed"
    if idle > STALE_AFTER_S:
        return f"its holder on another host has not refreshed it for {idle / 60:.0f} minutes"
    return None


def _create(path: Path, record: dict) -> bool:
    """Create `path` holding `record`, only if it does not exist; False if it does."""
    fd, tmp = tempfile.mkstemp(prefix=f".{LOCK_NAME}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)                 # atomic, and fails when the name exists
            return True
        except FileExistsError:
            return False
        except OSError as exc:                 # no hard links on this file system
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV):
                raise
        try:
            fd2 = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return False
        with os.fdopen(fd2, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        return True
    finally:
        os.unlink(tmp)


def _read(path: Path) -> tuple[dict, str | None]:
    """(the holder's record, the file's text); ({}, None) when there is no lock. A lock being
    written (an empty or cut file, where hard links are missing) is read again after a pause."""
    for attempt in range(3):
        try:
            raw = path.read_text()
        except FileNotFoundError:
            return {}, None
        try:
            return json.loads(raw), raw
        except ValueError:
            if attempt < 2:
                time.sleep(0.2)
    return {"host": "unknown (the lock file is not readable)"}, raw


def hold_output_dir(out, dist) -> RunLock | None:
    """Rank 0 takes the folder's lock for the group; every rank stops with the same
    `OutputDirError` when it is held. Returns the lock on rank 0, None elsewhere."""
    lock, refusal = None, None
    if dist.is_main:
        try:
            lock = RunLock.acquire(out)
        except OutputDirError as exc:
            refusal = str(exc)
    if dist.enabled:
        import torch.distributed as tdist
        box = [refusal]
        tdist.broadcast_object_list(box, src=0)
        refusal = box[0]
    if refusal is not None:
        raise OutputDirError(refusal)
    return lock
