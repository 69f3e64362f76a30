"""A resumable, world-size-invariant batch sampler.

Every epoch draws one permutation of the dataset from (seed, epoch). Global batch s is the slice
[s*G, (s+1)*G) of it, and rank r takes the r-th contiguous part, so N processes with batch b see
exactly the samples that one process with batch N*b sees, and a run resumed at step s skips the
consumed batches instead of replaying them. Indices are yielded as (epoch, index) pairs so that
DataLoader workers (which hold copies of the dataset) know the epoch without being restarted.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..errors import DataError


class GlobalBatchSampler:
    def __init__(self, dataset_len: int, batch_size: int, world_size: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True):
        self.n = dataset_len
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = dataset_len // self.global_batch   # drop_last, as the official loader
        if self.steps_per_epoch == 0:
            raise DataError(f"the dataset has {dataset_len} videos, fewer than one global batch "
                             f"({batch_size} per process x {world_size} processes); lower --batch-size")
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        for step in range(self.start_step, self.steps_per_epoch):
            lo = step * self.global_batch + self.rank * self.batch_size
            yield [(self.epoch, int(i)) for i in order[lo: lo + self.batch_size]]


class EpochIndexed(Dataset):
    """Wraps a dataset with `set_epoch` so that items are addressed as (epoch, index)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]
