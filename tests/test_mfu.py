"""MFU in every run: each log interval of a real CPU run records TFLOP/s, MFU and HFU (given
--peak-tflops) and its peak memory, in metrics.jsonl and the log line."""
import pytest

from cli_runs import micro_flags, train_records
from vmae2_fast.cli import config_for
from vmae2_fast.flops import train_flops
from vmae2_fast.stages.pretrain import run


def test_a_cpu_run_logs_mfu_hfu_and_peak_memory(tiny_synthetic, tmp_path):
    out = tmp_path / "mfu"
    run(config_for("pretrain", micro_flags(tiny_synthetic, out, no_progress=True, max_steps=3, epochs=2,
                                           activation_checkpointing="full")
                   + ["--peak-tflops", "0.002"]))
    # the count from the zoo's shapes, independent of the run's model object
    flops = train_flops("vit_micro", 0.75, 0.5, 4, 32, checkpointing="full")
    records = train_records(out)
    assert len(records) == 3
    for r in records:              # one process: clips_per_s is this device's
        assert r["tflops"] == pytest.approx(r["clips_per_s"] * flops.model / 1e12, rel=1e-9)
        assert r["mfu"] == pytest.approx(r["tflops"] / 0.002, rel=1e-9)
        assert r["hfu"] == pytest.approx(r["mfu"] * flops.hardware / flops.model, rel=1e-9)
        assert r["hfu"] > r["mfu"] and 0 < r["max_rss_gib"] < 64
    log = (out / "log.txt").read_text()
    assert "TFLOP/s MFU" in log and "peak RSS" in log
    assert "peak 0.002 TFLOP/s per device for MFU" in log
