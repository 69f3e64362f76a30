import json
import logging
import math

import numpy as np
import pytest
import torch

from vmae2_fast.train import metrics
from vmae2_fast.train.metrics import JsonlLogger, RunningMean, TensorBoardLogger


def test_jsonl_logger(tmp_path):
    path = tmp_path / "deep" / "dir" / "log.jsonl"
    log = JsonlLogger(path)
    log.log({"epoch": 0, "loss": torch.tensor(0.5), "lr": np.float32(1e-3), "name": "a"})
    # flushed immediately: readable before close
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {"epoch": 0, "loss": 0.5, "lr": pytest.approx(1e-3), "name": "a"}
    log.log({"epoch": 1, "loss": float("nan")})
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and math.isnan(json.loads(lines[1])["loss"])
    with JsonlLogger(path) as again:  # appends, does not truncate
        again.log({"epoch": 2})
    assert len(path.read_text().splitlines()) == 3
    with pytest.raises(RuntimeError):
        log.log({"x": 1})


def test_tensorboard_logger_warns_once_when_missing(tmp_path, monkeypatch, caplog):
    import builtins
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    monkeypatch.setattr(TensorBoardLogger, "_warned", False)
    with caplog.at_level(logging.WARNING, logger=metrics.__name__):
        a = TensorBoardLogger(tmp_path / "tb")
        b = TensorBoardLogger(tmp_path / "tb2")
    warnings = [r for r in caplog.records if "TensorBoard is not installed" in r.getMessage()]
    assert len(warnings) == 1 and "pip install tensorboard" in warnings[0].getMessage()
    assert not a.enabled and not b.enabled
    a.scalars({"loss": torch.tensor(1.0)}, step=3)  # no-op, no error
    a.flush()
    a.close()


def test_running_mean():
    m = RunningMean(window=3)
    assert math.isnan(m.window_avg) and math.isnan(m.global_avg)
    for v in (1.0, 2.0, 3.0, torch.tensor(4.0)):
        m.update(v)
    assert m.window_avg == pytest.approx(3.0)
    assert m.global_avg == pytest.approx(2.5)
    assert m.last == 4.0
    m.update(10.0, n=2)
    assert m.count == 6 and m.global_avg == pytest.approx(30.0 / 6)
    assert m.window_avg == pytest.approx(8.0)
    assert "(" in str(m)
    m.reset()
    assert m.count == 0
    with pytest.raises(ValueError):
        RunningMean(window=0)
