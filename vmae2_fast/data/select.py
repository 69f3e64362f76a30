"""Choosing the decoder and connecting lists, the index and the DALI loader to the CLIs."""
from __future__ import annotations

import logging
import os
from typing import List, Optional

import torch

from .index import IndexedVideo, VideoIndex, build_index, index_path, load_index, rebuild_hint
from .lists import VideoEntry

__all__ = ["choose_decoder", "apply_index", "pretrain_dali_loader", "DECODERS"]

log = logging.getLogger("vmae2_fast")
DECODERS = ("auto", "dali", "pyav")


def choose_decoder(requested: str, device: torch.device, log_choice: bool = True) -> str:
    """``auto``: DALI when training on a GPU and DALI imports, PyAV otherwise; logs the choice."""
    from .dali_pipeline import dali_status
    if requested not in DECODERS:
        raise ValueError(f"--decoder must be one of {', '.join(DECODERS)}, got {requested!r}")
    ok, info = dali_status()
    if requested == "dali":
        if not ok:
            raise ValueError(f"--decoder dali: {info}; install it with "
                             f"`pip install nvidia-dali-cuda130` or use --decoder pyav")
        choice, why = "dali", f"requested (DALI {info}, decoding on the {_dali_dev(device)})"
    elif requested == "pyav":
        choice, why = "pyav", "requested"
    elif device.type != "cuda":
        # DALI's CPU decoder handles only VP8/VP9/MJPEG (most datasets are H.264), and on a CPU
        # run the decoder competes with the model for the same cores anyway.
        choice, why = "pyav", ("auto: training on the CPU, where DALI's CPU decoder reads only "
                               "VP8/VP9/MJPEG; use --decoder dali for such files")
    elif not ok:
        choice, why = "pyav", f"auto: {info}"
    else:
        choice, why = "dali", f"auto: training on a GPU with DALI {info} (GPU decoding)"
    if log_choice:
        log.info("video decoder: %s (%s)", choice, why)
    return choice


def _dali_dev(device: torch.device) -> str:
    return "gpu" if device.type == "cuda" else "cpu"


def apply_index(items: List[VideoEntry], list_file: str, data_root: str, *, required: bool,
                build: bool = False) -> Optional[VideoIndex]:
    """Load the list's index if there is one (a stale index raises with the rebuild command).

    ``required``: a missing index is an error naming the command that builds it; ``build``:
    build a missing or stale index instead (used for the embedded synthetic dataset). Returns
    None when there is no index and none is required."""
    if build:
        try:
            return load_index(list_file, data_root)
        except (FileNotFoundError, ValueError):
            log.info("indexing %s", list_file)
            return build_index(list_file, data_root, progress=False)
    if not os.path.isfile(index_path(list_file)):
        if required:
            raise FileNotFoundError(
                f"--decoder dali needs the frame counts of every video: build the index with "
                f"`{rebuild_hint(list_file, data_root)}`")
        return None
    return load_index(list_file, data_root)


def index_items(index: VideoIndex) -> List[VideoEntry]:
    return [VideoEntry(v.path, v.start, v.frames) for v in index.videos]


def pretrain_dali_loader(videos: List[IndexedVideo], cfg, dist, device: torch.device):
    from .dali_pipeline import DaliVideoLoader
    return DaliVideoLoader(
        videos, mode="pretrain", batch_size=cfg.batch_size, num_frames=cfg.num_frames,
        sampling_rate=cfg.sampling_rate, input_size=cfg.input_size, num_views=cfg.num_sample,
        seed=cfg.seed, world_size=dist.world_size, rank=dist.rank, device=_dali_dev(device),
        device_id=device.index if device.type == "cuda" else None, target_device=device,
        num_threads=max(1, min(cfg.num_workers, os.cpu_count() or 1)),
        decoder_instances=getattr(cfg, "dali_instances", 1))
