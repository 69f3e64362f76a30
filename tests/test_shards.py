"""Shard sets on a local folder: the writer's tars (read back by `webdataset`, a reader other than
ours), the epoch order (every sample once across ranks and workers, deterministic per seed and
epoch), exact mid-epoch resume, undecodable records, and the stages trained from shards."""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import needs
from cli_runs import micro_flags, train_records
from vmae2_fast.cli import config_for
from vmae2_fast.data.lists import read_list
from vmae2_fast.data.pyav.pretrain import PretrainVideoDataset
from vmae2_fast.data.shard_loader import ShardTrainLoader, epoch_sequence, shard_entries
from vmae2_fast.data.shard_store import MANIFEST, ShardSet
from vmae2_fast.data.tools.shards import main as make_shards, parse_size, write_shards
from vmae2_fast.errors import ConfigError, DataError, MissingFileError
from vmae2_fast.train.distributed import DistInfo


@pytest.fixture(scope="module")
def pre_shards(tiny_synthetic, tmp_path_factory):
    """The tiny set's pre-training list in shards of about 3 videos (12 videos, 4-5 shards)."""
    out = tmp_path_factory.mktemp("shards") / "pre"
    write_shards(tiny_synthetic.pretrain_list, tiny_synthetic.root, str(out), shard_size="12KB",
                 progress=False)
    return out


@pytest.fixture(scope="module")
def cls_shards(tiny_synthetic, tmp_path_factory):
    """The tiny set's fine-tuning lists as DATA/train and DATA/val shard sets."""
    out = tmp_path_factory.mktemp("shards") / "cls"
    for part, lst in (("train", tiny_synthetic.train_list), ("val", tiny_synthetic.val_list)):
        write_shards(lst, tiny_synthetic.root, str(out / part), shard_size="12KB", progress=False)
    return out


def test_the_tars_are_webdataset_shards_holding_the_listed_files(tiny_synthetic, pre_shards):
    wds = needs.module("webdataset")
    listed = read_list(tiny_synthetic.pretrain_list, tiny_synthetic.root)
    doc = json.loads((pre_shards / MANIFEST).read_text())
    tars = sorted(str(p) for p in pre_shards.glob("shard-*.tar"))
    assert len(tars) == len(doc["shards"]) >= 3
    samples = list(wds.WebDataset(tars, shardshuffle=False))
    assert len(samples) == len(listed)
    for s, e in zip(samples, listed):                       # list order, the file's own bytes
        meta = json.loads(s["json"])
        assert meta["source"] == e.rel
        assert hashlib.sha256(s["webm"]).digest() == hashlib.sha256(Path(e.path).read_bytes()).digest()
        import av
        with av.open(e.path) as c:                          # frame count: a full decode's
            assert meta["frames"] == sum(1 for _ in c.decode(video=0))
    # the manifest's byte ranges are where tarfile finds each member's data
    for rec in doc["shards"]:
        with tarfile.open(pre_shards / rec["name"]) as t:
            videos = [m for m in t.getmembers() if not m.name.endswith(".json")]
            assert [m.offset_data for m in videos] == rec["offsets"]
            assert [m.size for m in videos] == rec["sizes"]


def test_classification_sets_carry_labels_and_class_names(tiny_synthetic, cls_shards):
    s = ShardSet.open(str(cls_shards / "train"))
    listed = read_list(tiny_synthetic.train_list, tiny_synthetic.root, labels=True)
    assert s.kind == "classify" and s.labels.tolist() == [e.label for e in listed]
    names = Path(tiny_synthetic.root, "classes.txt").read_text().split()
    assert s.classes == names


def _names(items):
    return [name for name, _skipped in items]


def _collect(shards, *, world, workers, epoch=0, skip=0, batch=2, seed=5):
    """Per rank, the names of the samples of each batch, loading nothing but the name."""
    out = []
    for rank in range(world):
        ds = PretrainVideoDataset(shard_entries(shards), seed=seed)
        cfg = type("C", (), {"batch_size": batch})()
        loader = ShardTrainLoader(shards, ds, _load_name, _failed, _names, cfg,
                                  DistInfo(rank=rank, world_size=world), torch.device("cpu"), workers)
        out.append([b for b in loader(epoch, skip)])
    return out


def _load_name(dataset, entry, rng):
    return (str(entry.path),)


def _failed(skipped):
    return "<none>", skipped


@pytest.mark.parametrize("world,workers", [(1, 0), (1, 2), (2, 2), (3, 1)])
def test_an_epoch_reads_every_sample_once_across_ranks_and_workers(pre_shards, world, workers):
    shards = ShardSet.open(str(pre_shards))
    seq = epoch_sequence(shards, 5, 0)
    per_rank = _collect(shards, world=world, workers=workers)
    steps = shards.num_samples // (2 * world)
    assert all(len(r) == steps for r in per_rank)            # equal steps: no rank waits on another
    seen = [x for r in per_rank for b in r for x in b]
    assert sorted(seen) == sorted(shards.sources[i] for i in seq[:steps * 2 * world])
    assert len(set(seen)) == len(seen)


def test_the_order_is_a_function_of_seed_and_epoch(pre_shards):
    shards = ShardSet.open(str(pre_shards))
    a = _collect(shards, world=1, workers=2, epoch=1)
    assert a == _collect(shards, world=1, workers=2, epoch=1)
    assert a != _collect(shards, world=1, workers=2, epoch=2)
    assert a != _collect(shards, world=1, workers=2, epoch=1, seed=6)
    # both levels shuffle: shards and the samples within them
    seq = epoch_sequence(shards, 5, 1)
    first = shards.shard_of()[seq]
    assert list(first) != sorted(first)
    assert not all(np.all(np.diff(seq[first == s]) > 0) for s in set(first.tolist()) if (first == s).sum() > 1)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")     # 3 workers on 2 cores
@pytest.mark.parametrize("workers", [0, 2, 3])
def test_resume_mid_epoch_gives_the_remaining_batches_in_order(pre_shards, workers):
    shards = ShardSet.open(str(pre_shards))
    full = _collect(shards, world=2, workers=workers, epoch=3, batch=1)
    for skip in (1, 2, 5):
        resumed = _collect(shards, world=2, workers=workers, epoch=3, batch=1, skip=skip)
        assert resumed == [r[skip:] for r in full]


def _corrupt_record(shards_dir: Path, sample: int) -> str:
    """Overwrite the middle of one video's bytes in its tar; returns its list path."""
    doc = json.loads((shards_dir / MANIFEST).read_text())
    for rec in doc["shards"]:
        if sample < len(rec["offsets"]):
            off, size = rec["offsets"][sample], rec["sizes"][sample]
            with open(shards_dir / rec["name"], "r+b") as f:
                f.seek(off + 32)
                f.write(b"\xff" * (size - 64))
            return rec["sources"][sample]
        sample -= len(rec["offsets"])
    raise IndexError(sample)


def test_a_bad_record_is_replaced_and_written_to_skipped_jsonl(tiny_synthetic, pre_shards, tmp_path):
    import shutil
    data = tmp_path / "shards"
    shutil.copytree(pre_shards, data)
    bad = _corrupt_record(data, 4)
    from vmae2_fast.stages.pretrain import run
    out = tmp_path / "run"
    summary = run(config_for("pretrain", micro_flags(tiny_synthetic, out, data=str(data), epochs=1,
                                                     no_progress=True)))
    assert summary["global_step"] == 3                        # the epoch went on
    lines = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert [x["path"] for x in lines] == [bad]
    assert "shard-" in lines[0]["reason"] and "record 000000004" in lines[0]["reason"]


def test_pretraining_from_shards_resumes_to_the_same_losses(tiny_synthetic, pre_shards, tmp_path):
    from vmae2_fast.stages.pretrain import run
    flags = dict(data=str(pre_shards), epochs=2, no_progress=True, num_workers=2, save_every_steps=2)
    run(config_for("pretrain", micro_flags(tiny_synthetic, tmp_path / "a", **flags)))
    run(config_for("pretrain", micro_flags(tiny_synthetic, tmp_path / "b", max_steps=4, **flags)))
    run(config_for("pretrain", micro_flags(tiny_synthetic, tmp_path / "b", **flags)))   # resumes at 4
    a, b = train_records(tmp_path / "a"), train_records(tmp_path / "b")
    assert [r["global_step"] for r in a] == list(range(1, 7))
    assert [r["global_step"] for r in b] == list(range(1, 7))
    assert [r["loss"] for r in b] == [r["loss"] for r in a]     # step 5 (mid-epoch 1) included


def test_finetuning_and_evaluating_from_shards(tiny_synthetic, cls_shards, tmp_path):
    from vmae2_fast import evaluate, finetune
    out = tmp_path / "ft"
    argv = ["--model", "vit_micro", "--preset", "cpu_demo", "--data", str(cls_shards),
            "--output-dir", str(out), "--input-size", "32", "--num-frames", "4", "--sampling-rate",
            "2", "--batch-size", "4", "--epochs", "1", "--warmup-epochs", "0", "--num-workers", "2",
            "--aa", "none", "--no-progress", "--short-side-size", "40", "--log-every", "1"]
    assert finetune.main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["class_names"] == Path(tiny_synthetic.root, "classes.txt").read_text().split()
    assert len(train_records(out)) == 3                        # 12 videos / batch 4
    ev = tmp_path / "ev"
    assert evaluate.main(["--checkpoint", str(out / "checkpoint-last.pth"), "--data", str(cls_shards),
                          "--output-dir", str(ev), "--num-workers", "2", "--batch-views", "6"]) == 0
    rows = [json.loads(x) for x in (ev / "predictions.jsonl").read_text().splitlines()]
    listed = read_list(tiny_synthetic.val_list, tiny_synthetic.root, labels=True)
    assert sorted(r["video"] for r in rows) == sorted(e.rel for e in listed)   # every video once


def test_the_writer_refuses_bad_input_clearly(tiny_synthetic, pre_shards, tmp_path, capsys):
    assert make_shards([str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert make_shards([tiny_synthetic.pretrain_list, "--data-root", tiny_synthetic.root,
                        "--out", str(pre_shards)]) == 2
    assert "already holds a shard set" in capsys.readouterr().err
    assert make_shards([tiny_synthetic.pretrain_list, "--data-root", tiny_synthetic.root,
                        "--out", str(tmp_path / "o"), "--shard-size", "lots"]) == 2
    assert "--shard-size" in capsys.readouterr().err
    assert parse_size("1.5MB") == 1_500_000 and parse_size("2KiB") == 2048
    lst = tmp_path / "missing.txt"
    lst.write_text("a.webm 0 -1\nb.webm 0 -1\n")
    assert make_shards([str(lst), "--data-root", str(tmp_path), "--out", str(tmp_path / "m"),
                        "--no-progress"]) == 2
    assert "none of the 2 videos" in capsys.readouterr().err


def test_a_list_with_bad_videos_packs_the_good_ones_and_names_the_rest(tiny_synthetic, tmp_path):
    lines = Path(tiny_synthetic.pretrain_list).read_text().splitlines()
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(["videos/missing.webm 0 -1"] + lines[:3]) + "\n")
    res = write_shards(str(lst), tiny_synthetic.root, str(tmp_path / "s"), progress=False)
    assert res.samples == 3 and [x["source"] for x in res.excluded] == ["videos/missing.webm"]
    s = ShardSet.open(str(tmp_path / "s"))
    assert s.excluded[0]["reason"] == "missing" and s.num_samples == 3


def test_reading_a_location_without_a_set_names_the_command(tmp_path):
    with pytest.raises(MissingFileError, match="make_shards"):
        ShardSet.open(str(tmp_path))
    (tmp_path / MANIFEST).write_text('{"format": "other"}')
    with pytest.raises(DataError, match="format"):
        ShardSet.open(str(tmp_path))
    (tmp_path / MANIFEST).write_text('{"format": "vmae2_fast.shards/1", "kind": "pretrain", '
                                     '"shards": [{"name": "shard-000000.tar"}]}')
    with pytest.raises(DataError, match="damaged .*KeyError"):
        ShardSet.open(str(tmp_path))


def test_pretraining_labels_are_refused_for_finetuning(pre_shards, tmp_path):
    from vmae2_fast.data.loaders import load_list
    with pytest.raises(DataError, match="no labels"):
        load_list(str(pre_shards), "", decoder="pyav", labels=True)
    with pytest.raises(ConfigError, match="JSON"):
        config_for("pretrain", ["--data", str(pre_shards), "--storage-options", "{nope"])


def test_reencode_packs_the_transcoded_videos(tiny_synthetic, tmp_path):
    """--reencode: the set holds the re-encoder's H.264 files (GOP 16), the same frames counted,
    and trains."""
    out = tmp_path / "re"
    assert make_shards([tiny_synthetic.pretrain_list, "--data-root", tiny_synthetic.root, "--out", str(out),
                        "--reencode", "--codec", "h264", "--gop", "16", "--workers", "2",
                        "--no-progress"]) == 0
    s = ShardSet.open(str(out))
    listed = read_list(tiny_synthetic.pretrain_list, tiny_synthetic.root)
    assert s.num_samples == len(listed) and set(s.video["codec"]) == {"h264"}
    assert {e for sh in s.shards for e in sh.ext} == {"mp4"}
    assert s.frames.tolist() == [tiny_synthetic.params["num_frames"]] * len(listed)
    from vmae2_fast.stages.pretrain import run
    summary = run(config_for("pretrain", micro_flags(tiny_synthetic, tmp_path / "run", data=str(out),
                                                     epochs=1, no_progress=True)))
    assert summary["global_step"] == 3 and summary["skipped_videos"] == 0


class _StoreDown(torch.utils.data.IterableDataset):
    def __iter__(self):
        from vmae2_fast.errors import DataPlaneError
        raise DataPlaneError("cannot read s3://b/shard-000003.tar: 6 tries over 16 s failed")


def test_a_workers_store_error_reaches_the_run_as_it_was_raised():
    """torch re-raises a worker's exception with the worker's traceback in its message; the run's
    error is the message the worker raised."""
    from vmae2_fast.data.loaders import guarded
    from vmae2_fast.errors import DataPlaneError
    with pytest.raises(DataPlaneError) as err:
        list(guarded(torch.utils.data.DataLoader(_StoreDown(), batch_size=None, num_workers=1)))
    assert str(err.value) == "cannot read s3://b/shard-000003.tar: 6 tries over 16 s failed"
