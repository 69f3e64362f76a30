"""bench/step_breakdown.py times every part of both implementations' steps and writes its table."""
import pytest
import torch

from bench_scripts import report, script
from fake_official_checkout import make_fake_checkout

step_breakdown = script("step_breakdown")


def test_step_breakdown_smoke(tmp_path):
    """Each part is a piece of the step timed alone, so together they cost about the step they are
    pieces of: the sum of the parts lies within a factor 2 of the measured step either way, and
    "not in the parts" is the step minus that sum. The sum may exceed the step: at these tiny shapes
    each part run alone pays its own fixed costs (a graph, a backward, fresh gradients for the
    optimiser) that the whole step pays once (measured: 9.4 ms of parts for a 7.9 ms official step,
    7.3 for 5.2 ours). A part counted many times over (one optimiser step per parameter tensor)
    is far outside the band. (One thread: on a shared, oversubscribed machine two OpenMP threads
    wait for each other across preemptions, which stalls a sub-millisecond part by tens of
    milliseconds; of 5 repetitions the fastest counts.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _smoke(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _smoke(tmp_path):
    repo = make_fake_checkout(tmp_path / "VideoMAEv2")
    argv = ["--model", "vit_micro", "--size", "32", "--frames", "4", "--mask-ratio", "0.75", "--reps", "5",
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
        step, total = parts["full step (measured)"], parts["sum of the parts"]
        assert step / 2 <= total <= 2 * step, (row["name"], parts)
        assert parts["not in the parts"] == pytest.approx(step - total)
    assert "| target + loss |" in r["path"].with_suffix(".md").read_text()
