"""Test helper for tests/test_checkpoint_kill.py (not a test itself).

Imports the engine once, then, for every JSON line on stdin (``{"argv": [...], "slow": bool}``),
forks a child that runs ``python -m vmae2_fast.pretrain ARGV`` in-process and waits for it. Forking
from one warm process makes each run start in a fraction of a second instead of re-importing torch,
so that a test can afford 20 kills. With ``slow``, the child's checkpoint writes go through
`slow_save`: the serialised checkpoint is written in small chunks with pauses, and ``start N`` /
``written`` lines on stdout frame every write, so that the test can SIGKILL the child in the middle
of one. The driver prints ``child PID`` when a child starts and ``exit STATUS`` when it ends.
The driver runs torch single-threaded (OMP_NUM_THREADS=1), so the children fork from a process
without OpenMP worker threads.
"""
import io
import json
import os
import sys
import time
import traceback

import torch

import vmae2_fast.data.pyav.pretrain  # noqa: F401  (imported once here, not in every child)
import vmae2_fast.stages.pretrain  # noqa: F401
from vmae2_fast.cli import main_for


def warm_up():
    """Pay torch's first-use costs (lazy imports of the optimiser, autograd start-up) once here.
    Safe before fork only single-threaded: the test runs the driver with OMP_NUM_THREADS=1."""
    assert os.environ.get("OMP_NUM_THREADS") == "1"
    w = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([w], fused=True)
    (w * 2).sum().backward()
    opt.step()

CHUNK, PAUSE = 16 * 1024, 0.002
_real_save = torch.save


def slow_save(obj, f, *args, **kwargs):
    buf = io.BytesIO()
    _real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    print(f"start {len(data)}", flush=True)
    for i in range(0, len(data), CHUNK):
        f.write(data[i:i + CHUNK])
        f.flush()
        time.sleep(PAUSE)
    print("written", flush=True)


def main():
    warm_up()
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if job.get("slow"):
                    torch.save = slow_save
                code = main_for("pretrain", job["argv"])
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(f"child {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {status}", flush=True)


if __name__ == "__main__":
    main()
