"""bench/shards.py runs end to end on tiny videos: the file reader, the shard reader from a local
folder and from a loopback S3 server (SeaweedFS; it must start on CI), each row a positive
clips/s, the Markdown made from the records; and bench/fed_step.py reads a shard set, naming it
in its records and in its report's file name."""
import shutil

import pytest

from bench_scripts import report, script
from needs import on_ci

shards_bench = script("shards")
fed_step = script("fed_step")

CLIP = ["--batch", "2", "--num-sample", "2", "--frames", "4", "--rate", "2", "--size", "32"]


@pytest.fixture
def small_list(tiny_synthetic, tmp_path):
    lst = tmp_path / "pretrain.csv"
    shutil.copy(tiny_synthetic.pretrain_list, lst)
    return lst, tiny_synthetic.root


def test_shards_bench_times_the_file_reader_and_the_shard_readers(small_list, tmp_path):
    lst, root = small_list
    argv = ["--list", str(lst), "--data-root", str(root), "--workers", "0", "1", "--rounds", "2", *CLIP,
            "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert shards_bench.main(argv) == 0
    r = report(tmp_path / "out", "shards-*.jsonl")
    assert r["end"] is not None and r["bench"] == "shards"
    facts = r["shard_set"]
    assert facts["samples"] == 12 and facts["shards"] >= 4          # auto: a sixth of the bytes a shard
    s3_ran = r["s3"].get("endpoint") is not None
    if not s3_ran:
        assert not on_ci(), f"CI=true, so the S3 rows must run: {r['s3']['skipped']}"
        assert "the S3 rows are not run" in r["s3"]["skipped"]
    readers = ["file", "local"] + ["s3"] * s3_ran
    epochs = [row for row in r["rows"] if row["kind"] == "epoch"]
    # every (reader, workers) row once a round; 12 videos in batches of 2: 5 timed batches of 4 clips
    assert sorted((e["reader"], e["workers"], e["round"]) for e in epochs) == sorted(
        (k, w, n) for k in readers for w in (0, 1) for n in (0, 1))
    for e in epochs:
        assert e["batches"] == 5 and e["clips"] == 20 and e["clips_per_s"] > 0, e
        assert e["videos_per_s"] == pytest.approx(e["clips_per_s"] / 2)
    assert all(e["data"].startswith("s3://") == (e["reader"] == "s3") for e in epochs)
    rows = shards_bench.summarise(r)
    assert [(x["reader"], x["workers"]) for x in rows] == [(k, w) for k in readers for w in (0, 1)]
    md = r["path"].with_suffix(".md").read_text()
    assert "Shard reader against file reader" in md
    for x in rows:
        assert f"| {x['workers']} | **{x['clips_per_s']:.1f}** | {x['min']:.1f} - {x['max']:.1f} |" in md
    assert ("SeaweedFS on loopback" in md) == s3_ran


def test_fed_step_reads_a_shard_set(small_list, tmp_path):
    lst, root = small_list
    local, facts = shards_bench.make_local_shards(str(lst), str(root), tmp_path / "work", "auto")
    assert facts["shards"] >= 4
    argv = ["--model", "vit_micro", "--size", "32", "--frames", "4", "--mask-ratio", "0.75", "--batch", "2",
            "--steps", "2", "--warmup", "1", "--device", "cpu", "--data", local, "--decoder", "pyav",
            "--workers", "1", "--num-sample", "2", "--rate", "2", "--out", str(tmp_path / "out")]
    assert fed_step.main(argv) == 0
    r = report(tmp_path / "out", "fed-step-*-vit_micro-fp32-pyav-shards-local.jsonl")
    assert r["end"] is not None and r["data_source"] == "shards (local)" and r["videos"] == 12
    assert r["data"].startswith("shards (local) ")
    phase = {row["phase"]: row for row in r["rows"]}
    assert list(phase) == ["loader", "step", "fed"] and phase["fed"]["clips_per_s"] > 0
    assert 0 <= phase["fed"]["data_wait_frac"] < 1
    assert fed_step.data_source("s3://bucket/shards") == ("shards (s3)", "shards-s3")
    assert fed_step.data_source(str(lst)) == ("list", "")


def test_fed_step_refuses_bad_storage_options(small_list, tmp_path, capsys):
    lst, root = small_list
    assert fed_step.main(["--model", "vit_micro", "--size", "32", "--frames", "4", "--device", "cpu",
                          "--data", str(lst), "--data-root", str(root), "--storage-options", "{nope",
                          "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
