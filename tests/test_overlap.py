"""The next batch is decoded (and, on a GPU, copied to the device) while the current step
computes: the loader's workers make progress during the step, and a step never waits for data
when the loader is faster than it."""
import time
from types import SimpleNamespace

import pytest
import torch

from vmae2_fast.data.device_feed import to_device_ahead
from vmae2_fast.data.lists import read_list
from vmae2_fast.data.loaders import pretrain_loader
from vmae2_fast.data.pixels import normalize_on_device
from vmae2_fast.data.pyav import pretrain as pyav_pretrain

STEP_S = 0.25


def cfg(**kw):
    base = dict(num_frames=4, sampling_rate=2, input_size=32, seed=0, num_workers=2, batch_size=2,
                num_sample=2, dali_instances=1, decoder="pyav")
    base.update(kw)
    return SimpleNamespace(**base)


def compute_for(seconds: float, device="cpu") -> None:
    """A step: matrix products, on one core, for about ``seconds`` (the host is busy, as it is
    while it launches a real step; the GIL is released inside each product)."""
    a = torch.randn(256, 256, device=device)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a = torch.tanh(a @ a)


def run_steps(batches, step_s, device="cpu"):
    """[(time the batch arrived, time its step ended)], and the batches' first clip values."""
    marks, it = [], iter(batches)
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        if batch is None:
            return marks
        got = time.perf_counter()
        normalize_on_device(batch.video.to(device))
        compute_for(step_s, device)
        if device != "cpu":
            torch.cuda.synchronize()
        marks.append((t0, got, time.perf_counter()))


def test_pyav_workers_decode_the_next_batches_while_the_step_computes(tiny_synthetic, monkeypatch):
    """The worker processes stamp each item when they finish it (shared memory): the items of
    later batches are finished inside the steps of earlier ones, and after the first batch the
    loop hardly waits for data (under 10% of the step time on average)."""
    entries = read_list(tiny_synthetic.pretrain_list, tiny_synthetic.root)
    stamps = torch.zeros(len(entries), dtype=torch.float64).share_memory_()
    real = pyav_pretrain.PretrainVideoDataset.__getitem__

    def stamped(self, index):
        item = real(self, index)
        stamps[index] = time.perf_counter()      # CLOCK_MONOTONIC: comparable across processes
        return item

    monkeypatch.setattr(pyav_pretrain.PretrainVideoDataset, "__getitem__", stamped)
    dist = SimpleNamespace(world_size=1, rank=0)
    loader = pretrain_loader(entries, None, cfg(), dist, torch.device("cpu"), "pyav")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                    # the step takes one core, the workers the other
    try:
        marks = run_steps(loader(0), STEP_S)
    finally:
        torch.set_num_threads(threads)
    assert len(marks) == loader.steps_per_epoch == len(entries) // 2
    first_arrival, last_end = marks[0][1], marks[-1][2]
    in_steps = [s for s in stamps.tolist() if any(got < s < end for _, got, end in marks)]
    later = len(entries) - 2                     # the items after the first batch
    assert stamps.min() > 0 and len(in_steps) >= later // 2, (stamps.tolist(), marks)
    assert first_arrival < last_end
    waits = [got - t0 for t0, got, _ in marks[1:]]
    assert sum(waits) / len(waits) < 0.1 * STEP_S, waits


def test_dali_prefetches_while_the_step_computes(tmp_path):
    """DALI's threads decode the scheduled batches during the step: after the first batch the
    loop's typical wait is a small part of what decoding a batch takes the loader alone.
    (Videos of 160x160, so that a batch costs tens of milliseconds to decode.)"""
    import needs
    needs.dali()
    needs.module("av")          # writes the test videos
    import numpy as np
    from vmae2_fast.data.dali.pipeline import DaliVideoLoader
    from vmae2_fast.data.index import build_index
    from vmae2_fast.data.synthetic import synthetic_video_frames, write_video
    for k in range(8):
        write_video(str(tmp_path / f"v{k}.webm"), synthetic_video_frames(0, "train", k % 6, k, 32, 160))
    (tmp_path / "list.txt").write_text("".join(f"v{k}.webm 0 -1\n" for k in range(8)))
    videos = build_index(str(tmp_path / "list.txt"), str(tmp_path), progress=False).videos
    dl = DaliVideoLoader(videos, batch_size=2, num_frames=8, sampling_rate=2, input_size=112,
                         num_views=2, num_threads=1, prefetch=2)
    list(dl(0))                                  # build the pipeline, warm the caches
    t0 = time.perf_counter()
    n = len(list(dl(1)))
    per_batch = (time.perf_counter() - t0) / n   # decoding, nothing else to do
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        marks = run_steps(dl(1), STEP_S)
    finally:
        torch.set_num_threads(threads)
    assert len(marks) == n == 4
    waits = [got - t0 for t0, got, _ in marks[1:]]
    assert np.median(waits) < 0.3 * per_batch, (waits, per_batch)


def test_to_device_ahead_is_the_identity_on_the_cpu():
    batches = [(torch.arange(3) + i, [("x", torch.ones(1))], i) for i in range(4)]
    assert list(to_device_ahead(iter(batches), torch.device("cpu"))) == batches


def test_closing_the_feed_closes_the_loader():
    closed = []

    def gen():
        try:
            for i in range(10):
                yield (torch.tensor([i]),)
        finally:
            closed.append(True)

    feed = to_device_ahead(gen(), "cpu")
    next(feed)
    feed.close()
    assert closed == [True]


@pytest.mark.gpu
def test_the_step_never_waits_when_the_loader_is_faster(tiny_synthetic):
    """CUDA: PyAV workers, pinned batches copied one batch ahead on a side stream. A step of
    about 0.25 s on the GPU (the host waits for it at its end, as a logging step does) never
    waits for data after the first batch, and the clips arrive intact (uint8, as decoded)."""
    entries = read_list(tiny_synthetic.pretrain_list, tiny_synthetic.root)
    dist = SimpleNamespace(world_size=1, rank=0)
    dev = torch.device("cuda", 0)
    loader = pretrain_loader(entries, None, cfg(), dist, dev, "pyav")
    cpu = pretrain_loader(entries, None, cfg(num_workers=0), dist, torch.device("cpu"), "pyav")
    for got, want in zip(loader(1), cpu(1)):
        video = got.video
        assert video.device == dev and video.dtype == torch.uint8 and torch.equal(video.cpu(), want.video)
    marks = run_steps(loader(0), STEP_S, device=dev)
    waits = [got - t0 for t0, got, _ in marks[1:]]
    assert max(waits) < 0.1 * STEP_S, waits


@pytest.mark.gpu
def test_copies_run_on_a_side_stream_and_are_waited_for_on_the_gpu():
    """The feed issues each copy on its own stream; the consumer's stream waits for it (no
    host sync), so a kernel launched right after reads the copied values."""
    dev = torch.device("cuda", 0)
    host = [torch.full((1 << 22,), i, dtype=torch.uint8).pin_memory() for i in range(6)]
    seen = []
    for (x,) in to_device_ahead(((h,) for h in host), dev):
        seen.append(int(x.float().mean().item()))
    assert seen == list(range(6))
