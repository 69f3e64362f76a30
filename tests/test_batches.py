"""The typed batches move like tensors: every tensor inside (the clips, the labels, the erasing
noise) is pinned by the DataLoader's pin-memory step, sent by the copy-ahead feed and by ``to``;
the types, the plain values and the original batch survive."""
import torch
from torch.utils.data._utils.pin_memory import pin_memory as dataloader_pin_memory

from vmae2_fast.data.batches import ClassifyBatch, EvalBatch, PretrainBatch, map_tensors
from vmae2_fast.data.device_feed import _move


def classify_batch():
    noise = torch.randn(3, 2, 4, 5)
    return ClassifyBatch(torch.zeros(4, 3, 2, 8, 8, dtype=torch.uint8), torch.tensor([1, 1, 2, 2]),
                         [(1, 0, 2, 4, 5, noise), (3, 1, 1, 2, 2, None)], (("bad.mp4", "corrupt"),))


def tensors(batch) -> list:
    found = []
    map_tensors(batch, lambda t: found.append(t) or t)
    return found


def test_map_tensors_reaches_every_tensor_and_keeps_the_rest():
    b = classify_batch()
    assert [t.shape for t in tensors(b)] == [(4, 3, 2, 8, 8), (4,), (3, 2, 4, 5)]
    moved = b.to("meta")
    assert type(moved) is ClassifyBatch and all(t.device.type == "meta" for t in tensors(moved))
    assert moved.erasures[0][:5] == (1, 0, 2, 4, 5) and moved.erasures[1] == (3, 1, 1, 2, 2, None)
    assert moved.skipped == (("bad.mp4", "corrupt"),)
    assert all(t.device.type == "cpu" for t in tensors(b))             # the original is unchanged
    e = EvalBatch(None, None, [], (("x", "why"),))
    assert e.to("meta") == e                                           # nothing to move


def test_the_dataloader_pin_step_calls_the_batch_and_pins_every_tensor(monkeypatch):
    """torch's pin-memory step (what DataLoader(pin_memory=True) runs on each batch) keeps the
    type and reaches the erasing noise too (pinning itself needs CUDA: recorded here)."""
    pinned = []

    def fake_pin(t, *args, **kwargs):
        out = t.clone()
        pinned.append(out)
        return out
    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    for b in (classify_batch(), PretrainBatch(torch.ones(2, 3, 2, 8, 8), (("a", "b"),))):
        out = dataloader_pin_memory(b)
        assert type(out) is type(b) and out.skipped == b.skipped
        got = tensors(out)
        assert len(got) == len(tensors(b)) and all(any(t is p for p in pinned) for t in got)


def test_the_copy_ahead_feed_sends_every_host_tensor_of_a_batch():
    moved = []
    out = _move(classify_batch(), torch.device("meta"), moved)
    assert type(out) is ClassifyBatch and len(moved) == 3
    assert all(t.device.type == "meta" for t in tensors(out))
    assert out.erasures[0][5] is moved[2] and out.erasures[1][5] is None
