"""The checkpoint files of a run: checkpoint-last.pth is a hard link to the newest numbered file
(a copy, with a warning, where links are impossible), --keep-last bounds the numbered files while
checkpoint-best.pth is kept apart, and a full disk while saving keeps the previous checkpoint and
stops with a clear message: on a real full tmpfs (private mount namespace), and, everywhere, with
the writer failing the way torch.save does on a full disk."""
import errno
import math
import os
import shlex
import subprocess
import sys

import pytest
import torch

from test_classify_stages import flags as cls_flags
from test_pretrain_loop import micro_flags
from test_user_errors import needs_mounts
from vmae2_fast.cli import main_for
from vmae2_fast.models.weights import read_checkpoint
from vmae2_fast.train import checkpoint as ckpt


def flags(ds, out, **extra):
    return micro_flags(ds, out, no_progress=True, kernels="reference", **extra)


def numbered(out):
    return sorted(p.name for p in out.glob("checkpoint-[0-9]*.pth"))


def test_last_is_a_hard_link_and_keep_last_bounds_the_numbered(tiny_synthetic, tmp_path):
    out = tmp_path / "run"
    assert main_for("pretrain", flags(tiny_synthetic, out, epochs=4, keep_last=2)) == 0
    assert numbered(out) == ["checkpoint-2.pth", "checkpoint-3.pth"]
    assert os.path.samefile(out / "checkpoint-last.pth", out / "checkpoint-3.pth")
    assert os.stat(out / "checkpoint-3.pth").st_nlink == 2      # one file on disk, two names
    assert read_checkpoint(out / "checkpoint-last.pth")["global_step"] == 12


def test_a_copy_where_hard_links_are_impossible(tiny_synthetic, tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(ckpt.os, "link", no_links)
    out = tmp_path / "run"
    assert main_for("pretrain", flags(tiny_synthetic, out, epochs=2)) == 0
    last, newest = out / "checkpoint-last.pth", out / "checkpoint-1.pth"
    assert not os.path.samefile(last, newest) and last.read_bytes() == newest.read_bytes()
    assert (out / "log.txt").read_text().count("has no hard links: checkpoint-last.pth is a full copy") == 1


def test_best_checkpoint_is_kept_apart_from_keep_last(tiny_synthetic, tmp_path):
    out = tmp_path / "ft"
    assert main_for("finetune", cls_flags(tiny_synthetic, out, epochs=3, keep_last=1)) == 0
    assert numbered(out) == ["checkpoint-2.pth"]
    best = read_checkpoint(out / "checkpoint-best.pth")
    assert best["epoch"] in (0, 1, 2) and "val_top1" in best


@pytest.mark.parametrize("background", [False, True], ids=["sync", "async-checkpoint"])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tiny_synthetic, tmp_path, monkeypatch,
                                                               capsys, background):
    """With --async-checkpoint the write fails in the background: the run stops at the next save."""
    real_save = torch.save
    calls = []

    def save(obj, f, *a, **k):          # the third checkpoint meets a full disk, as torch.save does
        calls.append(1)
        if len(calls) == 3:
            f.write(b"partial")
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(ckpt.torch, "save", save)
    out = tmp_path / "run"
    assert main_for("pretrain", flags(tiny_synthetic, out, epochs=4, async_checkpoint=background)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on the device") and "Traceback" not in err
    assert "previous checkpoint is intact" in err and "(global step 6)" in err, err
    assert read_checkpoint(out / "checkpoint-last.pth")["global_step"] == 6
    assert numbered(out) == ["checkpoint-0.pth", "checkpoint-1.pth"]
    assert not list(out.glob(".checkpoint-*.tmp"))               # the partial file was removed
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert main_for("pretrain", flags(tiny_synthetic, out, epochs=4, async_checkpoint=background)) == 0   # resume
    assert read_checkpoint(out / "checkpoint-last.pth")["global_step"] == 12


@pytest.mark.slow
@needs_mounts
def test_a_real_full_disk_while_saving(tiny_synthetic, tmp_path):
    """A tmpfs with room for two checkpoints (and the links to them), not three."""
    probe = tmp_path / "probe"
    assert main_for("pretrain", flags(tiny_synthetic, probe, epochs=1)) == 0
    size = (probe / "checkpoint-0.pth").stat().st_size
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    kib = math.ceil(2.5 * size / 1024) + 64
    cli = shlex.join([sys.executable, "-m", "vmae2_fast.pretrain",
                      *flags(tiny_synthetic, mnt / "run", epochs=3)])
    check = shlex.join([sys.executable, "-c", (
        "import sys; from vmae2_fast.models.weights import read_checkpoint; "
        "print('last_step', read_checkpoint(sys.argv[1])['global_step'])"),
        str(mnt / "run" / "checkpoint-last.pth")])
    script = (f"mount -t tmpfs -o size={kib}k tmpfs {mnt} && {cli}; echo rc=$?; {check}; "
              f"ls -a {mnt / 'run'}")
    res = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                         capture_output=True, text=True, timeout=300)
    assert "rc=2" in res.stdout, res.stdout + res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "error: no space left" in res.stderr, res.stderr[-3000:]
    assert "last_step 6" in res.stdout, res.stdout                  # the previous one loads
    listing = res.stdout.split()
    assert "checkpoint-1.pth" in listing and "checkpoint-2.pth" not in listing
    assert not [n for n in listing if n.endswith(".tmp")]
