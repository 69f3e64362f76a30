"""Dual masking as sorted integer index tensors, made on the device.

Conventions (the official ones): tokens are numbered in (t, h, w) raster order with t slowest;
the official boolean maps use True = masked. Inside the training step masks travel only as
index tensors:

- `vis_idx` (B, N_vis): tokens the encoder sees, ascending (tube masking: the same number in
  every sample, so the tensor is rectangular);
- `dec_idx` (B, N_dec): tokens the decoder reconstructs, ascending (running-cell masking keeps
  the same count in every sample too).

Everything below runs with tensor ops on the tensors' device: no `.item()`, no `nonzero`, no
boolean indexing, so the step stays free of host syncs. Boolean maps are converted only at the
API edge (`mask_to_indices`), where a sync is acceptable.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ConfigError
from .ops.common import encoder_masked as encoder_masked_flags  # noqa: F401 (one definition)

Grid = tuple[int, int, int]  # (T', H', W') token grid


def num_tokens(grid: Grid) -> int:
    return grid[0] * grid[1] * grid[2]


def tube_num_visible(grid: Grid, mask_ratio: float) -> int:
    """Visible tokens of tube masking: the official int(ratio * H'W') masked per temporal slot."""
    hw = grid[1] * grid[2]
    masked = int(mask_ratio * hw)
    if not 0 <= masked < hw:
        raise ConfigError(f"mask ratio {mask_ratio} leaves no visible token on a {grid[1]}x{grid[2]} grid")
    return (hw - masked) * grid[0]


def tube_mask(batch: int, grid: Grid, mask_ratio: float, *, device=None,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Tube masking: one random spatial pattern per sample, repeated over every temporal slot.

    Returns the sorted visible indices (B, N_vis), int64. A uniformly random subset of the H'W'
    positions (argsort of uniform noise) is kept, as the official shuffle of a 0/1 row does.
    """
    noise = torch.rand(batch, grid[1] * grid[2], device=device, generator=generator)
    return tube_mask_from_noise(noise, grid, mask_ratio)


def tube_mask_from_noise(noise: torch.Tensor, grid: Grid, mask_ratio: float) -> torch.Tensor:
    """Tube masking from uniform noise (B, H'W'): the positions of the smallest values stay
    visible. Tensor ops only, so torch.compile traces it (a `generator` argument cannot be)."""
    t = grid[0]
    keep = tube_num_visible(grid, mask_ratio) // t
    batch = noise.shape[0]
    hw = grid[1] * grid[2]
    spatial = noise.argsort(dim=1)[:, :keep].sort(dim=1).values          # (B, keep)
    offsets = torch.arange(t, device=spatial.device) * hw                  # (T',)
    return (offsets[None, :, None] + spatial[:, None, :]).reshape(batch, t * keep)


def running_cell_maps(grid: Grid, ratio: float = 0.5) -> torch.Tensor:
    """The official running-cell maps, (4, N) bool with True = masked (not decoded).

    A 4-slot queue holding int(4 * ratio) ones is rolled one step per temporal slot (the pointer
    advances before first use, so slot 0 of map s uses roll s + 1); each roll, read as a 2x2 cell
    (TL, TR, BL, BR), is tiled over the H' x W' grid.
    """
    t, h, w = grid
    n_masked = int(4 * ratio)
    if not 0 < n_masked < 4:
        raise ConfigError(f"running-cell ratio {ratio} must mask 1, 2 or 3 of every 4 cells")
    if h % 2 or w % 2:
        raise ConfigError(f"running-cell masking needs an even token grid, got {h}x{w}")
    queue = torch.tensor([1] * n_masked + [0] * (4 - n_masked), dtype=torch.bool)
    start = torch.arange(4)[:, None]                                     # (4, 1)
    ptr = start + 1 + torch.arange(t)[None, :]                           # (4, T')
    cells = queue[(torch.arange(4)[None, None, :] + ptr[..., None]) % 4]  # (4, T', 4)
    cells = cells.view(4, t, 2, 2)
    maps = cells.repeat(1, 1, h // 2, w // 2)                            # (4, T', H', W')
    return maps.reshape(4, t * h * w)


def complement_indices(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted indices of [0, n) that are NOT in `idx` (B, k) -> (B, n - k), without host syncs."""
    b, k = idx.shape
    present = torch.zeros(b, n, dtype=torch.int8, device=idx.device)
    present.scatter_(1, idx, 1)
    # A stable sort puts the absent positions (0) first, in ascending order.
    return present.argsort(dim=1, stable=True)[:, : n - k]


@dataclass
class DualMasking:
    """Draws (vis_idx, dec_idx) for a batch on one device.

    decoder_mask_ratio 0 reproduces VideoMAE V1: the decoder reconstructs every encoder-masked
    token. Otherwise each sample picks one of the four running-cell maps at random.
    """
    grid: Grid
    mask_ratio: float = 0.9
    decoder_mask_ratio: float = 0.5
    device: torch.device | str | None = None

    def __post_init__(self):
        self.num_tokens = num_tokens(self.grid)
        self.num_visible = tube_num_visible(self.grid, self.mask_ratio)
        if self.decoder_mask_ratio > 0:
            maps = running_cell_maps(self.grid, self.decoder_mask_ratio)
            kept = (~maps).to(torch.int8).argsort(dim=1, descending=True, stable=True)
            n_dec = int((~maps[0]).sum())
            self.cell_table = kept[:, :n_dec].sort(dim=1).values.to(self.device)  # (4, N_dec)
            self.num_decoded = n_dec
        else:
            self.cell_table = None
            self.num_decoded = self.num_tokens - self.num_visible

    def __call__(self, batch: int, generator: torch.Generator | None = None):
        return self.from_noise(*self.draw(batch, generator))

    def draw(self, batch: int, generator: torch.Generator | None = None):
        """The random numbers of one batch's masks: (uniform noise (B, H'W'), running-cell map
        per sample (B,) or None), drawn on the device from `generator`."""
        noise = torch.rand(batch, self.grid[1] * self.grid[2], device=self.device, generator=generator)
        choice = None
        if self.cell_table is not None:
            choice = torch.randint(0, 4, (batch,), device=self.device, generator=generator)
        return noise, choice

    def from_noise(self, noise: torch.Tensor, choice: torch.Tensor | None = None):
        """(vis_idx, dec_idx) from `draw`'s random numbers: tensor ops only, so this half of the
        masking traces into a torch.compile graph (the draw with a seeded generator cannot)."""
        vis = tube_mask_from_noise(noise, self.grid, self.mask_ratio)
        if self.cell_table is None:
            return vis, complement_indices(vis, self.num_tokens)
        return vis, self.cell_table[choice]


def mask_to_indices(mask: torch.Tensor) -> torch.Tensor:
    """Official boolean map (B, N), True = masked, to the sorted indices of the False entries.

    API edge only: it reads the counts on the host to check that every row keeps the same number.
    """
    if mask.dtype != torch.bool or mask.ndim != 2:
        raise ValueError(f"expected a (B, N) boolean mask, got {tuple(mask.shape)} {mask.dtype}")
    kept = (~mask).sum(dim=1)
    if not bool((kept == kept[0]).all()):
        raise ValueError(f"every sample must keep the same number of tokens, got {kept.tolist()}")
    k = int(kept[0])
    return (~mask).to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :k].sort(dim=1).values


def indices_to_mask(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted kept indices (B, k) to the official boolean map (B, n), True = masked."""
    mask = torch.ones(idx.shape[0], n, dtype=torch.bool, device=idx.device)
    return mask.scatter_(1, idx, False)


def as_indices(mask: torch.Tensor) -> torch.Tensor:
    """Accept either an index tensor (returned as int64) or an official boolean map."""
    if mask.dtype == torch.bool:
        return mask_to_indices(mask)
    if mask.dtype not in (torch.int32, torch.int64) or mask.ndim != 2:
        raise ValueError(f"expected (B, k) integer indices or a (B, N) boolean map, got "
                         f"{tuple(mask.shape)} {mask.dtype}")
    return mask.long()
