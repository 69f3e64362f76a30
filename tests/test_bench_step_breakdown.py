"""bench/step_breakdown.py times every part of both implementations' steps and writes its table."""
from bench_scripts import report, script
from fake_official_checkout import make_fake_checkout

step_breakdown = script("step_breakdown")


def test_step_breakdown_smoke(tmp_path):
    repo = make_fake_checkout(tmp_path / "VideoMAEv2")
    argv = ["--model", "vit_micro", "--size", "32", "--frames", "4", "--mask-ratio", "0.75", "--reps", "1",
            "--device", "cpu", "--out", str(tmp_path / "out"), "--official-repo", str(repo)]
    assert step_breakdown.main(argv) == 0
    r = report(tmp_path / "out")
    assert r["end"] is not None and r["baseline"] == "official-code"
    assert r["num_visible"] == 2 and r["num_decoded"] == 4  # grid (2, 2, 2)
    assert [row["name"] for row in r["rows"]] == ["official", "ours"]
    for row in r["rows"]:
        parts = row["seconds_per_step"]
        assert set(step_breakdown.ROWS) < set(parts)
        assert parts["full step (measured)"] > 0 and parts["optimiser"] > 0
        assert parts["sum of the parts"] == sum(parts[k] for k in step_breakdown.ROWS)
    assert "| target + loss |" in r["path"].with_suffix(".md").read_text()
