import argparse
import random

import numpy as np
import pytest
import torch

from vmae2_fast.train import checkpoint as ckpt
from vmae2_fast.models.weights import CheckpointError, read_checkpoint as load_checkpoint
from vmae2_fast.train.checkpoint import (
    capture_rng_state, latest_checkpoint, prune_checkpoints, restore_rng_state, save_checkpoint,
)


def make_state(epoch):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
            "args": {"lr": 1e-3, "name": "x", "dims": [1, 2]}, "rng": capture_rng_state()}


def test_round_trip_weights_only(tmp_path):
    state = make_state(3)
    path = save_checkpoint(tmp_path / "checkpoint-3.pth", state)
    loaded = torch.load(path, weights_only=True)  # the strict loader must accept it
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and loaded["args"] == state["args"]
    for k, v in state["model"].items():
        assert torch.equal(loaded["model"][k], v)
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind


def test_rejects_unloadable_objects_at_save_time(tmp_path):
    with pytest.raises(TypeError, match="Namespace"):
        save_checkpoint(tmp_path / "checkpoint-0.pth", {"args": argparse.Namespace(lr=1)})
    assert not any(tmp_path.iterdir())


def test_crash_during_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint-1.pth"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})
    before = path.read_bytes()

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "checkpoint-2.pth", {"epoch": 2})
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1.pth"]
    assert latest_checkpoint(tmp_path) == path


def test_hard_crash_leftover_temp_is_ignored(tmp_path):
    save_checkpoint(tmp_path / "checkpoint-4.pth", {"epoch": 4})
    # What a SIGKILL mid-write would leave behind:
    (tmp_path / ".checkpoint-5.pth.abc123.tmp").write_bytes(b"PK\x03\x04trunc")
    (tmp_path / "checkpoint-best.pth").write_bytes(b"x")
    (tmp_path / "checkpoint-7.pth.tmp").write_bytes(b"x")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-4.pth"


def test_latest_is_numeric_not_lexicographic(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None
    for n in (2, 9, 10, 1):
        save_checkpoint(tmp_path / f"checkpoint-{n}.pth", {"epoch": n})
    assert latest_checkpoint(tmp_path).name == "checkpoint-10.pth"


def test_prune_keeps_newest_and_best(tmp_path):
    for n in (1, 2, 9, 10, 11):
        save_checkpoint(tmp_path / f"checkpoint-{n}.pth", {"epoch": n})
    save_checkpoint(tmp_path / "checkpoint-best.pth", {"epoch": 2})
    deleted = prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in deleted) == ["checkpoint-1.pth", "checkpoint-2.pth", "checkpoint-9.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-10.pth", "checkpoint-11.pth", "checkpoint-best.pth"]
    with pytest.raises(ValueError):
        prune_checkpoints(tmp_path, keep_last=0)


def draws():
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
            np.random.randn(), torch.rand(4).tolist(), torch.randint(0, 100, (3,)).tolist())


def test_rng_round_trip_through_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)      # leaves a cached gauss value in Python's state
    np.random.randn()       # and NumPy's
    save_checkpoint(tmp_path / "checkpoint-0.pth", {"rng": capture_rng_state()})
    expected = draws()
    draws()                 # advance everything further
    restore_rng_state(load_checkpoint(tmp_path / "checkpoint-0.pth")["rng"])
    assert draws() == expected


def test_missing_and_corrupt_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "checkpoint-1.pth")
    good = save_checkpoint(tmp_path / "checkpoint-2.pth", {"w": torch.arange(1000.0)})
    bad = tmp_path / "checkpoint-3.pth"
    bad.write_bytes(good.read_bytes()[:200])  # truncated copy
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    msg = str(info.value)
    assert "checkpoint-3.pth" in msg and "corrupt" in msg and "earlier" in msg
    garbage = tmp_path / "checkpoint-4.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="checkpoint-4.pth"):
        load_checkpoint(garbage)


class _WritesAFile:
    """Unpickling this runs code (it would create `marker`)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_code_carrying_pickle_is_refused_and_names_the_global(tmp_path):
    path, marker = tmp_path / "evil.pth", tmp_path / "pwned"
    torch.save({"model": {}, "x": _WritesAFile(marker)}, path)
    with pytest.raises(CheckpointError, match=r"\(io.open\).*--trust-checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()
    with pytest.warns(UserWarning, match="trusted"):
        load_checkpoint(path, trust_code=True)          # only when the user says so
    assert marker.exists()


def test_official_namespace_loads_without_unpickling_code(tmp_path):
    path = tmp_path / "official.pth"
    torch.save({"args": argparse.Namespace(lr=1)}, path)
    assert load_checkpoint(path)["args"].lr == 1          # argparse.Namespace is on the allow-list


@pytest.mark.parametrize("content, reason", [
    (b"", "is empty"),
    (b"not a checkpoint at all", "not a PyTorch checkpoint"),
])
def test_each_unreadable_file_gets_its_own_message(tmp_path, content, reason):
    path = tmp_path / "c.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=reason):
        load_checkpoint(path)


def test_zip_that_is_not_a_checkpoint(tmp_path):
    import zipfile
    path = tmp_path / "c.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "hello")
    with pytest.raises(CheckpointError, match="zip archive but not a PyTorch checkpoint"):
        load_checkpoint(path)
