"""Data-loader throughput: clips/s and decoded frames/s of each decoder, per codec, per number of
workers and DALI pipelines, on the same videos, in one run.

    python bench/data.py --workers 1 2 --dali-instances 1 2  # synthetic 320x320 videos (made once)
    python bench/data.py --videos /data/k400/val --max-videos 256 --size 224 --frames 16 --rate 4
    python bench/data.py --codecs h264 --loaders dali-gpu --dali-instances 1 2 4 --workers 4 8

The source videos (synthetic, or a folder of yours) are re-encoded once per ``--codecs`` entry
with the re-encoder (`vmae2_fast.data.tools.reencode`: short side at most 320, a keyframe every
``--gop`` frames), so every codec has the same frames. Loaders, all producing the pre-training
batch (B x K views, 3, T, S, S) with the same sampling:

* ``pyav``: the CPU path, PyAV decode + torch crops in DataLoader workers (``--workers``);
* ``dali-cpu``: DALI's CPU decoder (VP8/VP9/MJPEG only: an H.264 row says it is not run);
* ``dali-gpu``: NVDEC, on a CUDA machine.

For DALI every ``--dali-instances`` N and ``--workers`` W give a row with N pipelines of
max(1, W // N) threads each. Per row: clips/s (one clip = one view), videos/s (one decode per
video), sampled frames/s (T per video: what the clip holds) and **decoded frames/s**: the frames
the decoder must decode to produce the clips, counted from the frame indices each video drew and
the keyframe positions of its file: from the keyframe at or before the first sampled frame to the
last (DALI and PyAV seek; PyAV also drops unwanted non-reference frames undecoded, so its count
is an upper bound: bench/decode.py counts what it decodes).
Writes bench/results/data-<machine>.jsonl (one record per row, written when it is measured),
.md and .png (decoded frames/s per row; render.py).
"""
from __future__ import annotations

import argparse
import bisect
import os
import sys
import time
from pathlib import Path

import av
import numpy as np
import torch

import harness
from harness import Records, add_out_flag, environment, result_stem

from vmae2_fast.data import ensure_synthetic_dataset
from vmae2_fast.data.clip_sampling import pretrain_frame_indices
from vmae2_fast.data.dali.pipeline import DaliVideoLoader, dali_status
from vmae2_fast.data.index import dali_cannot_decode
from vmae2_fast.data.lists import VideoEntry
from vmae2_fast.data.loaders import PyAVLoader
from vmae2_fast.data.pyav.pretrain import PretrainVideoDataset, pretrain_collate
from vmae2_fast.data.tools.reencode import reencode_list
from vmae2_fast.data.sampler import GlobalBatchSampler
from vmae2_fast.data.tools.transcode import EncodeSettings
from vmae2_fast.errors import MissingFileError

VIDEO_EXT = (".mp4", ".webm", ".mkv", ".avi", ".mov")
SEED = 0


def list_folder(folder: str, out_dir: Path, max_videos: int) -> tuple:
    files = sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder)
                   for f in fs if f.lower().endswith(VIDEO_EXT))[:max_videos]
    if not files:
        raise MissingFileError(f"no videos ({', '.join(VIDEO_EXT)}) under {folder}")
    out_dir.mkdir(parents=True, exist_ok=True)
    lst = out_dir / f"bench-{abs(hash(os.path.abspath(folder))) % 10**8}.txt"
    lst.write_text("".join(f"{f} 0 -1\n" for f in files))
    return str(lst), folder


def keyframes(path: str) -> list:
    """Decode-order numbers of the keyframes of the first video stream (demuxed, not decoded)."""
    with av.open(path) as c:
        return [n for n, p in enumerate(q for q in c.demux(video=0) if q.size) if p.is_keyframe]


def decoded_frames(videos, keys: dict, seed: int, epoch: int, steps: int, batch: int, T: int,
                   rate: int, seeks: bool) -> tuple:
    """(videos decoded, frames they hold, frames the decoder decodes) in ``steps`` batches of
    ``epoch``, from the same draws the loaders make (`pretrain_frame_indices`)."""
    sampler = GlobalBatchSampler(len(videos), batch, seed=seed)
    sampler.set_epoch(epoch)
    n = sampled = decoded = 0
    for b in list(sampler)[:steps]:
        for _, i in b:
            v = videos[i]
            idx = pretrain_frame_indices(v.frames, T, rate, np.random.default_rng([seed, epoch, i, 0]))
            first = 0
            if seeks:
                k = keys[v.path]
                first = k[max(0, bisect.bisect_right(k, int(idx.min())) - 1)] if k else 0
            n, sampled, decoded = n + 1, sampled + len(idx), decoded + int(idx.max()) - first + 1
    return n, sampled, decoded


def time_loader(loader, videos, keys, args, seeks: bool) -> dict:
    """A warm-up epoch (its first batch timed: the start-up of workers, pipelines), then
    ``--epochs`` whole epochs."""
    t0 = time.perf_counter()
    it = iter(loader(0))
    next(it)
    startup = time.perf_counter() - t0
    for _ in it:
        pass
    clips, t0 = 0, time.perf_counter()
    for e in range(1, args.epochs + 1):
        for batch in loader(e):
            clips += batch.video.shape[0]
    dt = time.perf_counter() - t0
    steps = loader.steps_per_epoch
    counts = [decoded_frames(videos, keys, SEED, e, steps, args.batch_size, args.frames, args.rate, seeks)
              for e in range(1, args.epochs + 1)]
    n, sampled, decoded = (sum(c[k] for c in counts) for k in range(3))
    return {"clips": clips, "seconds": round(dt, 6), "clips_per_s": round(clips / dt, 2),
            "videos_per_s": round(n / dt, 2), "sampled_frames_per_s": round(sampled / dt, 1),
            "decoded_frames_per_s": round(decoded / dt, 1),
            "decoded_per_video": round(decoded / max(n, 1), 1), "startup_s": round(startup, 3)}


def sources(args, work: Path) -> tuple:
    if args.videos:
        return list_folder(args.videos, work, args.max_videos)
    folder = work / f"synthetic-{args.synthetic}x{args.synthetic_frames}x{args.synthetic_size}"
    ds = ensure_synthetic_dataset(str(folder), videos_per_class_train=args.synthetic // 6,
                                  videos_per_class_val=1, num_frames=args.synthetic_frames,
                                  size=args.synthetic_size, progress=False)
    return ds.pretrain_list, ds.root


def pyav_rows(videos, keys, args, device):
    """One row per --workers value, each yielded when it is measured."""
    common = dict(num_frames=args.frames, sampling_rate=args.rate, input_size=args.size)
    ds = PretrainVideoDataset([VideoEntry(v.path, 0, v.frames) for v in videos], num_sample=args.views,
                              seed=SEED, **common)
    for w in args.workers:
        cfg = argparse.Namespace(batch_size=args.batch_size, seed=SEED, num_workers=w)
        loader = PyAVLoader(ds, pretrain_collate, cfg, argparse.Namespace(world_size=1, rank=0), device)
        yield dict(time_loader(loader, videos, keys, args, seeks=True), name=f"pyav, {w} worker{'s' * (w != 1)}",
                   loader="pyav", workers=w)


def dali_rows(name: str, dev: str, videos, keys, args, device):
    """One row per (pipelines, threads) of --dali-instances x --workers, each yielded when it is
    measured; one `skipped` row when DALI cannot run here."""
    ok, info = dali_status()
    if not ok or (dev == "gpu" and not torch.cuda.is_available()):
        yield {"name": name, "loader": name, "skipped": info if not ok else "no CUDA device"}
        return
    refused = {dali_cannot_decode(v, dev) for v in videos} - {None}
    if refused:
        yield {"name": name, "loader": name, "skipped": f"DALI on the {dev} cannot decode them: "
                                                        f"{', '.join(sorted(refused))}"}
        return
    seen = set()
    for n in args.dali_instances:
        for w in args.workers:
            threads = max(1, w // n)
            if (n, threads) in seen:
                continue
            seen.add((n, threads))
            dl = DaliVideoLoader(videos, batch_size=args.batch_size, num_views=args.views, seed=SEED,
                                 device=dev, device_id=0 if dev == "gpu" else None, num_threads=threads,
                                 decoder_instances=n, num_frames=args.frames, sampling_rate=args.rate,
                                 input_size=args.size, target_device=device if dev == "gpu" else None)
            yield dict(time_loader(dl, videos, keys, args, seeks=True),
                       name=f"{name}, {n} pipeline{'s' * (n != 1)} x {threads} thread{'s' * (threads != 1)}",
                       loader=name, instances=n, threads_per_instance=threads)


def run(args):
    work = Path(args.work_dir)
    lst, root = sources(args, work)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = environment(device)
    ok, info = dali_status()
    header = {**env, "dali": info if ok else None, "source": args.videos or "synthetic", "pyav_seeks": True,
              "settings": {"batch_size": args.batch_size, "views": args.views, "frames": args.frames,
                           "rate": args.rate, "size": args.size, "workers": args.workers,
                           "epochs": args.epochs, "dali_instances": args.dali_instances, "gop": args.gop}}
    with Records(result_stem(args.out, "data", env["machine"]), "data", header) as records:
        for codec in args.codecs:
            out_root = work / f"reencoded-{codec}-gop{args.gop}-{abs(hash((lst, root))) % 10**8}"
            res = reencode_list(lst, root, str(out_root), EncodeSettings(codec=codec, gop=args.gop),
                                workers=os.cpu_count() or 1, progress=False)
            videos = res.index.videos
            keys = {v.path: keyframes(v.path) for v in videos}
            records.add({"codec": codec, "kind": "copies", "copies": {
                "videos": len(videos), "failed": len(res.failed),
                "resolution": sorted({f"{v.width}x{v.height}" for v in videos})[:4],
                "frames_per_video": round(float(np.mean([v.frames for v in videos])), 1),
                "keyframe_interval": round(float(np.mean([np.diff(k).mean() for k in keys.values()
                                                          if len(k) > 1] or [0])), 1)}})
            measured = []
            if "pyav" in args.loaders:
                measured.append(pyav_rows(videos, keys, args, device))
            measured += [dali_rows(name, dev, videos, keys, args, device)
                         for name, dev in (("dali-cpu", "cpu"), ("dali-gpu", "gpu")) if name in args.loaders]
            for rows in measured:
                for r in rows:
                    records.add({"codec": codec, "kind": "loader", **r})
    return records.path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", help="folder of videos (default: generated synthetic videos)")
    p.add_argument("--max-videos", type=int, default=512)
    p.add_argument("--synthetic", type=int, default=48, help="number of synthetic videos")
    p.add_argument("--synthetic-frames", type=int, default=96)
    p.add_argument("--synthetic-size", type=int, default=320)
    p.add_argument("--codecs", nargs="+", default=["vp9", "h264"], choices=["vp9", "h264"])
    p.add_argument("--gop", type=int, default=16, help="keyframe interval of the re-encoded copies")
    p.add_argument("--loaders", nargs="+", default=["pyav", "dali-cpu", "dali-gpu"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--rate", type=int, default=4)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--workers", type=int, nargs="+", default=[os.cpu_count() or 2],
                   help="PyAV DataLoader workers; DALI threads, split between --dali-instances")
    p.add_argument("--dali-instances", type=int, nargs="+", default=[1],
                   help="time each DALI loader with each of these numbers of pipelines")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--work-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "vmae2_fast", "bench"))
    add_out_flag(p)
    return harness.main(p, run, argv)


if __name__ == "__main__":
    sys.exit(main())
