"""Which row of a Kinetics-710 head is each class of Kinetics-400/600/700: the official
``label_710to{N}.json`` files (entry i = the K710 id of class i), made from class names, never
copied by hand.

Two sources, in this order:
* a ``label_710to{N}.json`` already written by the K710 builder (`data.tools.k710`), in one of the
  folders the stage knows (the fine-tuning data, the K710 lists the checkpoint was trained on, the
  checkpoint's folder);
* generated here from the two class-name lists (the K710 checkpoint's ``class_names``, the
  fine-tuning folder's ``classes.txt``), matched after the builder's name normalisation and the
  optional merge table of variant spellings.

The released K710 checkpoints carry no class names: build the maps once with the K710 builder and
the released K710 order (``--k710-order label_map_k710.txt``), or pass ``--head-map``.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence

from ..errors import DataError

log = logging.getLogger("vmae2_fast")

__all__ = ["normalize_name", "head_map_from_names", "find_head_map", "kinetics_head_map", "map_file_name"]


def normalize_name(name: str) -> str:
    """Case, ``_`` for spaces, surrounding quotes and repeated spaces do not tell classes apart."""
    return " ".join(name.strip().strip('"\'').replace("_", " ").lower().split())


def map_file_name(subset: int) -> str:
    return f"label_710to{subset}.json"


def head_map_from_names(k710_names: Sequence[str], names: Sequence[str],
                        merge: Optional[Dict[str, str]] = None) -> List[int]:
    """Entry i: the index in ``k710_names`` of ``names[i]`` (normalised, through ``merge``
    ``{variant: canonical}`` on both sides). Raises ValueError naming the classes not found."""
    merge = {normalize_name(k): normalize_name(v) for k, v in (merge or {}).items()}

    def canon(n):
        return merge.get(normalize_name(n), normalize_name(n))
    ids: Dict[str, int] = {}
    for i, n in enumerate(k710_names):
        ids.setdefault(canon(n), i)
    missing = [n for n in names if canon(n) not in ids]
    if missing:
        raise DataError(f"{len(missing)} of {len(names)} classes are not K710 classes (first: "
                         f"{', '.join(missing[:5])}); give the variant spellings with --merge")
    return [ids[canon(n)] for n in names]


def find_head_map(subset: int, folders: Iterable[Optional[str]]) -> Optional[str]:
    """The first ``label_710to{subset}.json`` in ``folders`` (None entries skipped)."""
    for folder in folders:
        if folder:
            path = os.path.join(folder, map_file_name(subset))
            if os.path.isfile(path):
                return path
    return None


def kinetics_head_map(subset: int, folders: Iterable[Optional[str]], k710_names: Optional[Sequence[str]],
                      names: Optional[Sequence[str]], out_dir: str) -> str:
    """The map file for Kinetics-``subset``: found in ``folders``, else generated from the names
    and written to ``out_dir``; raises ValueError saying how to get one when neither works."""
    folders = list(folders)
    found = find_head_map(subset, folders)
    if found:
        log.info("K710 head rows for Kinetics-%d: %s", subset, found)
        return found
    if k710_names and names and len(k710_names) == 710:
        mapping = head_map_from_names(k710_names, names)
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, map_file_name(subset))
        with open(path, "w", encoding="utf-8") as f:
            json.dump(mapping, f)
        log.info("K710 head rows for Kinetics-%d generated from the class names: %s", subset, path)
        return path
    searched = ", ".join(f for f in folders if f) or "(no folder)"
    raise DataError(
        f"the checkpoint has a 710-class (K710) head and --dataset says Kinetics-{subset}: its rows "
        f"are reused through {map_file_name(subset)}, which is not in {searched} and cannot be "
        f"generated (the checkpoint or the data has no class names). Build it with `python -m "
        f"vmae2_fast.data.tools.k710 ... --k710-order label_map_k710.txt` (the released K710 order for "
        f"released checkpoints) and pass --head-map, or put classes.txt beside the lists")
