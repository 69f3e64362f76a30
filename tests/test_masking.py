"""Dual masking: the official running-cell maps, tube-mask rules, index/boolean conversions."""
import json
from pathlib import Path

import pytest
import torch

from vmae2_fast.masking import (DualMasking, as_indices, complement_indices, encoder_masked_flags,
                                indices_to_mask, mask_to_indices, running_cell_maps, tube_mask,
                                tube_num_visible)

MASKS = json.loads((Path(__file__).parent / "fixtures" / "masks.json").read_text())


@pytest.mark.parametrize("key,grid", [("8x14x14", (8, 14, 14)), ("8x16x16", (8, 16, 16))])
def test_running_cell_maps_equal_official(key, grid):
    expected = torch.tensor(MASKS["running_cell_0p5"][key], dtype=torch.bool)
    assert torch.equal(running_cell_maps(grid, 0.5), expected)


@pytest.mark.parametrize("key,grid", [("8x14x14@0.9", (8, 14, 14)), ("8x16x16@0.9", (8, 16, 16))])
def test_tube_visible_counts_equal_official(key, grid):
    assert tube_num_visible(grid, 0.9) == MASKS["tube_visible_tokens"][key]


def test_running_cell_each_position_kept_twice_in_four_slots():
    maps = running_cell_maps((8, 4, 4), 0.5).view(4, 8, 16)
    kept = (~maps[:, :4]).sum(dim=1)
    assert torch.all(kept == 2)


@pytest.mark.parametrize("ratio,masked", [(0.25, 1), (0.5, 2), (0.75, 3), (0.9, 3)])
def test_running_cell_ratios(ratio, masked):
    maps = running_cell_maps((4, 4, 4), ratio)
    assert torch.all(maps.view(4, 4, 16).sum(-1) == masked * 4)


def test_running_cell_rejects_bad_input():
    with pytest.raises(ValueError, match="even"):
        running_cell_maps((8, 7, 7), 0.5)
    with pytest.raises(ValueError):
        running_cell_maps((8, 4, 4), 0.1)


def test_tube_mask_structure():
    grid = (8, 14, 14)
    g = torch.Generator().manual_seed(0)
    vis = tube_mask(16, grid, 0.9, generator=g)
    assert vis.shape == (16, 160) and vis.dtype == torch.int64
    assert torch.all(vis[:, 1:] > vis[:, :-1])                       # sorted, unique
    spatial = (vis % 196).view(16, 8, 20)
    assert torch.all(spatial == spatial[:, :1])                       # the same pattern every slot
    assert torch.all(vis.view(16, 8, 20) // 196 == torch.arange(8).view(1, 8, 1))
    assert len({tuple(r.tolist()) for r in spatial[:, 0]}) == 16      # samples differ


def test_tube_mask_is_uniform_over_positions():
    g = torch.Generator().manual_seed(0)
    vis = tube_mask(4000, (1, 4, 4), 0.75, generator=g)               # keep 4 of 16
    freq = torch.bincount(vis.flatten(), minlength=16).double() / 4000
    assert torch.allclose(freq, torch.full((16,), 0.25, dtype=torch.float64), atol=0.03)


def test_dual_masking_running_cell_uses_the_four_maps():
    grid = (8, 14, 14)
    m = DualMasking(grid, 0.9, 0.5)
    vis, dec = m(64, torch.Generator().manual_seed(0))
    assert dec.shape == (64, 784) and vis.shape == (64, 160)
    maps = running_cell_maps(grid, 0.5)
    seen = set()
    for row in dec:
        match = [k for k in range(4) if torch.equal(indices_to_mask(row[None], 1568)[0], maps[k])]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == {0, 1, 2, 3}


def test_decoder_ratio_zero_is_v1():
    m = DualMasking((8, 14, 14), 0.9, 0.0)
    vis, dec = m(4, torch.Generator().manual_seed(0))
    assert dec.shape == (4, 1408)
    assert torch.all(dec[:, 1:] > dec[:, :-1])
    both = torch.cat([vis, dec], 1).sort(1).values
    assert torch.equal(both, torch.arange(1568).expand(4, -1))
    assert torch.all(encoder_masked_flags(vis, dec, 1568))


def test_encoder_masked_flags_match_boolean_definition():
    vis, dec = DualMasking((4, 4, 4), 0.75, 0.5)(5, torch.Generator().manual_seed(3))
    enc_map, dec_map = indices_to_mask(vis, 64), indices_to_mask(dec, 64)
    expected = enc_map[~dec_map].view(5, -1)                          # the official weight
    assert torch.equal(encoder_masked_flags(vis, dec, 64), expected)


def test_boolean_round_trip_and_errors():
    vis = tube_mask(3, (2, 4, 4), 0.5, generator=torch.Generator().manual_seed(0))
    mask = indices_to_mask(vis, 32)
    assert mask.sum(1).tolist() == [16, 16, 16]
    assert torch.equal(mask_to_indices(mask), vis)
    assert torch.equal(as_indices(vis.int()), vis)
    assert torch.equal(complement_indices(vis, 32), mask_to_indices(~mask))
    bad = mask.clone()
    bad[0, vis[0, 0]] = True
    with pytest.raises(ValueError, match="same number"):
        mask_to_indices(bad)
    with pytest.raises(ValueError):
        as_indices(torch.zeros(3, 32))


@pytest.mark.parametrize("decoder_ratio", [0.5, 0.0])
def test_masks_are_made_on_the_requested_device(decoder_ratio):
    """On the meta device, which every machine has and which is not where tensors land by default:
    a tensor of the masking made without the requested device (on the CPU) would either raise
    when it meets the others or pull the result onto the CPU."""
    m = DualMasking((2, 4, 4), 0.5, decoder_ratio, device="meta")
    vis, dec = m(2)
    assert vis.device.type == "meta" and dec.device.type == "meta"
    assert vis.shape == (2, 16) and dec.shape == (2, 16) and vis.dtype == dec.dtype == torch.int64


@pytest.mark.gpu
def test_masking_on_cuda_without_host_sync():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    m = DualMasking((8, 16, 16), 0.9, 0.5, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        vis, dec = m(32, g)
        encoder_masked_flags(vis, dec, 2048)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert vis.is_cuda and dec.is_cuda and vis.shape == (32, 208) and dec.shape == (32, 1024)


def test_host_side_baseline_masks_use_the_official_maps():
    """The NumPy re-statement used by the benchmark's baseline draws the same map family."""
    import numpy as np

    from vmae2_fast.testing.baseline import numpy_masks
    enc, dec = numpy_masks(32, (8, 14, 14), 0.9, 0.5, np.random.default_rng(0))
    maps = torch.tensor(MASKS["running_cell_0p5"]["8x14x14"], dtype=torch.bool)
    assert all(any(torch.equal(row, m) for m in maps) for row in dec)
    assert torch.all((~enc).sum(1) == MASKS["tube_visible_tokens"]["8x14x14@0.9"])
