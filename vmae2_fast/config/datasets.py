"""The datasets the official code knows (`--data_set` of run_class_finetuning.py): what is
intrinsic to each, whatever the recipe trained on it.

`--dataset NAME` sets the class count, the flip and the temporal sampling of the classification
stages; the presets set it too, and a typed `--dataset` re-applies its own fields over a preset
(so `--preset k400_from_k710 --dataset k700` borrows the K400 recipe for Kinetics-700, a rule the
user asks for by typing it). `evaluate` reads the dataset from the checkpoint for its default test
views. The Kinetics subsets also say which rows of a Kinetics-710 head they reuse
(`label_710to{N}.json`, see `data.label_maps`).

List formats (paths relative to `--data-root`, space-separated; `data.lists` reads them all):
videos `path label` (VideoClsDataset: Kinetics, UCF101, HMDB51, Diving48, Moments in Time) or
frame folders `frame_dir total_frames label` (RawFrameClsDataset: the official SSv2 lists).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError


@dataclass(frozen=True)
class DatasetInfo:
    official_name: str              # run_class_finetuning.py --data_set
    num_classes: int
    flip: bool = True               # SSv2's classes are left/right: no flip
    sparse_sample: bool = False     # TSN-style segments (the official RawFrameClsDataset for SSv2)
    test_views: tuple = (5, 3)      # (temporal segments, spatial crops) of the official test
    list_format: str = "path label"
    k710_subset: Optional[int] = None   # Kinetics-N whose classes are rows of the K710 head


DATASETS: dict[str, DatasetInfo] = {
    "k400": DatasetInfo("Kinetics-400", 400, k710_subset=400),
    "k600": DatasetInfo("Kinetics-600", 600, k710_subset=600),
    "k700": DatasetInfo("Kinetics-700", 700, k710_subset=700),
    "k710": DatasetInfo("Kinetics-710", 710),
    "ssv2": DatasetInfo("SSV2", 174, flip=False, sparse_sample=True, test_views=(2, 3),
                        list_format="frame_dir total_frames label (or `path label` for the .webm files)"),
    "ucf101": DatasetInfo("UCF101", 101),
    "hmdb51": DatasetInfo("HMDB51", 51),
    "diving48": DatasetInfo("Diving48", 48),
    "mit": DatasetInfo("MIT", 339),          # Moments in Time
}


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ConfigError(f"unknown --dataset {name!r}; choose one of {', '.join(DATASETS)} (or leave "
                         "it empty for your own data with --num-classes)")
    return DATASETS[name]


def dataset_fields(name: str) -> dict:
    """The config fields a dataset fixes (class count, flip, sampling), with the name itself."""
    d = dataset_info(name)
    return dict(dataset=name, num_classes=d.num_classes, flip=d.flip, sparse_sample=d.sparse_sample)
