import math

import numpy as np
import pytest

from vmae2_fast.train.schedule import cosine_schedule, scaled_lr


def closed_form(it, base, final, total, warmup, start):
    if it < warmup:
        return start + (base - start) * it / (warmup - 1) if warmup > 1 else base
    i, n = it - warmup, total - warmup
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n))


def test_shape_warmup_and_cosine():
    base, final, start = 1e-3, 1e-5, 1e-4
    s = cosine_schedule(base, final, epochs=10, steps_per_epoch=7, warmup_epochs=2,
                        start_warmup_value=start)
    assert s.shape == (70,)
    assert s[0] == pytest.approx(start)       # really starts at the warm-up value
    assert s[13] == pytest.approx(base)       # last warm-up value
    assert s[14] == pytest.approx(base)       # first cosine value
    assert np.all(np.diff(s[:14]) > 0)
    assert np.all(np.diff(s[14:]) < 0)
    assert np.all(s[14:] > final)
    for it in (0, 5, 13, 14, 30, 50, 69):
        assert s[it] == pytest.approx(closed_form(it, base, final, 70, 14, start), rel=1e-12)


def test_warmup_steps_override_and_no_warmup():
    s = cosine_schedule(1.0, 0.0, epochs=2, steps_per_epoch=10, warmup_epochs=1, warmup_steps=4)
    assert s.shape == (20,)
    assert s[0] == 0.0 and s[3] == pytest.approx(1.0) and s[4] == pytest.approx(1.0)
    s = cosine_schedule(1.0, 0.1, epochs=1, steps_per_epoch=5)
    assert s[0] == 1.0
    assert s[-1] == pytest.approx(closed_form(4, 1.0, 0.1, 5, 0, 0.0))


def test_constant_schedule():
    s = cosine_schedule(0.05, 0.05, epochs=3, steps_per_epoch=4)
    assert np.allclose(s, 0.05)


def test_warmup_covering_whole_run():
    s = cosine_schedule(1.0, 0.0, epochs=1, steps_per_epoch=5, warmup_epochs=1, start_warmup_value=0.5)
    assert s.shape == (5,) and s[0] == 0.5 and s[-1] == 1.0


@pytest.mark.parametrize("kwargs", [
    dict(epochs=2, steps_per_epoch=10, warmup_epochs=3),
    dict(epochs=2, steps_per_epoch=10, warmup_steps=21),
    dict(epochs=0, steps_per_epoch=10),
    dict(epochs=2, steps_per_epoch=0),
    dict(epochs=2, steps_per_epoch=10, warmup_epochs=-1),
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        cosine_schedule(1.0, 0.0, **kwargs)


def test_warmup_too_long_message():
    with pytest.raises(ValueError, match="longer than the whole run"):
        cosine_schedule(1.0, 0.0, epochs=2, steps_per_epoch=10, warmup_epochs=3)


def test_scaled_lr():
    assert scaled_lr(1.5e-4, 512) == pytest.approx(3e-4)
    assert scaled_lr(1e-3, 64, reference=128) == pytest.approx(5e-4)
    with pytest.raises(ValueError):
        scaled_lr(1e-3, 0)
