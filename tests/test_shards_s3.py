"""Shard sets in a real object store: SeaweedFS's S3 gateway and an HTTP server, both on loopback
(tests/object_store.py). The sets are written to s3:// by `make_shards` through the client the
reader uses (s3fs, credentials and endpoint from the standard AWS variables only); every stage
trains from them, a run stopped mid-epoch resumes to the same losses, a store that goes away for
a few seconds is retried, and one that stays away stops the run with the URL and the tries."""
from __future__ import annotations

import json
import os
import threading
import time

import pytest

import needs
from cli_runs import micro_flags, train_records
from object_store import HttpFiles, start_or_skip
from vmae2_fast.cli import config_for
from vmae2_fast.data.shard_store import ShardSet
from vmae2_fast.data.tools.shards import write_shards
from vmae2_fast.train.loop import Trainer

needs.module("s3fs")            # of the `test` extra: skip locally, fail on CI

ONE_ATTEMPT = {"config_kwargs": {"connect_timeout": 1, "retries": {"total_max_attempts": 1}}}
SHARD = "12KB"                  # about 3 tiny videos a shard: 4-5 shards, so an epoch spans several


def aws_env(server) -> dict:
    # nothing from a ~/.aws of the machine: the variables alone must reach the server
    return {**server.env(), "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with start_or_skip(tmp_path_factory.mktemp("seaweed")) as server:
        server.make_bucket("vmae")
        yield server


@pytest.fixture
def env(s3, monkeypatch):
    for k, v in aws_env(s3).items():
        monkeypatch.setenv(k, v)


@pytest.fixture(scope="module")
def sets(s3, tiny_synthetic):
    """The tiny set's lists written straight to s3://vmae/tiny/{pre,cls/train,cls/val}."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in aws_env(s3).items():
            mp.setenv(k, v)
        for name, lst in (("pre", tiny_synthetic.pretrain_list), ("cls/train", tiny_synthetic.train_list),
                          ("cls/val", tiny_synthetic.val_list)):
            write_shards(lst, tiny_synthetic.root, f"s3://vmae/tiny/{name}", shard_size=SHARD, progress=False)
    return "s3://vmae/tiny"


@pytest.fixture(scope="module")
def local_pre(tiny_synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "pre"
    write_shards(tiny_synthetic.pretrain_list, tiny_synthetic.root, str(out), shard_size=SHARD, progress=False)
    return out


def _pretrain(ds, out, **flags):
    from vmae2_fast.stages.pretrain import run
    return run(config_for("pretrain", micro_flags(ds, out, no_progress=True, **flags)))


def _losses(out):
    return [(r["global_step"], r["loss"]) for r in train_records(out)]


def test_the_writer_put_a_set_in_the_bucket(s3, sets, env):
    fs = s3.fs()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("vmae/tiny/pre"))
    assert "shards.json" in names and sum(n.startswith("shard-") for n in names) >= 4
    s = ShardSet.open(f"{sets}/pre")
    assert s.num_samples == 12 and s.kind == "pretrain"


def test_pretraining_from_s3_resumes_mid_epoch_to_the_same_losses(tiny_synthetic, sets, env, local_pre, tmp_path):
    flags = dict(data=f"{sets}/pre", epochs=2, num_workers=2, save_every_steps=2)
    _pretrain(tiny_synthetic, tmp_path / "a", **flags)
    _pretrain(tiny_synthetic, tmp_path / "b", max_steps=4, **flags)
    _pretrain(tiny_synthetic, tmp_path / "b", **flags)                    # resumes at step 4 of 6
    _pretrain(tiny_synthetic, tmp_path / "local", **{**flags, "data": str(local_pre)})
    a = _losses(tmp_path / "a")
    assert [s for s, _ in a] == list(range(1, 7))
    assert _losses(tmp_path / "b") == a                                   # step 5 is mid-epoch 1
    assert _losses(tmp_path / "local") == a                               # the order is the manifest's


def test_finetuning_from_s3_resumes_mid_epoch_to_the_same_losses_and_evaluates(tiny_synthetic, sets, env,
                                                                                tmp_path):
    from vmae2_fast import evaluate, finetune

    def finetune_run(out, *extra):
        assert finetune.main(["--model", "vit_micro", "--preset", "cpu_demo", "--data", f"{sets}/cls",
                              "--output-dir", str(out), "--input-size", "32", "--num-frames", "4",
                              "--sampling-rate", "2", "--batch-size", "4", "--epochs", "2",
                              "--warmup-epochs", "0", "--num-workers", "2", "--no-progress",
                              "--log-every", "1", "--save-every-steps", "2", *extra]) == 0
    finetune_run(tmp_path / "a")
    finetune_run(tmp_path / "b", "--max-steps", "4")
    finetune_run(tmp_path / "b")                                          # resumes at step 4 of 6
    a = _losses(tmp_path / "a")
    assert [s for s, _ in a] == list(range(1, 7))
    assert _losses(tmp_path / "b") == a                                   # step 5 is mid-epoch 1
    out = tmp_path / "a"
    ev = tmp_path / "ev"
    assert evaluate.main(["--checkpoint", str(out / "checkpoint-last.pth"), "--data", f"{sets}/cls",
                          "--output-dir", str(ev), "--num-workers", "2", "--batch-views", "6"]) == 0
    assert len((ev / "predictions.jsonl").read_text().splitlines()) == 6    # every val video


def test_the_credentials_come_from_the_environment_or_storage_options(s3, sets, monkeypatch):
    from vmae2_fast.errors import ConfigError
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    s = ShardSet.open(f"{sets}/pre", s3.storage_options())                 # --storage-options
    assert s.num_samples == 12
    wrong = {**s3.storage_options(), "secret": "wrong"}
    with pytest.raises(ConfigError, match="refused .*check the credentials"):    # not retried
        ShardSet.open(f"{sets}/pre", wrong)


def test_https_style_urls(tiny_synthetic, local_pre, tmp_path):
    with HttpFiles(local_pre.parent) as server:
        _pretrain(tiny_synthetic, tmp_path / "http", data=f"{server.url}/pre", epochs=1, num_workers=2)
    _pretrain(tiny_synthetic, tmp_path / "local", data=str(local_pre), epochs=1, num_workers=2)
    assert _losses(tmp_path / "http") == _losses(tmp_path / "local") != []


def _before_first_step(monkeypatch, action):
    """Run ``action`` once, just before the first optimiser step (the first batch is read, the
    rest of the epoch's shards are not all fetched yet)."""
    original, done = Trainer.train_step, []

    def step(self, batches):
        if self.global_step == 0 and not done:
            done.append(True)
            action()
        return original(self, batches)
    monkeypatch.setattr(Trainer, "train_step", step)


def test_a_store_lost_for_seconds_mid_epoch_is_retried(tiny_synthetic, local_pre, tmp_path, monkeypatch, capsys):
    """The S3 server is killed before the first step and started again a second later; the reads
    of the epoch's other shards fail, are retried with backoff, and the run ends with the losses
    of a run that saw no outage. botocore's own retries (5 attempts over 5-13 s, which would
    hide a short outage) are off, through --storage-options: the retries seen are ours."""
    assert len(ShardSet.open(str(local_pre)).shards) >= 4
    server = start_or_skip(tmp_path / "weed")
    keep, down, back = threading.Event(), threading.Event(), threading.Event()

    def outage():
        # its own thread, alive until the test ends: weed dies with the thread that started it
        server.stop()
        down.set()
        time.sleep(1.0)
        server.restart()
        back.set()
        keep.wait()
    thread = threading.Thread(target=outage, daemon=True)

    def lose_the_store():
        thread.start()
        down.wait(30)
    try:
        server.upload(local_pre, "s3://lost/pre")
        for k, v in aws_env(server).items():
            monkeypatch.setenv(k, v)
        _before_first_step(monkeypatch, lose_the_store)
        _pretrain(tiny_synthetic, tmp_path / "run", data="s3://lost/pre", epochs=2, num_workers=0,
                  storage_options=json.dumps(ONE_ATTEMPT))
        # the run may finish before restart() returns: the reader's GET can succeed before the
        # server's own readiness probe (a put and a get) does
        assert back.wait(60)
        logged = "".join(capsys.readouterr())
        assert "reading s3://lost/pre/shard-" in logged and "try 2 of 6" in logged
    finally:
        keep.set()
        thread.join(60) if thread.is_alive() else None
        server.stop()
    monkeypatch.undo()
    _pretrain(tiny_synthetic, tmp_path / "local", data=str(local_pre), epochs=2, num_workers=0)
    assert _losses(tmp_path / "run") == _losses(tmp_path / "local")


def test_a_store_that_stays_down_stops_the_run_naming_the_url(tiny_synthetic, local_pre, tmp_path,
                                                              monkeypatch, capsys):
    from vmae2_fast.pretrain import main
    server = HttpFiles(local_pre.parent)
    try:
        _before_first_step(monkeypatch, server.stop)
        t0 = time.monotonic()
        code = main(micro_flags(tiny_synthetic, tmp_path / "run", data=f"{server.url}/pre", epochs=1,
                                num_workers=0, no_progress=True))
        took = time.monotonic() - t0
    finally:
        server.stop()
    err = capsys.readouterr().err
    assert code == 2
    assert f"cannot read {server.url}/pre/shard-" in err and "6 tries over" in err
    assert "ClientConnectorError" in err and "run the same command again" in err
    assert 15 < took < 120                     # 0.5 + 1 + 2 + 4 + 8 s of backoff, then a clean stop


_TWO_EPOCHS = """
import sys, torch
from vmae2_fast.cli import config_for
from vmae2_fast.data.loaders import load_list, pretrain_loader
from vmae2_fast.train.distributed import DistInfo
cfg = config_for("pretrain", ["--model", "vit_micro", "--input-size", "32", "--num-frames", "4",
                              "--sampling-rate", "2", "--num-workers", "2", "--batch-size", "2"])
entries, index = load_list(sys.argv[1], "", decoder="pyav", labels=False)
loader = pretrain_loader(entries, index, cfg, DistInfo(), torch.device("cpu"), "pyav")
print([sum(1 for _ in loader(epoch)) for epoch in range(2)])
"""


def test_workers_leave_the_parents_s3_client_alone(s3, sets, tmp_path):
    """A forked DataLoader worker makes its own client; collecting the parent's there would close
    it on an event loop the worker does not have (aiobotocore's "Task exception was never
    retrieved ... attached to a different loop" on stderr)."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _TWO_EPOCHS, f"{sets}/pre"], capture_output=True, text=True,
                         timeout=300, env={**os.environ, **aws_env(s3)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("[6, 6]")
    assert "Task exception was never retrieved" not in out.stderr and "different loop" not in out.stderr
