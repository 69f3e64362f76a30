"""A GPU decode's copy out of DALI's output is only queued on the compute stream, behind the
steps already queued there: DALI's output must stay alive until the copy has run, or DALI's next
iterations may write into its memory first (`transfer.HeldOutputs`).

What the CPU can show: the GPU is simulated by CUDA stand-ins (a stream, events, and a
`feed_ndarray` whose copy runs only when the "GPU" reaches it and that reads its source through a
weak reference, as a device copy holds no reference either). The loader's real GPU path
(`device_copy`, `HeldOutputs`) runs on DALI's CPU decoder: every output must still be alive when
its deferred copy runs, the batches must equal the host path's, and the loader may only wait on
the GPU once more than its limit of copies is pending. What only a GPU can show: that DALI really
reuses a released buffer before the queued copy (the corruption itself), and that an event recorded
on torch's stream orders the release after the copy: `pytest -m gpu tests/test_dali_device_copy.py`."""
import gc
import weakref

import numpy as np
import pytest
import torch

import needs
from vmae2_fast.data.dali.pipeline import DaliVideoLoader
from vmae2_fast.data.index import build_index

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def videos(tiny_synthetic):
    needs.dali()
    return build_index(tiny_synthetic.pretrain_list, tiny_synthetic.root, progress=False,
                       output=str(tiny_synthetic.root) + "/../dali_copy_test.index.json").videos


class FakeGpu:
    """One in-order stream: copies are queued, and run when an event after them is reached."""

    def __init__(self):
        self.queue = []             # ("copy", weakref to the DALI tensor, destination) | ("event", e)
        self.violations = []        # copies whose source was let go before they ran
        self.waits = 0              # host waits on an event (synchronize)

    def feed_ndarray(self, dali_tensor, dst, cuda_stream=None):
        assert cuda_stream is self.stream
        self.queue.append(("copy", weakref.ref(dali_tensor), dst))
        return dst

    def run_until(self, event):
        while self.queue:
            kind, *rest = self.queue.pop(0)
            if kind == "copy":
                ref, dst = rest
                src = ref()
                if src is None:
                    self.violations.append(dst)
                else:
                    dst.copy_(torch.from_numpy(np.array(src)))
            else:
                rest[0].done = True
                if rest[0] is event:
                    return

    def install(self, monkeypatch):
        import nvidia.dali.plugin.pytorch as dali_torch
        gpu = self
        self.stream = object()

        class Event:
            def __init__(self):
                self.done = False

            def record(self, stream):
                assert stream is gpu.stream
                gpu.queue.append(("event", self))

            def query(self):
                return self.done

            def synchronize(self):
                gpu.waits += 1
                gpu.run_until(self)

        monkeypatch.setattr(dali_torch, "feed_ndarray", self.feed_ndarray)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: self.stream)
        monkeypatch.setattr(torch.cuda, "Event", Event)


def loader(videos, **kw):
    return DaliVideoLoader(videos, batch_size=2, num_frames=4, sampling_rate=2, input_size=32, num_views=2,
                           seed=5, **kw)


def as_gpu_path(dl):
    """The loader's GPU-decode path (`device_copy` into a tensor of the target device), with the
    CPU as the target device."""
    dl.transfer, dl.target_device = "device", torch.device("cpu")
    return dl


def test_every_output_is_alive_when_its_queued_copy_runs(videos, monkeypatch):
    truth = [b.video.clone() for b in loader(videos)(0)]            # host path: copied at once
    gpu = FakeGpu()
    gpu.install(monkeypatch)
    dl = as_gpu_path(loader(videos))
    limit = dl.held.limit
    batches = []
    for b in dl(0):                             # the "GPU" is busy: nothing queued has run yet
        batches.append(b.video)
        gc.collect()
        if len(batches) <= limit:
            assert gpu.waits == 0 and len(dl.held) == len(batches)
    assert len(batches) == len(truth) > limit  # the limit was reached: the host waited for the oldest
    assert gpu.waits == len(batches) - limit
    gpu.run_until(None)                         # the GPU catches up
    assert gpu.violations == []
    for got, want in zip(batches, truth):
        assert torch.equal(got, want)


def test_outputs_are_let_go_once_their_copy_has_run(videos, monkeypatch):
    gpu = FakeGpu()
    gpu.install(monkeypatch)
    dl = as_gpu_path(loader(videos))
    it = iter(dl(0))
    next(it)
    next(it)
    assert len(dl.held) == 2
    gpu.run_until(None)                         # both copies ran
    next(it)                                    # the next batch looks at the events, without waiting
    assert len(dl.held) == 1 and gpu.waits == 0
    it.close()                                  # an epoch left mid-way waits for what is queued
    assert len(dl.held) == 0 and gpu.violations == []


@pytest.mark.gpu
def test_gpu_decode_survives_a_gpu_that_runs_behind(videos):
    """On a GPU: the compute stream is kept busy (torch.cuda._sleep) so that every queued copy runs
    after the loader has taken later batches; each batch must still be the CPU decode's (the same
    frames and boxes; the two decoders within 2 grey levels on average)."""
    cpu = [b.video.float() for b in loader(videos)(0)]
    dl = loader(videos, device="gpu", device_id=0, target_device="cuda:0")
    got = []
    for b in dl(0):
        torch.cuda._sleep(50_000_000)            # ~tens of ms of GPU time ahead of the next copy
        got.append(b.video)
    torch.cuda.synchronize()
    for g, c in zip(got, cpu):
        assert (g.float().cpu() - c).abs().mean() < 2.0
