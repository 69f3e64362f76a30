"""Kinetics-710: the union of Kinetics-400/600/700, as VideoMAE V2 post-pre-trains on it.

    python -m vmae2_fast.data.tools.k710 --out lists/k710 \
        --k400 k400/train.csv k400/val.csv k400/labels.txt \
        --k600 k600/train.csv k600/val.csv k600/labels.txt \
        --k700 k700/train.csv k700/val.csv k700/labels.txt \
        [--prefix k400=kinetics400/ --prefix k600=kinetics600/ --prefix k700=kinetics700/] \
        [--merge k710_identical_label_merge.json] [--k710-order label_map_k710.txt]

Inputs per dataset: the official ``path label`` train and val lists and the label map (one class
name per line, line i = class i). Rules (docs/DATASET.md of the official code):

* class names are merged across datasets after normalisation (case, ``_`` vs space, quotes) and
  the optional ``--merge`` JSON ``{variant: canonical}`` (e.g. ``"dying hair": "dyeing hair"``);
  K710 ids list the K400 classes first, then the new K600 ones, then the new K700 ones, unless
  ``--k710-order`` gives the order (the released ``label_map_k710.txt``: needed for the released
  K710 checkpoints, whose head rows follow it; every merged class must be in it);
* videos are identified by their YouTube id (the first 11 characters of a Kinetics file name
  ``<id>_<start>_<end>.mp4``, else the file stem) and de-duplicated, K400 first;
* validation videos are removed from training.

Writes to ``--out``: ``train.csv`` and ``val.csv`` (``path label710``), ``label_map_k710.txt``
and ``classes.txt`` (the same names, what the classification stages read), and
``label_710to{400,600,700}.json`` (entry i = the K710 id of class i of that dataset, the official
layout, generated from the names by `data.label_maps`), and prints the counts. Fine-tuning a
K710 checkpoint on Kinetics finds these maps by itself (see `data.label_maps`).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Dict, List

from ...errors import DataError, MissingFileError, UserError
from ..label_maps import head_map_from_names, map_file_name, normalize_name
from ..lists import read_list

__all__ = ["youtube_id", "normalize_name", "build_k710"]

_YT = re.compile(r"^([A-Za-z0-9_-]{11})_\d+_\d+$")
DATASETS = ("k400", "k600", "k700")


def youtube_id(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    m = _YT.match(stem)
    return m.group(1) if m else stem


def _user_file(path: str) -> str:
    if not os.path.isfile(path):
        raise MissingFileError(f"file not found: {path}")
    return path


def _read_labels(path: str) -> List[str]:
    with open(_user_file(path), "r", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def build_k710(sources: Dict[str, tuple], out_dir: str, prefixes: Dict[str, str] | None = None,
               merge: Dict[str, str] | None = None, k710_order: List[str] | None = None) -> dict:
    """``sources``: ``{"k400": (train_list, val_list, label_map), ...}``; ``k710_order``: the K710
    class names in id order (default: first seen); returns the counts."""
    prefixes = prefixes or {}
    merge = {normalize_name(k): normalize_name(v) for k, v in (merge or {}).items()}
    canon = lambda n: merge.get(normalize_name(n), normalize_name(n))  # noqa: E731
    names: Dict[str, tuple] = {}
    k710: List[str] = []                   # display names, first spelling seen
    local: Dict[str, List[int]] = {}
    for ds in DATASETS:
        if ds not in sources:
            continue
        ids = []
        for name in _read_labels(sources[ds][2]):
            c = canon(name)
            if c not in names:
                names[c] = (len(k710),)
                k710.append(name.strip().strip('"\''))
            ids.append(names[c][0])
        if len(set(ids)) != len(ids):
            raise DataError(f"{sources[ds][2]}: two classes of {ds} map to the same K710 name")
        local[ds] = ids
    if k710_order is not None:          # renumber into the given order; the maps follow from names
        order_ids = head_map_from_names(k710_order, k710, merge)
        if len(set(order_ids)) != len(order_ids):
            raise DataError("two merged K710 classes fall on the same name of --k710-order")
        local = {ds: [order_ids[i] for i in ids] for ds, ids in local.items()}
        k710 = list(k710_order)
    splits = {"train": [], "val": []}
    conflicts = 0
    for split, col in (("val", 1), ("train", 0)):
        seen: Dict[str, int] = {}
        for ds in DATASETS:
            if ds not in sources:
                continue
            for e in read_list(sources[ds][col], kind="cls"):
                if e.label >= len(local[ds]):
                    raise DataError(f"{sources[ds][col]}: label {e.label} of {e.rel} is outside "
                                     f"the {len(local[ds])} classes of {sources[ds][2]}")
                yid, lab = youtube_id(e.rel), local[ds][e.label]
                if yid in seen:
                    conflicts += seen[yid] != lab
                    continue
                seen[yid] = lab
                splits[split].append((yid, prefixes.get(ds, "") + e.rel, lab))
    val_ids = {y for y, _, _ in splits["val"]}
    n_train_union = len(splits["train"])
    splits["train"] = [t for t in splits["train"] if t[0] not in val_ids]
    os.makedirs(out_dir, exist_ok=True)
    for split, rows in splits.items():
        with open(os.path.join(out_dir, f"{split}.csv"), "w", encoding="utf-8") as f:
            f.writelines(f"{p} {lab}\n" for _, p, lab in rows)
    for name in ("label_map_k710.txt", "classes.txt"):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            f.writelines(n + "\n" for n in k710)
    for ds in local:                    # generated from the names, as a fine-tuning run would
        names = _read_labels(sources[ds][2])
        with open(os.path.join(out_dir, map_file_name(int(ds[1:]))), "w", encoding="utf-8") as f:
            json.dump(head_map_from_names(k710, names, merge), f)
    return {"classes": len(k710), "train": len(splits["train"]), "val": len(splits["val"]),
            "train_removed_as_val": n_train_union - len(splits["train"]),
            "label_conflicts": conflicts}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vmae2_fast.data.tools.k710",
                                description="Build Kinetics-710 lists and label maps")
    for ds in DATASETS:
        p.add_argument(f"--{ds}", nargs=3, metavar=("TRAIN", "VAL", "LABELS"))
    p.add_argument("--out", required=True)
    p.add_argument("--prefix", action="append", default=[], metavar="DS=PREFIX",
                   help="prepend PREFIX to the paths of dataset DS (k400, k600, k700)")
    p.add_argument("--merge", help="JSON {variant class name: canonical name}")
    p.add_argument("--k710-order", help="class names in K710 id order, one per line (the released "
                                        "label_map_k710.txt, for the released K710 checkpoints)")
    a = p.parse_args(argv)
    sources = {ds: tuple(getattr(a, ds)) for ds in DATASETS if getattr(a, ds)}
    if not sources:
        p.error("give at least one of --k400, --k600, --k700")
    try:
        prefixes = dict(x.split("=", 1) for x in a.prefix)
        merge = json.load(open(_user_file(a.merge), encoding="utf-8")) if a.merge else None
        order = _read_labels(a.k710_order) if a.k710_order else None
        stats = build_k710(sources, a.out, prefixes, merge, order)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(", ".join(f"{k} {v}" for k, v in stats.items()) + f"; written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
