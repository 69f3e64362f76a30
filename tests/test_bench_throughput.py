"""bench/throughput.py runs every implementation on the same weights and writes its report,
naming the baseline it timed."""
import json
import subprocess
import sys
from pathlib import Path

from fake_official_checkout import make_fake_checkout

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import throughput  # noqa: E402
TINY = ["--model", "vit_micro", "--size", "32", "--frames", "4", "--mask-ratio", "0.75", "--batch", "2",
        "--steps", "1", "--warmup", "1", "--device", "cpu"]


def run_bench(out, *extra):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), *TINY, "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300)


def test_throughput_bench_smoke(tmp_path):
    res = run_bench(tmp_path)
    assert res.returncode == 0, res.stderr
    (report,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert report["baseline"] == "re-statement" and report["official_code"] is None
    assert set(report["results"]) == {"official", "ours"}
    assert report["results"]["ours"]["clips_per_s"] > 0 and report["speedup"] > 0
    md = next(tmp_path.glob("*.md")).read_text()
    assert "Speed-up" in md and "re-statement of the official code" in md.splitlines()[0]


def test_throughput_bench_times_an_official_checkout(tmp_path):
    repo = make_fake_checkout(tmp_path / "VideoMAEv2")
    assert throughput.main([*TINY, "--out", str(tmp_path / "out"), "--official-repo", str(repo)]) == 0
    (report,) = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.json")]
    assert report["baseline"] == "official-code"
    assert report["official_code"]["repo"] == str(repo.resolve())
    assert set(report["results"]) == {"official", "re-statement", "ours"}
    assert report["restatement_over_official"] > 0
    assert "the official code" in next((tmp_path / "out").glob("*.md")).read_text().splitlines()[0]


def test_throughput_bench_rejects_a_folder_that_is_not_a_checkout(tmp_path, capsys):
    assert throughput.main([*TINY, "--out", str(tmp_path / "out"), "--official-repo", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "OpenGVLab/VideoMAEv2" in err
