"""Test helper (not a test): the stage-1 CLI under torchrun, with one planted fault, in the first
attempt of the group only (``TORCHELASTIC_RESTART_COUNT`` 0, or, with VMAE2_TEST_FAULT_ONCE=PATH,
in the process that creates the file PATH), so that a restarted group runs clean. RANK may be *.

    torchrun ... tests/fault_worker.py FLAGS...        with VMAE2_TEST_FAULT set to one of
    kill-at-step:RANK:STEP   rank RANK SIGKILLs itself when it is about to run optimiser step STEP + 1
    kill-in-save:RANK:N      rank RANK SIGKILLs itself halfway through writing its N-th checkpoint
                             file (the temp file half written: what a kill inside a write leaves)
    stall-at-step:RANK:STEP:SECONDS   rank RANK sleeps SECONDS before reading the batches of
                             optimiser step STEP + 1 (a rank stuck in I/O)
"""
import io
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from vmae2_fast.pretrain import main
from vmae2_fast.train import checkpoint_writer
from vmae2_fast.train.loop import Trainer


def die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def plant(fault: str) -> None:
    kind, rank, arg, *rest = fault.split(":")
    if rank != "*" and int(os.environ.get("RANK", "0")) != int(rank):
        return
    rank = os.environ.get("RANK", "0")
    once = os.environ.get("VMAE2_TEST_FAULT_ONCE")
    if once:                        # a marker file: the first process to create it plants the fault
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    elif os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    arg = int(arg)
    if kind == "kill-at-step":
        step = Trainer.train_step

        def train_step(self, batches):
            if self.global_step == arg:
                print(f"fault: rank {rank} killed before step {arg + 1}", flush=True)
                die()
            return step(self, batches)
        Trainer.train_step = train_step
    elif kind == "stall-at-step":
        read = Trainer._next_batches

        def next_batches(self, loader):
            if self.global_step == arg:
                print(f"fault: rank {rank} stalls before step {arg + 1}", flush=True)
                time.sleep(float(rest[0]))
            return read(self, loader)
        Trainer._next_batches = next_batches
    elif kind == "kill-in-save":
        real, count = checkpoint_writer.save_checkpoint, [0]

        def save_checkpoint(path, state):
            count[0] += 1
            if count[0] != arg:
                return real(path, state)
            import torch
            buf = io.BytesIO()
            torch.save(state, buf)
            path = Path(path)
            fd, _ = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.write(fd, buf.getvalue()[:len(buf.getvalue()) // 2])
            os.fsync(fd)
            print(f"fault: rank {rank} killed halfway through writing {path.name}", flush=True)
            die()
        checkpoint_writer.save_checkpoint = save_checkpoint
    else:
        raise ValueError(f"unknown fault {fault!r}")


if __name__ == "__main__":
    if os.environ.get("VMAE2_TEST_FAULT"):
        plant(os.environ["VMAE2_TEST_FAULT"])
    sys.exit(main(sys.argv[1:]))
