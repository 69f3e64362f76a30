"""The data benchmarks run on the CPU and write their records and reports: bench/data.py (clips/s
and decoded frames/s per decoder, codec, workers and DALI pipelines; Markdown, PNG) and
bench/fed_step.py (the real step fed by the real loader, and its wait for data)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from bench_scripts import BENCH, report, script
from hidden_packages import hide

from vmae2_fast.data.pyav import pretrain as pyav_pretrain

data_bench = script("data")
fed_step = script("fed_step")


@pytest.fixture
def small_list(tiny_synthetic, tmp_path):
    lst = tmp_path / "pretrain.csv"
    shutil.copy(tiny_synthetic.pretrain_list, lst)
    return lst, tiny_synthetic.root


def test_fed_step_times_the_step_fed_by_the_loader(small_list, tmp_path):
    lst, root = small_list
    argv = ["--model", "vit_micro", "--size", "32", "--frames", "4", "--mask-ratio", "0.75", "--batch", "2",
            "--steps", "3", "--warmup", "1", "--device", "cpu", "--data", str(lst), "--data-root", str(root),
            "--decoder", "pyav", "--workers", "1", "--num-sample", "2", "--rate", "2",
            "--out", str(tmp_path / "out")]
    assert fed_step.main(argv) == 0
    r = report(tmp_path / "out", "fed-step-*-vit_micro-fp32-pyav.jsonl")
    assert r["end"] is not None and r["bench"] == "fed-step"
    assert r["clips_per_step"] == 4 and r["decoder"] == "pyav" and r["videos"] == 12
    phase = {row["phase"]: row for row in r["rows"]}
    assert list(phase) == ["loader", "step", "fed"]
    for name in phase:
        assert phase[name]["clips_per_s"] > 0, name
    fed = phase["fed"]
    assert 0 <= fed["data_wait_frac"] < 1 and fed["mfu"] is None       # no peak on a CPU
    # a fed step cannot beat both of its parts by much (the same work, plus waiting)
    assert fed["clips_per_s"] < 1.5 * max(phase["loader"]["clips_per_s"], phase["step"]["clips_per_s"])
    md = r["path"].with_suffix(".md").read_text()
    assert "step fed by the loader" in md and "waiting for data" in md and f"**{fed['clips_per_s']:.1f}**" in md


def test_fed_step_refuses_a_missing_list(tmp_path, capsys):
    assert fed_step.main(["--model", "vit_micro", "--size", "32", "--frames", "4", "--device", "cpu",
                          "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not list(tmp_path.glob("*.jsonl"))


def test_without_pyav_the_fed_step_says_what_it_needs(tmp_path):
    env = {**os.environ, "PYTHONPATH": hide(tmp_path / "shim", "av")}
    res = subprocess.run([sys.executable, str(BENCH / "fed_step.py"), "--device", "cpu", "--data",
                          str(tmp_path / "list.csv"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 2 and "error: the fed step reads videos with PyAV" in res.stderr, res.stderr


def test_keyframes_of_a_reencoded_file_are_every_gop_frames(tiny_synthetic, tmp_path):
    """The keyframe positions the decoded-frames count uses, against the decoder's own flags."""
    from vmae2_fast.data.tools.transcode import EncodeSettings, transcode
    src = Path(tiny_synthetic.root) / Path(tiny_synthetic.pretrain_list).read_text().split()[0]
    dst = tmp_path / "gop8.mp4"
    transcode(str(src), str(dst), EncodeSettings(codec="h264", gop=8))
    with av.open(str(dst)) as c:
        truth = [i for i, f in enumerate(c.decode(video=0)) if f.key_frame]
    assert data_bench.keyframes(str(dst)) == truth == list(range(0, 24, 8))


def test_data_bench_counts_what_pyav_decodes_and_writes_json_md_png(tmp_path, monkeypatch):
    """--workers 0: PyAV decodes in this process, so its decode calls can be counted: the
    report's count is the sum, over the calls, of the frames from the keyframe before the first
    sampled frame (GOP 8) to the last."""
    calls = []
    real = pyav_pretrain.decode_clip

    def counting(path, indices, *args, **kw):
        calls.append(int(np.max(indices)) - 8 * (int(np.min(indices)) // 8) + 1)
        return real(path, indices, *args, **kw)

    monkeypatch.setattr(pyav_pretrain, "decode_clip", counting)
    argv = ["--synthetic", "12", "--synthetic-frames", "24", "--synthetic-size", "64", "--codecs", "vp9",
            "h264", "--loaders", "pyav", "dali-cpu", "--workers", "0", "--batch-size", "4", "--views", "2",
            "--frames", "4", "--rate", "2", "--size", "32", "--epochs", "1", "--gop", "8",
            "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert data_bench.main(argv) == 0
    r = report(tmp_path / "out", "data-*.jsonl")
    assert r["end"] is not None
    copies = {row["codec"]: row["copies"] for row in r["rows"] if row["kind"] == "copies"}
    assert list(copies) == ["vp9", "h264"] and copies["h264"]["keyframe_interval"] == 8
    pyav_rows = [(row["codec"], row) for row in r["rows"] if row["kind"] == "loader" and row["loader"] == "pyav"]
    assert len(pyav_rows) == 2
    # each codec: a warm-up epoch, then one timed epoch of 3 batches of 4 videos
    timed = [sum(calls[24 * k + 12:24 * k + 24]) for k in range(2)]
    for (codec, row), decoded in zip(pyav_rows, timed):
        assert len(calls) == 48 and row["clips"] == 24
        assert row["decoded_per_video"] == pytest.approx(decoded / 12, abs=0.05), codec
        assert row["decoded_frames_per_s"] == pytest.approx(decoded / row["seconds"], rel=0.01)
    (dali,) = [row for row in r["rows"] if row["codec"] == "h264" and row.get("name") == "dali-cpu"]
    assert "cannot decode" in dali["skipped"]
    md = r["path"].with_suffix(".md").read_text()
    assert "decoded frames/s" in md and "## h264" in md and "## vp9" in md
    assert f"| pyav, 0 workers | {pyav_rows[0][1]['decoded_frames_per_s']:,.0f} |" in md
    assert Image.open(r["path"].with_suffix(".png")).size[0] > 400
