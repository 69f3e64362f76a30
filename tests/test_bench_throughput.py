"""bench/throughput.py runs every implementation on the same weights and writes its records (one
JSON line per implementation and batch) and its report (Markdown, PNG), naming the baseline it
timed; its rates, FLOPs, MFU and HFU are what the step times and vmae2_fast.flops say; a sweep
stops an implementation at its first out-of-memory."""
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bench_scripts import BENCH, report, script
from fake_official_checkout import make_fake_checkout
from hidden_packages import hide
from needs import transformers

from vmae2_fast.flops import train_flops

implementations = script("implementations")
render = script("render")
throughput = script("throughput")
TINY = ["--model", "vit_micro", "--size", "32", "--frames", "4", "--mask-ratio", "0.75", "--batch", "2",
        "--steps", "1", "--warmup", "1", "--device", "cpu"]


def run_bench(out, *extra, env=None):
    return subprocess.run([sys.executable, str(BENCH / "throughput.py"), *TINY, "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300, env=env)


def the_report(out: Path) -> dict:
    """The run's records with the comparisons the renderer works out (render.throughput_summary)."""
    r = report(out)
    assert r["end"] is not None, "the run did not finish"
    return {**r, **render.throughput_summary(render.load(r["path"]))}


def test_throughput_bench_smoke(tmp_path):
    res = run_bench(tmp_path, "--impl", "official", "fast", "--steps", "3")
    assert res.returncode == 0, res.stderr
    r = the_report(tmp_path)
    assert r["bench"] == "throughput" and r["baseline"] == "re-statement" and r["official_code"] is None
    assert [row["name"] for row in r["rows"]] == ["re-statement", "fast"]      # never called "official"
    assert r["base"] == "re-statement"
    # the numbers follow from the step times they summarise
    for row in r["rows"]:
        times = row["step_s"]
        assert len(times) == 3 and row["median_step_s"] == pytest.approx(statistics.median(times))
        assert row["min_step_s"] == min(times) <= row["median_step_s"] <= row["max_step_s"] == max(times)
        assert row["clips_per_s"] == pytest.approx(row["batch"] / row["median_step_s"])
    fast, base = r["results"]["fast"], r["results"]["re-statement"]
    assert r["speedup"] == pytest.approx(base["median_step_s"] / fast["median_step_s"])
    assert r["peak_tflops"] is None and r["results"]["fast"]["mfu"] is None   # a CPU has no peak
    md = next(tmp_path.glob("*.md")).read_text()
    assert "Speed-up" in md and "re-statement of the official code" in md.splitlines()[0]
    assert "| re-statement |" in md and "| vs re-statement |" in md and "official (" not in md
    with Image.open(next(tmp_path.glob("*.png"))) as img:
        assert img.size[0] > 400 and img.size[1] > 60


def test_rates_flops_and_mfu_follow_from_the_step_times(tmp_path):
    """clips/s = batch / median step; TFLOP/s = clips/s x flops.train_flops (MFU: the model's,
    HFU: with the recompute of the checkpointed blocks); MFU = TFLOP/s / --peak-tflops; the
    re-statement's HFU counts its Conv3d over every cube (fvcore's count, as the official code's)."""
    assert throughput.main([*TINY, "--out", str(tmp_path), "--impl", "official", "fast", "--steps", "2",
                            "--peak-tflops", "0.5", "--activation-checkpointing", "none", "2"]) == 0
    rows = the_report(tmp_path)["results"]
    assert set(rows) == {"re-statement", "fast eager ac=none", "fast eager ac=2"}
    shape = dict(encoder_mask_ratio=0.75, decoder_mask_ratio=0.5, frames=4, img_size=32)
    fl = {k: train_flops("vit_micro", checkpointing=k, **shape) for k in ("none", 2)}
    official = train_flops("vit_micro", count="fvcore", **shape)
    for r in rows.values():
        assert r["clips_per_s"] == pytest.approx(2 / statistics.median(r["step_s"]))
        assert r["tokens_per_s"] == pytest.approx(r["clips_per_s"] * (4 // 2) * (32 // 16) ** 2)  # 2x16^2 cubes
        assert r["tflops"] == pytest.approx(r["clips_per_s"] * fl["none"].model / 1e12)   # same useful work
        assert r["mfu"] == pytest.approx(r["tflops"] / 0.5)
        assert r["first_step_s"] > 0
    assert rows["fast eager ac=none"]["hfu"] == pytest.approx(rows["fast eager ac=none"]["mfu"])
    assert rows["fast eager ac=2"]["hardware_tflop_per_clip"] == pytest.approx(fl[2].hardware / 1e12)
    assert fl[2].hardware > fl[2].model
    assert rows["re-statement"]["hardware_tflop_per_clip"] == pytest.approx(official.hardware / 1e12)
    for r in rows.values():
        assert r["vs"] == pytest.approx(rows["re-statement"]["median_step_s"] / r["median_step_s"])
    md = next(tmp_path.glob("*.md")).read_text()
    assert "0.5 TFLOP/s (--peak-tflops)" in md and "| fast eager ac=2 |" in md and "First step" in md


def test_without_a_baseline_the_rows_are_compared_with_the_first(tmp_path):
    """`--impl fast` with several options: what each option buys, against the first combination."""
    assert throughput.main([*TINY, "--out", str(tmp_path), "--impl", "fast", "--compile", "off",
                            "--activation-checkpointing", "none", "full", "--attention", "auto", "math"]) == 0
    r = the_report(tmp_path)
    assert r["baseline"] is None and r["base"] == "fast eager ac=none" and r["speedup"] is None
    first = r["results"]["fast eager ac=none"]
    assert len(r["results"]) == 4
    for row in r["results"].values():
        assert row["vs"] == pytest.approx(first["median_step_s"] / row["median_step_s"])
    md = next(tmp_path.glob("*.md")).read_text()
    assert "| vs fast eager ac=none |" in md and "| fast eager ac=full math |" in md


def _oom_from_batch(limit):
    """fast_impls whose steps raise the CUDA allocator's error above `limit` clips."""
    real = throughput.fast_impls

    def fast_impls(args, *a, **kw):
        impls = real(args, *a, **kw)
        for impl in impls:
            build = impl.build

            def oom_build(build=build):
                step = build()

                def step_or_oom():
                    if args.batch > limit:
                        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
                    step()
                return step_or_oom
            impl.build = oom_build
        return impls
    return fast_impls


@pytest.mark.parametrize("schedule", ["interleaved", "sequential"])
def test_sweep_stops_an_implementation_at_its_first_out_of_memory(tmp_path, monkeypatch, schedule):
    monkeypatch.setattr(throughput, "fast_impls", _oom_from_batch(limit=1))
    assert throughput.main([*TINY, "--out", str(tmp_path), "--impl", "official", "fast", "--sweep",
                            "--batches", "1", "2", "4", "--schedule", schedule]) == 0
    report = the_report(tmp_path)
    got = sorted((r["name"], r["batch"], r["status"]) for r in report["rows"])
    assert got == [("fast", 1, "ok"), ("fast", 2, "out of memory"),
                   ("re-statement", 1, "ok"), ("re-statement", 2, "ok"), ("re-statement", 4, "ok")]
    assert report["results"]["fast"]["batch"] == 1 and report["speedup_batch"] == 1
    best = max((r for r in report["rows"] if r["name"] == "re-statement"), key=lambda r: r["clips_per_s"])
    assert report["results"]["re-statement"]["batch"] == best["batch"]
    for r in report["rows"]:        # each row against the baseline at its own batch
        if r["status"] == "ok":
            base = next(b for b in report["rows"] if b["name"] == "re-statement" and b["batch"] == r["batch"])
            assert r["vs"] == pytest.approx(base["median_step_s"] / r["median_step_s"])
    md = next(tmp_path.glob("*.md")).read_text()
    assert "## Every batch" in md and "out of memory" in md


def test_a_step_error_that_is_not_out_of_memory_is_raised(tmp_path, monkeypatch):
    def broken(args, *a, **kw):
        impls = implementations.fast_impls(args, *a, **kw)
        for impl in impls:
            impl.build = lambda: (_ for _ in ()).throw(RuntimeError("shape mismatch"))
        return impls
    monkeypatch.setattr(throughput, "fast_impls", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        throughput.main([*TINY, "--out", str(tmp_path), "--impl", "official", "fast"])


def test_hf_row_counts_videomae_v1_decoding(tmp_path):
    transformers()
    assert throughput.main([*TINY, "--out", str(tmp_path), "--impl", "official", "hf"]) == 0
    hf = the_report(tmp_path)["results"]["hf"]
    v1 = train_flops("vit_micro", encoder_mask_ratio=0.75, decoder_mask_ratio=0.0, frames=4, img_size=32)
    assert hf["model_tflop_per_clip"] == pytest.approx(v1.model / 1e12) and hf["clips_per_s"] > 0


def test_throughput_bench_times_an_official_checkout(tmp_path):
    repo = make_fake_checkout(tmp_path / "VideoMAEv2")
    assert throughput.main([*TINY, "--out", str(tmp_path / "out"), "--official-repo", str(repo),
                            "--impl", "official", "fast"]) == 0
    report = the_report(tmp_path / "out")
    assert report["baseline"] == "official-code" and report["base"] == "official"
    assert report["official_code"]["repo"] == str(repo.resolve())
    assert [r["name"] for r in report["rows"]] == ["official", "re-statement", "fast"]
    assert report["restatement_over_official"] > 0
    assert "the official code" in next((tmp_path / "out").glob("*.md")).read_text().splitlines()[0]


def test_throughput_bench_rejects_a_folder_that_is_not_a_checkout(tmp_path, capsys):
    assert throughput.main([*TINY, "--out", str(tmp_path / "out"), "--official-repo", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "OpenGVLab/VideoMAEv2" in err


def test_bad_compile_value_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        throughput.main([*TINY, "--out", str(tmp_path), "--compile", "yes"])
    assert exc.value.code == 2 and "--compile: takes on and/or off" in capsys.readouterr().err


def test_without_pyav_the_step_report_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": hide(tmp_path / "shim", "av")}
    res = run_bench(tmp_path / "out", "--impl", "official", "fast", env=env)
    assert res.returncode == 0, res.stderr
    assert set(the_report(tmp_path / "out")["results"]) == {"re-statement", "fast"}


def test_a_killed_run_leaves_the_records_it_measured(tmp_path):
    """SIGKILL after the first measurement: the records file holds the run record and every
    measurement completed so far (each one says so on stderr once it is written), whole, and the
    renderer makes a table of them that says the run did not finish."""
    import signal
    import time
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(BENCH / "throughput.py"), *TINY, "--out", str(out),
                             # no C++ ops: torch's extension loader holds a lock file while it checks
                             # the build, and a kill in that moment leaves it for every later run
                             "--kernels", "reference",
                             "--impl", "official", "fast", "--schedule", "sequential", "--sweep",
                             "--batches", "1", "2", "4", "8", "16", "32", "64", "--steps", "20"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            written = list(out.glob("*.jsonl"))
            if written and '"record": "row"' in written[0].read_text():
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        said = [line for line in proc.stderr.read().splitlines() if line.startswith("[throughput] ")]
    finally:
        if proc.poll() is None:
            proc.kill()
    r = report(out)         # every line parses: no record was cut short
    assert r["end"] is None and r["bench"] == "throughput" and r["batch"] == "sweep"
    assert 1 <= len(r["rows"]) < 14       # 2 implementations x 7 batches: killed well before the end
    assert len(r["rows"]) >= len(said)    # nothing it reported measured is missing
    for row in r["rows"]:
        assert row["status"] == "ok" and len(row["step_s"]) == 20 and row["clips_per_s"] > 0
    assert not list(out.glob("*.md"))
    assert render.main([str(out)]) == 0       # a folder: its records without a report
    md = r["path"].with_suffix(".md").read_text()
    assert "The run stopped before it finished" in md and f"the {len(r['rows'])} measurement(s)" in md
    first = r["rows"][0]
    assert f"| {first['name']} | " in md and f"{first['median_step_s']:.4f}" in md


def test_data_flag_points_to_the_fed_step(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        throughput.main([*TINY, "--out", str(tmp_path), "--data", "list.csv"])
    assert exc.value.code == 2 and "bench/fed_step.py" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.official_checkout
def test_throughput_bench_times_the_real_official_checkout(tmp_path, official_repo):
    """The bench's official path on the user's real files (not the stand-in above): the engine
    slice cut from the real engine_for_pretraining.py runs a full step on the real model."""
    assert throughput.main([*TINY, "--out", str(tmp_path / "out"), "--official-repo", str(official_repo),
                            "--impl", "official", "fast"]) == 0
    report = the_report(tmp_path / "out")
    assert report["baseline"] == "official-code"
    assert report["official_code"]["repo"] == str(official_repo.resolve())
    head = subprocess.run(["git", "-C", str(official_repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert report["official_code"]["commit"] == head.stdout.strip()
    assert [r["name"] for r in report["rows"]] == ["official", "re-statement", "fast"]
    official = next(r for r in report["rows"] if r["name"] == "official")
    assert official["clips_per_s"] > 0


def test_fp8_rows_run_the_encoder_in_fp8(tmp_path, monkeypatch):
    """`--fp8 off on`: a row per setting, and the fp8 row's model is the one `parallelize`
    converted (torchao's Float8Linear in the encoder; emulated on the CPU)."""
    import needs
    needs.module("torchao")
    import vmae2_fast.train.parallelize as par
    converted = {}
    real = par.parallelize

    def watching(model, *a, **kw):
        out = real(model, *a, **kw)
        converted[kw["fp8"]] = sorted({type(m).__name__ for m in model.encoder.modules()})
        return out
    monkeypatch.setattr(par, "parallelize", watching)
    assert throughput.main(["--model", "vit_micro", "--size", "64", "--frames", "8", "--batch", "2",
                            "--steps", "1", "--warmup", "1", "--device", "cpu", "--out", str(tmp_path),
                            "--impl", "fast", "--fp8", "off", "on"]) == 0
    r = the_report(tmp_path)
    assert set(r["results"]) == {"fast eager ac=none", "fast eager ac=none fp8"}
    assert "Float8Linear" in converted[True] and "Float8Linear" not in converted[False]
    assert "FP8 encoder GEMMs" in next(tmp_path.glob("*.md")).read_text()
