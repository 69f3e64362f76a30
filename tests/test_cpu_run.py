"""A large model on a CPU says what it costs before the first step: DataLoader workers capped at
the cores the process may use (and the log says so), and an estimate of the time per step and per
epoch from the FLOP model and this machine's measured matmul rate, with the command that tries
the same training in minutes."""
import logging
import re

import pytest
import torch

from cli_runs import micro_flags
from vmae2_fast import ops
from vmae2_fast.cli import config_for, main_for
from vmae2_fast.data import loaders
from vmae2_fast.stages import estimate
from vmae2_fast.train.distributed import DistInfo


def test_workers_are_capped_at_the_cores_the_process_may_use(tiny_synthetic, monkeypatch, caplog):
    from vmae2_fast.data.lists import read_list
    from vmae2_fast.data.pyav.pretrain import PretrainVideoDataset, pretrain_collate
    monkeypatch.setattr(loaders, "usable_cores", lambda: 2)
    cfg = config_for("pretrain", ["--model", "vit_micro", "--num-workers", "8", "--batch-size", "2"])
    ds = PretrainVideoDataset(read_list(tiny_synthetic.pretrain_list, tiny_synthetic.root), num_frames=4,
                              sampling_rate=2, input_size=32)
    with caplog.at_level(logging.INFO, logger="vmae2_fast"):
        loader = loaders.PyAVLoader(ds, pretrain_collate, cfg, DistInfo(), torch.device("cpu"))
    assert loader.num_workers == 2
    assert "--num-workers 8 is more than the 2 CPU cores this process may use: 2 DataLoader workers" in caplog.text
    cfg.num_workers = 1                                          # at or under the cores: as asked, quietly
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vmae2_fast"):
        assert loaders.PyAVLoader(ds, pretrain_collate, cfg, DistInfo(), torch.device("cpu")).num_workers == 1
    assert "CPU cores" not in caplog.text


def test_the_cards_command_on_a_cpu_is_estimated_in_hours_per_step_with_a_quick_command(caplog):
    """`python -m vmae2_fast.pretrain --model vit_g`: ViT-g's dual-masking forward is 238.567 G MACs
    per clip (flops.py, checked against fvcore and the paper), so training is 6 x that per clip
    (3 forwards, 2 FLOPs a MAC; `--activation-checkpointing auto` recomputes nothing on a CPU), and
    a step is 32 videos x 4 views = 128 clips."""
    cfg = config_for("pretrain", ["--model", "vit_g"])
    rate = 1e11                                                   # 100 GFLOP/s, a 2-core CPU at best
    with caplog.at_level(logging.INFO, logger="vmae2_fast"):
        est = estimate.log_step_estimate("vit_g", cfg, 12, torch.float32, rate=rate)
    assert est["clips_per_step"] == 128
    assert est["flops_per_clip"] == pytest.approx(6 * 238.567e9, rel=1e-5)
    assert est["step_s"] == pytest.approx(est["flops_per_clip"] * 128 / rate)
    assert est["epoch_s"] == pytest.approx(12 * est["step_s"])
    assert est["step_s"] > 30 * 60                                # tens of minutes a step, at best
    line = caplog.text
    found = re.search(r"at least ([\d.]+) min per optimiser step, ([\d.]+) h per epoch \(12 steps\)", line)
    assert found, line
    assert float(found.group(1)) == pytest.approx(est["step_s"] / 60, abs=0.05)
    assert float(found.group(2)) == pytest.approx(est["epoch_s"] / 3600, abs=0.05)
    assert "To try the same training in minutes: python -m vmae2_fast.pretrain --model vit_s --preset cpu_demo" in line


def test_a_cpu_run_logs_the_estimate_before_its_first_step(tiny_synthetic, tmp_path, monkeypatch):
    """The estimate is the FLOP model x the run's clips per step at the measured rate (a fixed
    rate here), logged before the first step's line."""
    from vmae2_fast.flops import train_flops
    from vmae2_fast.stages.pretrain import build_model
    monkeypatch.setattr(estimate, "matmul_flops_per_s", lambda dtype: 2e6)
    out = tmp_path / "run"
    argv = micro_flags(tiny_synthetic, out, epochs=1, batch_size=2, num_sample=3, accum_steps=2,
                       no_progress=True, kernels="reference")
    before = ops.active_backend()
    try:
        assert main_for("pretrain", argv) == 0
    finally:
        ops.use_backend(before)      # the run sets the process's ops backend (--kernels reference)
    log = (out / "log.txt").read_text()
    cfg = config_for("pretrain", argv)
    per_clip = train_flops(build_model(cfg), 0.75, cfg.decoder_mask_ratio).hardware
    step_s = per_clip * 2 * 3 * 2 / 2e6                           # batch x views x accumulation
    found = re.search(r"at least ([\d.]+) (s|min) per optimiser step, ([\d.]+) (s|min) per epoch \((\d+) steps\)", log)
    assert found, log
    value = float(found.group(1)) * (60 if found.group(2) == "min" else 1)
    assert value == pytest.approx(step_s, rel=0.01)
    assert int(found.group(5)) == 12 // (2 * 2)                   # 12 train videos, batch 2, accum 2
    assert log.index("estimated time on this CPU") < log.index("epoch 0 step 1/")


def test_the_matmul_rate_is_measured():
    rate = estimate.matmul_flops_per_s(torch.float32, size=64, seconds=0.02)
    assert 1e6 < rate < 1e14
