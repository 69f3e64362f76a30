"""Re-encode a dataset for fast decoding: every video of a list, in parallel, resumable.

    python -m vmae2_fast.data.tools.reencode LIST --data-root DIR --out-root DIR \\
        [--codec h264|vp9] [--short-side 320] [--gop 16] [--workers N]

Each listed video is transcoded by :func:`~vmae2_fast.data.tools.transcode.transcode` (H.264 or
VP9, 4:2:0, short side 320 without upscaling, a keyframe every 16 frames, the same frames at
constant rate, no audio) to ``OUT_ROOT/<its path>.mp4`` (``.webm`` for VP9). Then it writes:

* ``--out-list`` (default ``OUT_ROOT/<list file name>``): the input list in its own format, with
  the new paths and the frame counts written (where the format has a count column), without the
  videos that failed; blank lines are dropped;
* ``<out-list>.failed.jsonl``: one ``{"rel", "path", "reason"}`` line per video that failed
  (missing, corrupt, no video stream, no frames, truncated, encoder error);
* ``<out-list>.index.json``: the index of the new list (:mod:`vmae2_fast.data.index`), which DALI
  training needs.

Resuming: a file with its final name is complete (outputs are written under a hidden
``.partial`` name and renamed at the end), so a second run keeps every output that exists and
encodes the rest; a killed run's ``.partial`` leftovers are overwritten. ``OUT_ROOT`` records
the encoding settings (``.vmae2_reencode.json``) and a run with other settings is refused
rather than mixing two kinds of output. Frame-folder lists (``frame_dir total label``) are
refused: raw frames are not supported yet.
"""
from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ...errors import ConfigError, DataError, MissingFileError
from ..index import VideoIndex, build_index
from ..lists import PATH_COLUMNS, TOTAL_COLUMNS, is_int, VideoEntry, detect_kind, read_list
from .transcode import PRESETS, EncodeSettings, TranscodeError, transcode

__all__ = ["ReencodeResult", "reencode_list", "output_rel", "main", "SETTINGS_FILE"]

SETTINGS_FILE = ".vmae2_reencode.json"


@dataclass
class ReencodeResult:
    out_list: str
    failed_file: str
    encoded: int = 0          # videos transcoded by this run
    reused: int = 0           # complete outputs of an earlier run, kept
    frames: int = 0           # frames transcoded by this run
    seconds: float = 0.0
    failed: List[Dict] = field(default_factory=list)    # {"rel", "path", "reason"}
    index: Optional[VideoIndex] = None


def output_rel(entry: VideoEntry, data_root: str, ext: str) -> str:
    """The output's path relative to the new root: the list's path with the new extension. A path
    that leaves the data root (absolute, or with ``..``) is mirrored by its absolute path, so
    that it still lands inside the new root."""
    rel = entry.rel
    if os.path.isabs(rel) and data_root:
        rel = os.path.relpath(rel, data_root)
    rel = os.path.normpath(rel)
    if os.path.isabs(rel) or rel == ".." or rel.startswith(".." + os.sep):
        rel = os.path.abspath(entry.path).lstrip(os.sep)
    return os.path.splitext(rel)[0] + ext


# ------------------------------------------------------------------------------ the new list
def _records(list_file: str, kind: str):
    """The list's rows that :func:`read_list` turns into entries, in order, as lists of fields;
    with the CSV header (or None) and the positions of the path and frame-count fields."""
    if kind != "csv":
        with open(list_file, "r", encoding="utf-8") as f:
            rows = [line.split() for line in f if line.strip()]
        return None, rows, 0, (2 if kind == "pretrain" else None)
    with open(list_file, "r", encoding="utf-8", newline="") as f:
        rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    first = [c.strip().lower() for c in rows[0]]
    if any(is_int(c) for c in first):          # headerless: path,label or path,start,total
        return None, rows, 0, 2
    path_i = next(first.index(c) for c in PATH_COLUMNS if c in first)
    total_i = next((first.index(c) for c in TOTAL_COLUMNS if c in first), None)
    body = [r for r in rows[1:] if path_i < len(r) and r[path_i].strip()]
    return rows[0], body, path_i, total_i


def _write_list(list_file: str, kind: str, n_entries: int, outputs: List[Optional[tuple]],
                out_list: str) -> int:
    """Write the new list: the input's rows with the new path and frame count, failed rows left
    out. ``outputs[i]`` is ``(new_rel, frames)`` or None for entry ``i``. Returns the rows kept."""
    header, rows, path_i, total_i = _records(list_file, kind)
    if len(rows) != n_entries:
        raise RuntimeError(f"{list_file}: {len(rows)} rows but {n_entries} entries were read")
    kept = []
    for row, out in zip(rows, outputs):
        if out is None:
            continue
        row = list(row)
        row[path_i] = out[0]
        if total_i is not None and total_i < len(row):
            row[total_i] = str(out[1])
        kept.append(row)
    os.makedirs(os.path.dirname(os.path.abspath(out_list)), exist_ok=True)
    tmp = out_list + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        if kind == "csv":
            w = csv.writer(f, lineterminator="\n")
            if header is not None:
                w.writerow(header)
            w.writerows(kept)
        else:
            f.writelines(" ".join(r) + "\n" for r in kept)
    os.replace(tmp, out_list)
    return len(kept)


# ------------------------------------------------------------------------------- the run
def _finished(dst: str) -> Optional[int]:
    """Frame count of a complete output of an earlier run, or None if there is none. The rename
    makes any file with the final name complete, so this only reads the header (MP4 stores the
    count; WebM does not, and its packets are counted). An output that no longer opens is
    removed, to be redone."""
    if not os.path.isfile(dst):
        return None
    import av
    try:
        with av.open(dst) as c:
            s = c.streams.video[0]
            n = int(s.frames or 0) or sum(1 for p in c.demux(s) if p.size > 0)
    except (av.FFmpegError, OSError, ValueError, IndexError):
        n = 0
    if n <= 0:
        os.remove(dst)
        return None
    return n


def _encode_one(src: str, dst: str, settings: EncodeSettings, threads: int) -> dict:
    """One video, in a worker. Never raises for a bad video: the failure is returned with its
    reason, so that the run goes on."""
    try:
        info = transcode(src, dst, settings, threads)
    except TranscodeError as exc:
        return dict(status="failed", reason=str(exc))
    except Exception as exc:  # an unexpected error in one video must not stop a day-long run
        return dict(status="failed", reason=f"unexpected {type(exc).__name__}: {exc}")
    return dict(status="encoded", **info)


def _check_settings(out_root: str, settings: EncodeSettings) -> None:
    """Refuse to mix outputs of different settings in one root; record ours otherwise."""
    path = os.path.join(out_root, SETTINGS_FILE)
    mine = settings.as_dict()
    if os.path.isfile(path):
        with open(path, "r", encoding="utf-8") as f:
            theirs = json.load(f)
        if theirs != mine:
            diff = ", ".join(f"{k} {theirs.get(k)!r} (now {v!r})" for k, v in mine.items()
                             if theirs.get(k) != v)
            raise DataError(f"{out_root} holds videos re-encoded with other settings: {diff}; "
                             "pass the same settings to resume, or another --out-root")
        return
    os.makedirs(out_root, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(mine, f, indent=1, sort_keys=True)


def _plan(entries: List[VideoEntry], data_root: str, out_root: str, ext: str):
    """Map entries to outputs. Returns ``(jobs, job_of_entry, failed)``: unique ``(src, dst)``
    jobs, the job index of each entry (None if it failed here) and the failures found here."""
    jobs: List[tuple] = []
    job_of: Dict[str, int] = {}
    owner: Dict[str, str] = {}
    job_of_entry: List[Optional[int]] = []
    failed = []
    inputs = {os.path.realpath(e.path) for e in entries}
    for e in entries:
        if os.path.isdir(e.path):
            raise DataError(f"{e.rel} is a folder: frame-folder lists (frame_dir total label) are "
                             "not supported by the re-encoder yet; list video files")
        dst = os.path.join(out_root, output_rel(e, data_root, ext))
        src = os.path.realpath(e.path)
        if os.path.realpath(dst) in inputs:
            raise DataError(f"the output of {e.rel}, {dst}, is a listed input and would be "
                             "overwritten: choose an --out-root outside the data root")
        if owner.setdefault(dst, src) != src:
            failed.append({"rel": e.rel, "path": e.path,
                           "reason": f"its output name {dst} is taken by {owner[dst]}"})
            job_of_entry.append(None)
            continue
        if dst not in job_of:
            job_of[dst] = len(jobs)
            jobs.append((e.path, dst))
        job_of_entry.append(job_of[dst])
    return jobs, job_of_entry, failed


def _run_jobs(jobs, settings: EncodeSettings, workers: int, threads: Optional[int],
              progress: bool):
    """Keep the outputs an earlier run finished, transcode the others (in ``workers``
    processes, or here for one) with a progress bar; returns one result dict per job."""
    from tqdm import tqdm
    results: List[Optional[dict]] = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc="re-encoding", unit="video", dynamic_ncols=True,
               disable=None if progress else True)
    t0, frames = time.perf_counter(), 0

    def done(i, r):
        nonlocal frames
        results[i] = r
        frames += r["frames"] if r["status"] == "encoded" else 0
        bar.update(1)
        bar.set_postfix(frames_per_s=f"{frames / max(time.perf_counter() - t0, 1e-9):.0f}",
                        refresh=False)
    try:
        with ThreadPoolExecutor(8) as probes:        # file reads: threads are enough
            for i, n in enumerate(probes.map(lambda job: _finished(job[1]), jobs)):
                if n is not None:
                    done(i, dict(status="reused", frames=n))
        todo = [i for i, r in enumerate(results) if r is None]
        workers = min(workers, max(1, len(todo)))
        # codec threads per process: the cores the processes leave free (many files: one each)
        threads = max(1, (os.cpu_count() or 1) // workers) if threads is None else threads
        if workers == 1:
            for i in todo:
                done(i, _encode_one(*jobs[i], settings, threads))
        elif todo:
            # spawn: workers start clean (no copied threads or locks of the parent)
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = {pool.submit(_encode_one, *jobs[i], settings, threads): i for i in todo}
                try:
                    for fut in as_completed(futures):
                        done(futures[fut], fut.result())
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    finally:
        bar.close()
    return results


def reencode_list(list_file, data_root: str, out_root: str,
                  settings: EncodeSettings = EncodeSettings(), *, out_list: Optional[str] = None,
                  kind: str = "auto", workers: Optional[int] = None, threads: Optional[int] = None,
                  index: bool = True, progress: bool = True) -> ReencodeResult:
    """Re-encode every video of ``list_file`` into ``out_root`` and write the new list, the
    failure report and the index (see the module docstring). Raises ``ValueError`` /
    ``FileNotFoundError`` for bad input, before any video is touched."""
    list_file = os.fspath(list_file)
    if not os.path.isfile(list_file):
        raise MissingFileError(f"annotation list not found: {list_file}")
    if not out_root:
        raise ConfigError("--out-root is required")
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    data_root = os.fspath(data_root or "")
    out_root = os.path.abspath(out_root)
    if data_root and os.path.realpath(out_root) == os.path.realpath(data_root):
        raise ConfigError(f"--out-root is the data root ({data_root}): outputs would replace "
                         "inputs; choose another folder")
    kind = detect_kind(list_file) if kind == "auto" else kind
    if kind == "rawframes":
        raise DataError("frame-folder lists (frame_dir total label) are not supported by the "
                         "re-encoder yet; list video files")
    out_list = out_list or os.path.join(out_root, os.path.basename(list_file))
    if os.path.realpath(out_list) == os.path.realpath(list_file):
        raise ConfigError(f"--out-list {out_list} is the input list; choose another name")
    entries = read_list(list_file, data_root, kind)
    jobs, job_of_entry, failed = _plan(entries, data_root, out_root, settings.ext)
    _check_settings(out_root, settings)

    t0 = time.perf_counter()
    results = _run_jobs(jobs, settings, workers, threads, progress)
    res = ReencodeResult(out_list, out_list + ".failed.jsonl", failed=failed)
    res.seconds = time.perf_counter() - t0
    for r in results:
        res.encoded += r["status"] == "encoded"
        res.reused += r["status"] == "reused"
        res.frames += r["frames"] if r["status"] == "encoded" else 0
    outputs = []
    for e, j in zip(entries, job_of_entry):
        r = results[j] if j is not None else None
        if r is not None and r["status"] == "failed":
            res.failed.append({"rel": e.rel, "path": e.path, "reason": r["reason"]})
        ok = r is not None and r["status"] != "failed"
        outputs.append((os.path.relpath(jobs[j][1], out_root), r["frames"]) if ok else None)
    kept = _write_list(list_file, kind, len(entries), outputs, out_list)
    with open(res.failed_file, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(x) + "\n" for x in res.failed)
    if kept == 0:
        raise DataError(f"none of the {len(entries)} videos could be re-encoded; the reasons "
                         f"are in {res.failed_file}")
    if index:
        res.index = build_index(out_list, out_root, kind, workers=max(workers, 4),
                                progress=progress and sys.stderr.isatty())
    return res


def summarize(res: ReencodeResult) -> str:
    fps = res.frames / res.seconds if res.seconds > 0 else 0.0
    lines = [f"re-encoded {res.encoded} videos ({res.frames} frames in {res.seconds:.1f} s, "
             f"{fps:.0f} frames/s), kept {res.reused} finished earlier, {len(res.failed)} failed"]
    for x in res.failed[:20]:
        lines.append(f"  failed: {x['rel']}: {x['reason']}")
    if len(res.failed) > 20:
        lines.append(f"  ... and {len(res.failed) - 20} more")
    if res.failed:
        lines.append(f"failures (left out of the new list) are in {res.failed_file}")
    lines.append(f"new list: {res.out_list}")
    if res.index is not None:
        lines.append(f"index: {res.out_list}.index.json ({len(res.index.videos)} usable videos)")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vmae2_fast.data.tools.reencode",
        description="Transcode every video of a list for fast random access (H.264 or VP9, 4:2:0, "
                    "a keyframe every --gop frames, short side --short-side, same frames, no "
                    "audio) and write the new list and its index. Resumable: run it again to "
                    "finish an interrupted run.")
    p.add_argument("list_file", help="annotation list (any format vmae2_fast reads)")
    p.add_argument("--data-root", default="", help="folder the list's paths are relative to")
    p.add_argument("--out-root", required=True, help="folder for the re-encoded videos")
    p.add_argument("--out-list", default=None,
                   help="new list (default: OUT_ROOT/<list file name>); its index and the "
                        "failures go beside it")
    p.add_argument("--kind", default="auto", help="list format: auto, pretrain, cls or csv")
    p.add_argument("--codec", default="h264",
                   help="h264 (.mp4, decoded by NVDEC) or vp9 (.webm, also by DALI on the CPU)")
    p.add_argument("--short-side", type=int, default=320,
                   help="short side of the output, even; smaller videos keep their size")
    p.add_argument("--upscale", action="store_true",
                   help="also enlarge videos whose short side is below --short-side")
    p.add_argument("--gop", type=int, default=16, help="frames between keyframes (fixed)")
    p.add_argument("--crf", type=int, default=None,
                   help="constant quality, lower is better (default: 23 for h264, 32 for vp9)")
    p.add_argument("--preset", default="fast",
                   help=f"speed/size trade-off, x264's names ({', '.join(PRESETS)}); for vp9 "
                        "they map to libvpx deadline/cpu-used (ultrafast..veryfast: realtime "
                        "8..6; faster..veryslow: good 5..0)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    p.add_argument("--threads", type=int, default=None,
                   help="codec threads per process (default: CPU count / workers)")
    p.add_argument("--no-index", action="store_true", help="do not index the new list")
    p.add_argument("--no-progress", action="store_true")
    return p


def _main(a: argparse.Namespace) -> None:
    from ..lists import KINDS
    if a.kind not in KINDS:
        raise ConfigError(f"unknown list kind {a.kind!r}; use one of auto, pretrain, cls, csv")
    settings = EncodeSettings(codec=a.codec, short_side=a.short_side, upscale=a.upscale,
                              gop=a.gop, crf=a.crf, preset=a.preset)
    res = reencode_list(a.list_file, a.data_root, a.out_root, settings, out_list=a.out_list,
                        kind=a.kind, workers=a.workers, threads=a.threads,
                        index=not a.no_index, progress=not a.no_progress)
    print(summarize(res))


def main(argv=None) -> int:
    from ...cli import exit_code
    return exit_code(_main, _parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
