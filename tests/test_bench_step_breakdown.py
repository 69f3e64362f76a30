"""bench/step_breakdown.py times every part of both implementations' steps and writes its table."""
import json
import sys
from pathlib import Path

from fake_official_checkout import make_fake_checkout

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import step_breakdown  # noqa: E402


def test_step_breakdown_smoke(tmp_path):
    repo = make_fake_checkout(tmp_path / "VideoMAEv2")
    argv = ["--model", "vit_micro", "--size", "32", "--frames", "4", "--mask-ratio", "0.75", "--reps", "1",
            "--device", "cpu", "--out", str(tmp_path / "out"), "--official-repo", str(repo)]
    assert step_breakdown.main(argv) == 0
    (report,) = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.json")]
    assert report["num_visible"] == 2 and report["num_decoded"] == 4  # grid (2, 2, 2)
    for name in ("official", "ours"):
        rows = report["seconds_per_step"][name]
        assert set(step_breakdown.ROWS) < set(rows)
        assert rows["full step (measured)"] > 0 and rows["optimiser"] > 0
    assert "| target + loss |" in next((tmp_path / "out").glob("*.md")).read_text()
