"""Temporal sampling follows the official pre-training rule exactly."""
import numpy as np
import pytest

from vmae2_fast.data.clip_sampling import pretrain_frame_indices


class FixedRng:
    """Stands in for np.random.Generator: ``integers(n)`` returns a fixed value (checked < n)."""

    def __init__(self, value):
        self.value = value

    def integers(self, n):
        assert 0 <= self.value < n
        return self.value


def test_long_video_exact_stride_from_given_start():
    # The reference's example: 100 frames, step 4, randint -> 27 gives [27, 31, ..., 87].
    idx = pretrain_frame_indices(100, 16, 4, FixedRng(27))
    assert idx.dtype == np.int64
    assert idx.tolist() == list(range(27, 88, 4))
    assert len(idx) == 16


def test_short_video_repeats_last_reachable_frame():
    idx = pretrain_frame_indices(30, 16, 4, np.random.default_rng(0))
    assert idx.tolist() == [0, 4, 8, 12, 16, 20, 24, 28] + [28] * 8


def test_step_one_window_ending_at_last_frame_repeats_penultimate():
    # A quirk of the official loop (advance only while ``off + step < n``): kept for parity.
    assert pretrain_frame_indices(16, 16, 1, FixedRng(0)).tolist() == list(range(15)) + [14]


def test_single_frame_video():
    assert pretrain_frame_indices(1, 8, 4, np.random.default_rng(0)).tolist() == [0] * 8


def test_random_start_covers_every_valid_window():
    n, clip, step = 40, 4, 3
    n_windows = n - clip * step + 1  # 29 valid starts: 0..28
    rng = np.random.default_rng(123)
    starts = set()
    for _ in range(2000):
        idx = pretrain_frame_indices(n, clip, step, rng)
        assert idx.min() >= 0 and idx.max() < n
        assert np.all(np.diff(idx) == step)  # step >= 2: always exact stride when the window fits
        starts.add(int(idx[0]))
    assert starts == set(range(n_windows))


@pytest.mark.parametrize("n", [0, -5])
def test_bad_frame_count(n):
    with pytest.raises(ValueError, match="n_frames"):
        pretrain_frame_indices(n, 16, 4, np.random.default_rng(0))
