"""`--decoder auto` picks DALI only to train on a GPU with DALI importable, else PyAV, and says
which and why in the run log (README: "uses DALI on a GPU and the PyAV workers on a CPU, and logs
which and why"). The device is only inspected, never used, so the GPU branch runs here too."""
import logging

import pytest
import torch

from cli_runs import micro_flags
from vmae2_fast.data.dali import pipeline as dali_pipeline
from vmae2_fast.data.loaders import choose_decoder
from vmae2_fast.pretrain import main

GPU, CPU = torch.device("cuda", 0), torch.device("cpu")


@pytest.fixture
def dali_is(monkeypatch):
    """dali_is(True) / dali_is(False): what the engine finds when it imports DALI."""
    def set_(ok):
        monkeypatch.setattr(dali_pipeline, "dali_status",
                            lambda: (True, "9.9.9") if ok else (False, "nvidia-dali is not installed"))
    return set_


@pytest.mark.parametrize("device, dali_ok, choice, why", [
    (GPU, True, "dali", "auto: training on a GPU with DALI 9.9.9 (GPU decoding)"),
    (GPU, False, "pyav", "auto: nvidia-dali is not installed"),
    (CPU, True, "pyav", "auto: training on the CPU, where DALI's CPU decoder reads only VP8/VP9/MJPEG"),
    (CPU, False, "pyav", "auto: training on the CPU"),
], ids=["gpu+dali", "gpu-no-dali", "cpu+dali", "cpu-no-dali"])
def test_auto_chooses_and_says_why(dali_is, caplog, device, dali_ok, choice, why):
    dali_is(dali_ok)
    with caplog.at_level(logging.INFO, logger="vmae2_fast"):
        assert choose_decoder("auto", device) == choice
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("video decoder:")]
    assert len(lines) == 1 and lines[0].startswith(f"video decoder: {choice} (") and why in lines[0]


def test_forced_choices(dali_is, caplog):
    dali_is(True)
    with caplog.at_level(logging.INFO, logger="vmae2_fast"):
        assert choose_decoder("pyav", GPU) == "pyav"
        assert choose_decoder("dali", CPU) == "dali"
    assert "video decoder: dali (requested (DALI 9.9.9, decoding on the cpu))" in caplog.text
    dali_is(False)
    with pytest.raises(ValueError, match="--decoder dali: nvidia-dali is not installed.*--decoder pyav"):
        choose_decoder("dali", GPU)
    with pytest.raises(ValueError, match="must be one of auto, dali, pyav"):
        choose_decoder("ffmpeg", CPU)
    caplog.clear()
    choose_decoder("auto", CPU, log_choice=False)        # the other ranks of a run stay quiet
    assert "video decoder" not in caplog.text


def test_a_cpu_run_logs_its_choice(tiny_synthetic, tmp_path):
    """Through the CLI, with the decoder left at its default: the run's log.txt names it."""
    assert main(micro_flags(tiny_synthetic, tmp_path / "run", max_steps=1, progress=False)) == 0
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "video decoder: pyav (auto: training on the CPU, where DALI's CPU decoder reads only " \
           "VP8/VP9/MJPEG; use --decoder dali for such files)" in log
