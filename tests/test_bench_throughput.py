"""bench/throughput.py runs both implementations on the same weights and writes its report."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_bench_smoke(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--model", "vit_micro",
                          "--size", "32", "--frames", "4", "--mask-ratio", "0.75", "--batch", "2",
                          "--steps", "1", "--warmup", "1", "--device", "cpu", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (report,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert set(report["results"]) == {"official", "ours"}
    assert report["results"]["ours"]["clips_per_s"] > 0 and report["speedup"] > 0
    assert "Speed-up" in next(tmp_path.glob("*.md")).read_text()
