"""bench/gpu_suite.sh in its CPU mode: one call runs every step at small shapes, writes each step's
results and a summary where the caller says, skips what needs a missing package with a message
that names it, and keeps to its time budget."""
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bench_scripts import report
from hidden_packages import hide
from needs import module

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "bench" / "gpu_suite.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def run_suite(*args, env_extra=None, timeout=240):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update(PYTHON=sys.executable, **(env_extra or {}))
    return subprocess.run(["bash", str(SUITE), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


@pytest.mark.slow
def test_cpu_mode_runs_every_step_and_writes_where_told(tmp_path):
    out = tmp_path / "results"
    res = run_suite("--device", "cpu", "--budget", "220",
                    env_extra={"OUT": str(out), "PYTHONPATH": hide(tmp_path / "shim", "av")})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    summary = json.loads((out / "suite.json").read_text())
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert status == {"pytest-gpu": "ok", "kernels": "ok", "attention": "ok", "vit_b-sweep": "ok",
                      "vit_g-eager": "ok", "vit_g-compile": "ok", "data": "skipped"}
    data = next(s for s in summary["steps"] if s["step"] == "data")
    assert "PyAV is not installed" in data["note"] and "PyAV is not installed" in res.stdout

    # the GPU tests were collected and skipped with their reason; those in files that import the
    # data plane cannot be collected without PyAV and are left out, said so, not failed
    pytest_step = next(s for s in summary["steps"] if s["step"] == "pytest-gpu")
    assert "need PyAV (not installed) and were left out" in pytest_step["note"]
    left_out = (out / "logs" / "needs-pyav.txt").read_text().split()
    assert "tests/test_nvdec.py" in left_out and "tests/test_attention_backends.py" not in left_out
    suite = ET.parse(out / "pytest-gpu.xml").getroot().find("testsuite")
    assert int(suite.get("skipped")) == int(suite.get("tests")) > 0 and int(suite.get("failures")) == 0

    reports = [report(out, p.name) for p in out.glob("throughput-*.jsonl")]
    assert all(r["end"] is not None for r in reports)
    (sweep,) = [r for r in reports if r["batch"] == "sweep"]
    assert sorted({x["batch"] for x in sweep["rows"]}) == [1, 2, 4]
    assert {"re-statement", "fast"} <= {x["name"] for x in sweep["rows"]}
    (eager,) = [r for r in reports if r["tag"] == "eager"]
    (compiled,) = [r for r in reports if r["tag"] == "compile"]
    assert [x["name"] for x in eager["rows"]] == ["re-statement", "fast eager ac=none", "fast eager ac=full"]
    assert [x["name"] for x in compiled["rows"]] == ["re-statement", "fast compile ac=none", "fast compile ac=full"]
    for r in (sweep, eager, compiled):
        assert all(x["status"] == "ok" and x["clips_per_s"] > 0 for x in r["rows"])
        assert "| vs re-statement |" in r["path"].with_suffix(".md").read_text()
    for name in ("throughput-*.png", "throughput-*.md", "fused-ops-*.jsonl", "fused-ops-*.md", "attention-*.md"):
        assert list(out.glob(name)), name
    attention = report(out, "attention-*.jsonl")
    assert [c["head_dim"] for c in attention["rows"]] == [64, 80, 88]
    for c in attention["rows"]:         # the explicit computation runs everywhere and is exact to fp32
        assert c["backends"]["math"]["runs"] and c["backends"]["math"]["out_rel_err"] < 1e-5
        assert not c["backends"]["flash-attn2"]["runs"]      # CUDA only: listed with its reason
    assert (out / "logs" / "vit_g-compile.log").stat().st_size > 0 and "| data | skipped |" in (out / "suite.md").read_text()


@pytest.mark.slow
def test_cpu_mode_measures_decoding_where_pyav_is_installed(tmp_path):
    module("av")        # a dependency of the package: on CI its absence is a failure
    res = run_suite("--device", "cpu", "--out", str(tmp_path), "--only", "data")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    (step,) = json.loads((tmp_path / "suite.json").read_text())["steps"]
    assert step["status"] == "ok"
    rows = [r for r in report(tmp_path, "data-*.jsonl")["rows"] if r["kind"] == "loader" and "skipped" not in r]
    assert {r["codec"] for r in rows} == {"vp9"} and {r["loader"] for r in rows} >= {"pyav"}
    assert all(r["clips_per_s"] > 0 for r in rows)
    assert list(tmp_path.glob("data-*.png")) and list(tmp_path.glob("data-*.md"))


def test_a_spent_budget_skips_steps_with_the_reason(tmp_path):
    res = run_suite("--device", "cpu", "--out", str(tmp_path), "--budget", "10", "--only", "attention")
    assert res.returncode == 0, res.stderr
    (step,) = json.loads((tmp_path / "suite.json").read_text())["steps"]
    assert step["step"] == "attention" and step["status"] == "skipped" and "budget" in step["note"]
    assert not list(tmp_path.glob("attention-*"))


@pytest.mark.parametrize("args, message", [
    (["--device", "cpu"], "say where the results go"),
    (["--device", "tpu", "--out", "x"], "--device must be cuda or cpu"),
    (["--device", "cpu", "--out", "x", "--budget", "soon"], "--budget takes whole seconds"),
    (["--device", "cpu", "--out", "x", "--wheels", "/nonexistent"], "is not a folder"),
])
def test_bad_usage_is_an_error_with_exit_status_2(args, message):
    res = run_suite(*args, timeout=60)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and message in res.stderr
