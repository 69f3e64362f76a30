"""bench/decode.py: the decoders side by side, per worker. A tiny run writes the records and the
report (the official row says why it did not run where there is no checkout or no decord); the
decoded-frame models agree with what our decoder counts where they should."""
from bench_scripts import report, script
from vmae2_fast.data.pyav.video_io import DecodeStats, decode_frames
from vmae2_fast.testing.natural_video import NaturalVideo, write_natural_video

decode_bench = script("decode")


def test_a_tiny_run_writes_records_and_a_report(tmp_path):
    argv = ["--videos", "2", "--seconds", "1.5", "--short-side", "64", "--rounds", "1", "--check", "1",
            "--views", "2", "--frames", "4", "--rate", "4", "--size", "32",
            "--official-repo", str(tmp_path / "no-checkout"),
            "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert decode_bench.main(argv) == 0
    r = report(tmp_path / "out", "decode-*.jsonl")
    assert r["bench"] == "decode" and r["end"] is not None
    assert r["files"]["gop16"]["keyframes_per_video"] == 3                   # 45 frames, GOP 16
    rows = {(x["files"], x["name"]): x for x in r["rows"]}
    for files in ("gop250", "gop16"):
        assert "no official checkout" in rows[files, "official (decord + PIL)"]["status"]
        ours = rows[files, "ours, PyAV"]
        before = rows[files, "ours before seeking (PyAV from frame 0, addcmul normalisation)"]
        assert ours["status"] == before["status"] == "ok"
        assert ours["clips"] == 2 * 2 and ours["clips_per_s"] > 0 and ours["clips_per_cpu_s"] > 0
        assert ours["exact"] == {"clips": 3, "right_frames": 3, "max_abs_diff": 0}
        assert 0 < ours["decoded_per_video"] <= before["decoded_per_video"]
    md = r["path"].with_suffix(".md").read_text()
    assert "## re-encoded (our re-encoder, GOP 16)" in md and "| ours, PyAV |" in md
    assert "not run: no official checkout" in md


def test_decoded_frame_models(tmp_path):
    """decord's rule on a hand-worked case, and the restart rule against what our decoder counts
    on a VP9 file (no B-frames: no reorder delay, no frame to drop)."""
    # keyframes at 0, 16, 32: frames 20, 24 from the keyframe at 16 (20 - 16 + 1 = 5, then 4);
    # frame 40 lies past another keyframe: 40 - 32 + 1 = 9; a repeat costs nothing
    assert decode_bench.decord_decoded([0, 16, 32], [20, 24, 24, 40]) == 5 + 4 + 9
    assert decode_bench.decord_decoded([0, 16, 32], [3]) == 4
    path = str(tmp_path / "v.webm")
    write_natural_video(path, NaturalVideo(width=96, height=64, frames=60, seed=5), codec="vp9", gop=12)
    table = decode_bench.keyframe_table(path)
    assert table[1] == [0, 12, 24, 36, 48]
    for idx in ([5, 9, 13, 17], [30, 50], [2, 40, 41, 59]):
        stats = DecodeStats()
        decode_frames(path, idx, stats=stats)
        assert stats.skipped == 0
        assert decode_bench.restart_rule_decoded(*table, idx) == stats.decoded, idx
