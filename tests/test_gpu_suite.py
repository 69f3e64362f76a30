"""bench/gpu_suite.sh, the GPU plan for one loan, and its CPU rehearsal: the plan's time arithmetic,
every step's command accepted by its script, a step stopped at its cap that keeps its records and is
marked `timed out`, the suite's own caches set aside after a kill, and skips that name the missing
package. The full rehearsal (`bash bench/gpu_suite.sh --device cpu --out DIR`, every step at small
shapes: minutes of inductor's C++ compile) is run by hand, not here (docs/gpu-suite.md)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench_scripts import script

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "bench" / "gpu_suite.sh"
suite = script("gpu_suite")
render = script("render")
DEVICE_CALL_S = 480          # the first call's timeout_s in docs/gpu-suite.md


def run_suite(*args, env_extra=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update(PYTHON=sys.executable, **(env_extra or {}))
    return subprocess.run(["bash", str(SUITE), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


def steps_of(out: Path) -> dict:
    header, rows, end = script("records").read_records(out / "suite.jsonl")
    return {r["step"]: r for r in rows}


def records(path: Path) -> tuple:
    return script("records").read_records(path)


HAVE_ALL = {"pytest": True, "pytest_timeout": True, "av": True}


# ------------------------------------------------------------------------------ the plan itself

def test_the_cuda_plan_fits_its_budget_and_the_device_call():
    """Every step gets its cap even if every earlier one runs out of time: the caps, the set-up's
    cap and the summary's add up to under the budget, which ends before the device call's limit."""
    steps = suite.plan("cuda", Path("/o"), "/official", HAVE_ALL)
    assert [s.name for s in steps] == list(suite.STEPS)
    total = sum(s.cap for s in steps) + suite.SETUP_CAP["cuda"] + suite.RENDER_CAP
    assert total <= suite.DEFAULT_BUDGET["cuda"] <= DEVICE_CALL_S - 20, total
    # pytest, the step expected to need more than its cap, is the one given what the others left
    assert [s.name for s in steps if s.takes_slack] == ["pytest"]
    # compiled per block: one step compiles both models, each with and without checkpointing
    compiled = [c for s in steps for c in s.commands if "--compile" in c and c[c.index("--compile") + 1] == "on"]
    assert [s.name for s in steps if any(c in s.commands for c in compiled)] == ["compiled"]
    assert {(c[c.index("--model") + 1], tuple(c[c.index("--activation-checkpointing") + 1:][:2]))
            for c in compiled} == {("vit_b", ("none", "full")), ("vit_g", ("none", "full"))}


def test_the_cuda_plan_runs_what_the_review_asked_for():
    steps = {s.name: s for s in suite.plan("cuda", Path("/o"), "/official", HAVE_ALL)}
    (pytest_cmd,) = steps["pytest"].commands
    args = [str(x) for x in pytest_cmd]
    assert "-v" in args and "-q" not in args and "--timeout" in args and "--durations" in args
    assert any(a.endswith("junit.xml") for a in args)
    for s in ("headline", "sweep"):         # no transformers row; the official code is the baseline
        for c in steps[s].commands:
            impls = c[c.index("--impl") + 1:c.index("--impl") + 3]
            assert impls == ["official", "fast"] and "hf" not in c and "/official" in c
    headline = [c for c in steps["headline"].commands]
    assert {(c[c.index("--model") + 1], c[c.index("--activation-checkpointing") + 1],
             c[c.index("--official-checkpointing") + 1], c[c.index("--precision") + 1]) for c in headline} == {
        (m, ac, ac, "bf16") for m in ("vit_b", "vit_g") for ac in ("none", "full")}
    (fused,) = steps["fused-ops"].commands         # bf16 and one process are the script's CUDA defaults
    assert "--dtype" not in fused and "--processes" not in fused and "cuda" in fused


def test_without_pyav_or_pytest_the_steps_that_need_them_say_so():
    steps = {s.name: s for s in suite.plan("cuda", Path("/o"), None, {"pytest": False, "av": False})}
    assert "PyAV is not installed" in steps["decoding"].skip and "pytest is not installed" in steps["pytest"].skip
    assert steps["smoke"].skip is None and not any("gpu_tests.py" in str(c[1]) for c in steps["smoke"].commands)
    assert not any("--official-repo" in c for s in steps.values() for c in s.commands)


def parsed_commands(monkeypatch, steps) -> dict:
    """Each step's commands as their scripts parse them, nothing run: a flag a script does not take
    (or a value it refuses) exits 2 here instead of minutes into a device call."""
    parsed = []
    monkeypatch.setattr(script("harness"), "main", lambda parser, run, argv=None: parsed.append(parser.parse_args(argv)))
    gpu_tests = script("gpu_tests")
    monkeypatch.setattr(gpu_tests, "run", lambda args: (parsed.append(args), (None, 0))[1])
    monkeypatch.setattr(render, "render", lambda path: None)
    out = {}
    for st in steps:
        out[st.name] = []
        for argv in st.commands:
            assert Path(argv[0]) == Path(sys.executable) and Path(argv[1]).parent == ROOT / "bench", argv
            before = len(parsed)
            assert script(Path(argv[1]).stem).main([str(x) for x in argv[2:]]) in (0, None), argv
            assert len(parsed) == before + 1, argv
            out[st.name].append(parsed[-1])
    return out


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_every_command_of_the_plan_is_accepted_by_its_script(monkeypatch, tmp_path, device):
    steps = suite.plan(device, tmp_path, str(tmp_path) if device == "cuda" else None,
                       {**HAVE_ALL, "nvidia.dali": True})
    args = parsed_commands(monkeypatch, steps)
    assert {s: len(a) for s, a in args.items()} == {s.name: len(s.commands) for s in steps}
    for a in args["compiled"]:
        assert a.compile == [True] and a.fast_checkpointing == ["none", "full"] and a.impl == ["fast"]
    for a in args["headline"]:
        assert a.compile == [False] and a.impl == ["official", "fast"]
        assert a.official_checkpointing == a.fast_checkpointing[0]
    assert [a.model for a in args["compiled"]] == (["vit_b", "vit_g"] if device == "cuda" else ["vit_micro"] * 2)
    assert all(a.out.startswith(str(tmp_path / name)) for name, found in args.items() for a in found)
    # no two throughput runs write the same result files (the name is the model, clip, batch and tag)
    runs = [(a.out, a.model, a.frames, a.size, a.batch, a.tag) for found in args.values() for a in found
            if hasattr(a, "fast_checkpointing")]
    assert len(runs) == len(set(runs)) == 8, runs       # smoke 1, headline 4, compiled 2, sweep 1


def test_the_smoke_tests_named_by_the_plan_exist():
    """The smoke step names its GPU tests by id: a renamed case would make pytest run nothing."""
    (cmd,) = [c for s in suite.plan("cuda", Path("/o"), None, HAVE_ALL) if s.name == "smoke"
              for c in s.commands if "gpu_tests.py" in str(c[1])]
    ids = [str(x) for x in cmd if str(x).startswith("tests/")]
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *ids],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert len(ids) == 6 and set(ids) <= set(res.stdout.split()), res.stdout[-2000:]


def test_the_cpu_caps_scale_with_the_load(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (8.0, 0, 0))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert suite.load_factor("cpu") == 4.0 and suite.load_factor("cuda") == 1.0
    monkeypatch.setattr(os, "getloadavg", lambda: (100.0, 0, 0))
    assert suite.load_factor("cpu") == suite.MAX_LOAD_FACTOR
    one = {s.name: s.cap for s in suite.plan("cpu", Path("/o"), None, HAVE_ALL, 1.0)}
    three = {s.name: s.cap for s in suite.plan("cpu", Path("/o"), None, HAVE_ALL, 3.0)}
    assert three == {k: 3 * v for k, v in one.items()}
    assert sum(one.values()) + suite.SETUP_CAP["cpu"] + suite.RENDER_CAP <= suite.DEFAULT_BUDGET["cpu"]


# ------------------------------------------------------------------------- stopping and caches

def test_a_command_past_its_limit_is_stopped_with_what_it_started(tmp_path):
    """The whole process group goes: a child the step started (a compile worker) too."""
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
            "time.sleep(60)\n")
    t0 = time.monotonic()
    status, note = suite.run_commands([[sys.executable, "-c", code], [sys.executable, "-c", "print('never')"]],
                                      3, tmp_path / "log.txt", dict(os.environ))
    assert status == "timed out" and "limit of 3 s" in note and time.monotonic() - t0 < 3 + suite.KILL_GRACE + 5
    child = int(pid_file.read_text())
    time.sleep(0.5)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    assert "never" not in (tmp_path / "log.txt").read_text()


def test_failed_commands_are_named_and_the_rest_still_run(tmp_path):
    status, note = suite.run_commands([[sys.executable, "-c", "raise SystemExit(3)"],
                                       [sys.executable, "-c", "print('second ran')"]], 30, tmp_path / "log", {})
    assert status == "failed" and "exit status 3" in note and "second ran" in (tmp_path / "log").read_text()


def test_a_cache_a_killed_run_left_in_use_is_set_aside(tmp_path):
    caches = suite.Caches(tmp_path)
    caches.start("compiled")
    (caches.root / "vmae2_fast" / "torch_extensions").mkdir(parents=True)
    (caches.root / "vmae2_fast" / "torch_extensions" / "lock").write_text("")      # a loader killed mid-build
    again = suite.Caches(tmp_path)          # the next run, in the same folder
    assert not again.root.exists() and len(list(tmp_path.glob("cache.discarded-*"))) == 1
    again.start("smoke")
    again.done()
    assert again.root.is_dir() and not again.mark.exists()
    assert suite.Caches(tmp_path).root.is_dir()         # a cache left cleanly is kept


# ---------------------------------------------------------------------------- the command line

@pytest.mark.parametrize("args, message", [
    (["--device", "cpu"], "say where the results go"),
    (["--device", "tpu", "--out", "x"], "--device must be cuda or cpu"),
    (["--device", "cpu", "--out", "x", "--budget", "soon"], "--budget takes whole seconds"),
    (["--device", "cpu", "--out", "x", "--wheels", "/nonexistent"], "is not a folder"),
    (["--device", "cpu", "--out", "x", "--only", "headline,kernels"], "no step kernels"),
    (["--device", "cpu", "--out", "x", "--cap", "sweep=soon"], "--cap takes STEP=SECONDS"),
])
def test_bad_usage_is_an_error_with_exit_status_2(args, message):
    res = run_suite(*args, timeout=60)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and message in res.stderr


def test_a_spent_budget_skips_steps_with_the_reason(tmp_path):
    res = run_suite("--device", "cpu", "--out", tmp_path, "--budget", "5", "--only", "smoke")
    assert res.returncode == 0, res.stderr
    step = steps_of(tmp_path)["smoke"]
    assert step["status"] == "skipped" and "budget" in step["note"] and not list((tmp_path / "smoke").glob("*.jsonl"))
    assert "| smoke | skipped |" in (tmp_path / "suite.md").read_text()


# ------------------------------------------------------------------------- the CPU rehearsals

@pytest.mark.slow
def test_a_step_out_of_time_keeps_its_records_and_is_marked_timed_out(tmp_path):
    """The rehearsal of a step that cannot finish: the sweep (batches up to 512, which its own time
    budget of 10 s x the load factor ends after the imports) gets 5 s + 6 s x the load factor and
    is stopped; every row it reported is in its records, which the summary lists as stopped, and
    its cache is set aside."""
    cap = round(5 + 6 * suite.load_factor("cpu"))
    res = run_suite("--device", "cpu", "--out", tmp_path, "--only", "sweep", "--cap", f"sweep={cap}",
                    "--bundle", tmp_path / "back", timeout=cap + 600)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-2000:]
    step = steps_of(tmp_path)["sweep"]
    assert step["status"] == "timed out" and f"stopped at its limit of {cap} s" in step["note"], step
    (rec,) = step["records"]
    assert rec["bench"] == "throughput" and not rec["complete"] and rec["rows"] >= 1, rec
    _, rows, end = records(tmp_path / rec["file"])
    log = (tmp_path / "sweep" / "log.txt").read_text()
    reported = [line for line in log.splitlines() if line.startswith("[throughput] ")]
    assert end is None and len(rows) == len(reported) == rec["rows"]
    report = (tmp_path / rec["file"]).with_suffix(".md").read_text()
    assert "The run stopped before it finished" in report and rows[0]["name"] in report
    summary = (tmp_path / "suite.md").read_text()
    assert "| sweep | timed out |" in summary and "stopped before it finished" in summary
    assert list(tmp_path.glob("cache.discarded-*")) and not (tmp_path / "cache" / ".in-use").exists()
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == ["gpu-suite.tar.gz", "suite.md"]


def test_the_summary_of_a_run_stopped_from_outside_lists_what_it_did_not_reach(tmp_path):
    """The device call's own limit can stop the whole suite: its summary (rendered from the suite's
    records) still shows each finished step and the ones it never reached."""
    Records = script("records").Records
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "throughput-x.jsonl").write_text(json.dumps({"record": "run", "bench": "throughput"}) + "\n")
    rec = Records(tmp_path / "suite", "gpu-suite", {
        "device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "load_avg_1m": 0.1, "load_factor": 1.0,
        "torch_cuda": "13.0", "python": "3.12.3", "packages": {"torch": "2.11.0", "av": None}, "budget_s": 450,
        "caps_s": 400, "setup_cap_s": 20, "render_cap_s": 10, "argv": [], "official_repo": None,
        "plan": [{"step": "smoke", "cap_s": 50, "what": ""}, {"step": "headline", "cap_s": 95, "what": ""}]})
    rec.add({"step": "smoke", "status": "timed out", "seconds": 50.2, "limit_s": 50, "cap_s": 50,
             "note": "stopped at its limit of 50 s during throughput.py",
             "records": [{"file": "smoke/throughput-x.jsonl", "bench": "throughput", "rows": 0, "complete": False}]})
    md = render.render(rec.path).read_text()        # no end record: the run was stopped
    assert "| smoke | timed out | 50 | 50 |" in md and "| headline | not reached: the run stopped before it |" in md
    assert "stopped before it finished" in md and "not installed: av" in md
