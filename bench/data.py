"""Data-loader throughput: clips/s of each decoder on the same videos, in one run.

    python bench/data.py                                  # synthetic VP9 videos (generated once)
    python bench/data.py --videos /data/k400/val --max-videos 256 --size 224 --frames 16 --rate 4

Loaders: `pyav` (the CPU path: PyAV decode + torch transforms in DataLoader workers), `dali-cpu`
(DALI's CPU decoder, VP8/VP9/MJPEG only) and, on a CUDA machine, `dali-gpu` (NVDEC). All produce
the pre-training batch (B x K views, 3, T, S, S) with the same sampling; a clip is one view.
A folder is listed, indexed (`vmae2_fast.data.index`) and the files each loader can decode used.
`--dali-instances 1 2` times each DALI loader with 1 and with 2 independent pipelines (rows
`dali-cpu x2`, ...); the `--workers` CPU threads are split between the instances.
Writes bench/results/data-<machine>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_name, report_main  # noqa: E402

from vmae2_fast.data import VideoEntry, PretrainVideoDataset, ensure_synthetic_dataset, pretrain_collate
from vmae2_fast.data.dali.pipeline import DaliVideoLoader, dali_status
from vmae2_fast.data.index import DALI_CPU_CODECS, build_index
from vmae2_fast.data.sampler import EpochIndexed, GlobalBatchSampler

VIDEO_EXT = (".mp4", ".webm", ".mkv", ".avi", ".mov")


def list_folder(folder: str, out_dir: Path, max_videos: int) -> tuple:
    files = sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder)
                   for f in fs if f.lower().endswith(VIDEO_EXT))[:max_videos]
    if not files:
        raise SystemExit(f"no videos ({', '.join(VIDEO_EXT)}) under {folder}")
    out_dir.mkdir(parents=True, exist_ok=True)
    lst = out_dir / f"bench-{abs(hash(os.path.abspath(folder))) % 10**8}.txt"
    lst.write_text("".join(f"{f} 0 -1\n" for f in files))
    return str(lst), folder


def time_loader(make_epoch, clips_per_batch: int, epochs: int) -> dict:
    it = make_epoch(0)
    t0 = time.perf_counter()
    next(iter(it))                                       # start-up: workers / pipeline build
    startup = time.perf_counter() - t0
    n, t0 = 0, time.perf_counter()
    for e in range(1, epochs + 1):
        for batch in make_epoch(e):
            n += batch[0].shape[0]
    dt = time.perf_counter() - t0
    return {"clips": n, "seconds": round(dt, 3), "clips_per_s": round(n / dt, 2),
            "startup_s": round(startup, 3)}


def run(args) -> dict:
    work = Path(args.work_dir)
    if args.videos:
        lst, root = list_folder(args.videos, work, args.max_videos)
    else:
        ds = ensure_synthetic_dataset(str(work / "synthetic"), videos_per_class_train=args.synthetic // 6,
                                      videos_per_class_val=1, num_frames=args.synthetic_frames,
                                      size=args.synthetic_size, progress=False)
        lst, root = ds.pretrain_list, ds.root
    index = build_index(lst, root, progress=False, output=str(work / (Path(lst).name + ".index.json")))
    videos = index.videos
    common = dict(num_frames=args.frames, sampling_rate=args.rate, input_size=args.size)
    K, B = args.views, args.batch_size
    results = {}
    if "pyav" in args.loaders:
        items = [VideoEntry(v.path, 0, v.frames) for v in videos]
        ds = PretrainVideoDataset(items, num_sample=K, seed=0, **common)
        sampler = GlobalBatchSampler(len(ds), B, seed=0)

        def pyav_epoch(e):
            sampler.set_epoch(e)
            return torch.utils.data.DataLoader(EpochIndexed(ds), batch_sampler=sampler,
                                               num_workers=args.workers, collate_fn=pretrain_collate,
                                               prefetch_factor=4 if args.workers else None)
        results["pyav"] = time_loader(pyav_epoch, B * K, args.epochs)
        results["pyav"]["videos"] = len(items)
    ok, info = dali_status()
    for name, dev in (("dali-cpu", "cpu"), ("dali-gpu", "gpu")):
        if name not in args.loaders:
            continue
        if not ok or (dev == "gpu" and not torch.cuda.is_available()):
            results[name] = {"skipped": info if not ok else "no CUDA device"}
            continue
        usable = [v for v in videos if dev == "gpu" or v.codec in DALI_CPU_CODECS]
        for n in args.dali_instances:
            threads = max(1, args.workers // n)
            dl = DaliVideoLoader(usable, batch_size=B, num_views=K, seed=0, device=dev,
                                 device_id=0 if dev == "gpu" else None, num_threads=threads,
                                 decoder_instances=n, **common)
            key = name if n == 1 else f"{name} x{n}"
            results[key] = time_loader(dl, B * K, args.epochs)
            results[key].update(videos=len(usable), instances=n, threads_per_instance=threads)
    return {"machine": machine_name(), "cpu_cores": os.cpu_count(), "torch": torch.__version__,
            "dali": info if ok else None, "videos": args.videos or "synthetic",
            "codecs": sorted({v.codec for v in videos}),
            "resolution": sorted({f"{v.width}x{v.height}" for v in videos})[:5],
            "settings": {"batch_size": B, "views": K, "frames": args.frames, "rate": args.rate,
                         "size": args.size, "workers_or_threads": args.workers, "epochs": args.epochs,
                         "dali_instances": args.dali_instances},
            "results": results}


def write(report: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in report["machine"]).strip("-").lower()
    slug = "-".join(x for x in slug.split("-") if x)[:60]
    path = out_dir / f"data-{slug}"
    path.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    s = report["settings"]
    md = [f"# Data-loader throughput on {report['machine']}", "",
          f"Videos: {report['videos']} ({', '.join(report['codecs'])}, {', '.join(report['resolution'])}); "
          f"batch {s['batch_size']} videos x {s['views']} views of {s['frames']} frames (stride "
          f"{s['rate']}) at {s['size']}x{s['size']}; {s['workers_or_threads']} workers / DALI threads; "
          f"{s['epochs']} timed epochs after one warm-up batch. torch {report['torch']}, DALI "
          f"{report['dali']}.", "",
          "| loader | videos | DALI pipelines x threads | clips/s | start-up (s) |",
          "|---|---|---|---|---|"]
    for name, r in report["results"].items():
        if "skipped" in r:
            md.append(f"| {name} | - | - | not run: {r['skipped']} | - |")
        else:
            pipes = f"{r['instances']} x {r['threads_per_instance']}" if "instances" in r else "-"
            md.append(f"| {name} | {r['videos']} | {pipes} | {r['clips_per_s']:.1f} | "
                      f"{r['startup_s']:.2f} |")
    path.with_suffix(".md").write_text("\n".join(md) + "\n")
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", help="folder of videos (default: generated synthetic VP9 videos)")
    p.add_argument("--max-videos", type=int, default=512)
    p.add_argument("--synthetic", type=int, default=48, help="number of synthetic videos")
    p.add_argument("--synthetic-frames", type=int, default=64)
    p.add_argument("--synthetic-size", type=int, default=160)
    p.add_argument("--loaders", nargs="+", default=["pyav", "dali-cpu", "dali-gpu"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--rate", type=int, default=2)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                   help="PyAV DataLoader workers; DALI CPU threads, split between --dali-instances")
    p.add_argument("--dali-instances", type=int, nargs="+", default=[1],
                   help="time each DALI loader with each of these numbers of pipelines")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--work-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "vmae2_fast", "bench"))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    return report_main(p, run, write, argv)


if __name__ == "__main__":
    sys.exit(main())
