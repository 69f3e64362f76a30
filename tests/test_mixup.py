"""Video mixup / cutmix (official timm batch mode semantics) and the soft-target loss."""
import pytest
import torch
import torch.nn.functional as F

from vmae2_fast.train.mixup import VideoMixup, smoothed_one_hot, soft_target_cross_entropy


def test_smoothed_one_hot_and_soft_ce():
    y = torch.tensor([0, 2])
    t = smoothed_one_hot(y, 4, 0.1)
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert t[0, 0] == pytest.approx(0.9 + 0.025) and t[0, 1] == pytest.approx(0.025)
    logits = torch.randn(2, 4)
    assert torch.allclose(soft_target_cross_entropy(logits, t),
                          F.cross_entropy(logits, y, label_smoothing=0.1), atol=1e-6)


def test_mixup_pairs_i_with_b_minus_1_minus_i():
    m = VideoMixup(3, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0, seed=1)
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1, 1).expand(4, 3, 2, 4, 4).contiguous()
    y = torch.tensor([0, 1, 2, 0])
    mixed, target = m(x, y)
    lam = float(mixed[0, 0, 0, 0, 0]) / -3 + 1   # 0*lam + 3*(1-lam)
    assert torch.allclose(mixed[1], torch.full_like(mixed[1], 1 * lam + 2 * (1 - lam)))
    assert target[0, 0] == pytest.approx(lam + (1 - lam))   # sample 0 and 3 are both class 0
    assert target[1, 1] == pytest.approx(lam, abs=1e-6) and target[1, 2] == pytest.approx(1 - lam, abs=1e-6)


def test_cutmix_same_box_in_every_frame_and_corrected_lam():
    m = VideoMixup(2, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, seed=0)
    x = torch.cat([torch.zeros(1, 3, 4, 16, 16), torch.ones(1, 3, 4, 16, 16)])
    for _ in range(5):
        mixed, target = m(x, torch.tensor([0, 1]))
        box = mixed[0] == 1
        assert torch.equal(box, box[:1, :1].expand_as(box))      # same box: channels and frames
        kept = 1 - box[0, 0].float().mean()
        assert target[0, 0] == pytest.approx(float(kept), abs=1e-6)


def test_mixup_is_reproducible_and_resumable():
    x, y = torch.randn(4, 3, 2, 8, 8), torch.tensor([0, 1, 2, 3])
    a, b = VideoMixup(4, seed=5), VideoMixup(4, seed=5)
    a(x, y)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x, y)[0], b(x, y)[0])
    with pytest.raises(ValueError, match="even"):
        a(x[:3], y[:3])
