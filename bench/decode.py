"""Video decoding per worker, side by side: the official loader, ours, and the decoders a user could
swap in, on the same Kinetics-like files, item by item in one process.

    python bench/decode.py                                  # 24 videos, 4 views of 16 x 4 frames, 224
    python bench/decode.py --videos 8 --rounds 1 --official-repo ~/VideoMAEv2

What one DataLoader worker does for one pre-training item (one video -> ``--views`` clips), timed
in this process, for each row:

* ``official``: the official pre-training dataset, built as its ``build_pretraining_dataset``
  builds it (``HybridVideoMAE`` + ``DataAugmentationForVideoMAEv2``: decord ``get_batch``, PIL
  multi-scale crops, ``ToTorchFormatTensor`` and ``GroupNormalize`` to float, tube and
  running-cell masks), read from a checkout of OpenGVLab/VideoMAEv2 (``--official-repo``);
* ``ours, PyAV``: `PretrainVideoDataset` (seeking PyAV decode, uint8 crops) plus the
  normalisation a CPU run does in its main process (`pixels.normalize_on_device`); the same
  without the normalisation;
* ``ours, decord`` / ``ours, torchcodec``: the same dataset and normalisation with the frames
  decoded by decord (as the official loader calls it) or torchcodec (``seek_mode="exact"``), for
  whichever of the two imports here;
* ``ours before seeking``: the same dataset with a PyAV decode from frame 0 and a broadcast
  ``addcmul`` normalisation into a fresh tensor: the baseline issue 21 measured.

The files: ``--videos`` camera-like clips (`vmae2_fast.testing.natural_video`: 1/f-noise scenes,
camera pan, moving textured objects, sensor grain; a third of them with a cut) of 10 s at 30 fps
(``--seconds``), short side 320 (``--short-side``), encoded with x264's defaults (keyframes every
250 frames and at scene cuts, B-frames) as a download would be; and the same files through our
re-encoder (`vmae2_fast.data.tools.reencode`, GOP 16). Made once under ``--work-dir``.

Per row: clips/s (one clip = one view; items timed one at a time, rows interleaved item by item
so that the machine's load hits all alike), frames decoded per video (counted by our decoder;
for decord modelled from its seek rule on the file's keyframes; for torchcodec modelled from its
rule, which is ours), and exactness: the frames each decoder returns for a clip compared with a
plain decode of the whole file at those indices. The records (`harness.Records`, each row written
when measured) go to ``--out`` as ``decode-<machine>.jsonl``; `render.py` makes the Markdown.
"""
from __future__ import annotations

import argparse
import bisect
import contextlib
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vmae2_fast.data.clip_sampling import pretrain_frame_indices
from vmae2_fast.data.lists import VideoEntry
from vmae2_fast.data.pixels import normalize_on_device
from vmae2_fast.data.pyav import frames as pyav_frames
from vmae2_fast.data.pyav.pretrain import PretrainVideoDataset
from vmae2_fast.data.pyav.video_io import DecodeStats, decode_frames
from vmae2_fast.testing.natural_video import NaturalVideo, write_natural_video

from harness import Records, add_out_flag, environment, main as harness_main, result_stem
from official_data import OfficialLoader, find_official, importable

SEED = 0
BENCH = "decode"


# ------------------------------------------------------------------------------------------ files

def make_files(work: Path, n: int, seconds: float = 10, short: int = 320, fps: int = 30) -> list:
    """``n`` camera-like H.264 files with x264's defaults (made once; kept under ``work``)."""
    folder = work / f"kinetics-like-{n}x{seconds}s-{short}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    frames = int(round(fps * seconds))
    paths = []
    for k in range(n):
        width = 2 * round((16 / 9 if k % 4 else 4 / 3) * short / 2)    # 16:9, one in four 4:3
        cut = int(rng.integers(frames // 5, frames - frames // 5)) if k % 3 == 2 else None
        path = folder / f"clip_{k:03d}.mp4"
        if not path.exists():
            print(f"[decode] making {path.name} ({k + 1}/{n})", file=sys.stderr, flush=True)
            write_natural_video(str(path), NaturalVideo(width, short, frames, fps, seed=1000 + k, cut_at=cut))
        paths.append(str(path))
    return paths


def reencoded(paths: list, work: Path, gop: int) -> list:
    """The same files through our re-encoder (its defaults, keyframes every ``gop`` frames)."""
    from vmae2_fast.data.tools.reencode import reencode_list
    from vmae2_fast.data.tools.transcode import EncodeSettings
    root = Path(paths[0]).parent
    lst = work / f"{root.name}.txt"
    lst.write_text("".join(f"{Path(p).name} 0 -1\n" for p in paths))
    out = work / f"{root.name}-reencoded-gop{gop}"
    res = reencode_list(str(lst), str(root), str(out), EncodeSettings(gop=gop), index=False, progress=False)
    if res.failed:
        raise RuntimeError(f"the re-encoder failed on {res.failed}")
    return [str(out / Path(p).name) for p in paths]


def describe(paths: list) -> dict:
    """Size, rate, keyframe interval and B-frame share of the files (demuxed, and one decode)."""
    import av
    kbps, keys, bshare, frames = [], [], [], []
    for p in paths:
        with av.open(p) as c:
            s = c.streams.video[0]
            pk = [q for q in c.demux(s) if q.size]
            w, h = s.codec_context.width, s.codec_context.height
            seconds = len(pk) / float(s.average_rate)
        with av.open(p) as c:
            types_ = [int(f.pict_type) for f in c.decode(video=0)]
        frames.append(len(pk))
        kbps.append(os.path.getsize(p) * 8 / seconds / 1000)
        keys.append(sum(q.is_keyframe for q in pk))
        bshare.append(types_.count(int(av.video.frame.PictureType.B)) / len(types_))
    return {"videos": len(paths), "size": f"{w}x{h} (last)", "frames": round(float(np.mean(frames)), 1),
            "kbps": round(float(np.mean(kbps))), "keyframes_per_video": round(float(np.mean(keys)), 2),
            "b_frames": round(float(np.mean(bshare)), 3)}


def keyframe_table(path: str) -> tuple:
    """(the frame each packet holds, in decode order; the keyframes' decode positions), from the
    demuxed timestamps: what the decoded-frame models read."""
    import av
    with av.open(path) as c:
        pk = [(q.pts, q.is_keyframe) for q in c.demux(video=0) if q.size]
    rank = {p: i for i, p in enumerate(sorted(p for p, _ in pk))}
    frame_of = [rank[p] for p, _ in pk]
    keys = [j for j, (_, k) in enumerate(pk) if k]
    return frame_of, keys


# ------------------------------------------------------------------------- decoded-frame models

def decord_decoded(keys: list, indices) -> int:
    """Frames decord decodes for ``get_batch(indices)`` after opening: its ``SeekAccurate`` rule
    (dmlc/decord src/video/video_reader.cc): a frame in the current keyframe's span ahead of the
    position is reached by decoding forward; any other is reached by seeking to its keyframe
    (decord's keyframe list holds decode positions, which it compares with frame numbers)."""
    def key_of(i):
        return keys[max(bisect.bisect_right(keys, i) - 1, 0)]
    cur, n = 0, 0
    for pos in dict.fromkeys(int(i) for i in indices):       # repeats are copied, not decoded
        if pos != cur:
            if key_of(pos) != key_of(cur) or pos < cur:
                n += pos - key_of(pos)                       # from the keyframe to the frame before
            else:
                n += pos - cur
        n += 1
        cur = pos + 1
    return n


def restart_rule_decoded(frame_of: list, keys: list, indices) -> int:
    """Packets decoded by the rule `video_io.decode_frames` follows (and torchcodec's: seek when
    the next frame's keyframe lies past the decoder's position), counting each packet fed up to
    the one holding the frame (the decoder's reorder delay adds a few more in practice)."""
    pos_of = {f: j for j, f in enumerate(frame_of)}
    key_frames = sorted((frame_of[j], j) for j in keys)
    fed, n = -1, 0
    for w in sorted(set(int(i) for i in indices)):
        k = bisect.bisect_right([f for f, _ in key_frames], w) - 1
        kpos = key_frames[max(k, 0)][1]
        if kpos > fed:
            fed = kpos
        end = pos_of[w] + 1
        if end > fed:
            n, fed = n + end - fed, end
    return n


# ---------------------------------------------------------------------------------- the decoders

def decord_frames(path: str, indices) -> np.ndarray:
    """The frames as the official loader reads them: decord, one thread, ``get_batch``."""
    from decord import VideoReader, cpu
    return VideoReader(path, num_threads=1, ctx=cpu(0)).get_batch(list(indices)).asnumpy()


def torchcodec_frames(path: str, indices) -> np.ndarray:
    from torchcodec.decoders import VideoDecoder
    dec = VideoDecoder(path, seek_mode="exact", num_ffmpeg_threads=1, dimension_order="NHWC")
    return dec.get_frames_at([int(i) for i in indices]).data.numpy()


def from_frame_0(path: str, indices) -> np.ndarray:
    """The baseline row's decode: PyAV, every frame from frame 0 to the last wanted one, each
    wanted frame converted once (what a decoder that never seeks costs)."""
    import av
    wanted, last, rgb = set(int(i) for i in indices), int(max(indices)), {}
    with av.open(path) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        for i, f in enumerate(c.decode(s)):
            if i in wanted:
                rgb[i] = f.to_ndarray(format="rgb24")
            if i >= last:
                break
    return np.stack([rgb[int(i)] for i in indices])


def addcmul_normalise(video: torch.Tensor) -> torch.Tensor:
    """The baseline row's normalisation: one broadcast ``addcmul`` from uint8 into a fresh
    ``torch.empty`` (the two costs `pixels.normalize_on_device` avoids on the CPU)."""
    from vmae2_fast.data.pixels import norm_affine
    scale, bias = norm_affine(video.device)
    return torch.addcmul(bias, video, scale, out=torch.empty(video.shape))


# ------------------------------------------------------------------------------------- the rows

class Ours:
    """Our pre-training dataset, its frames decoded by ``decoder`` (PyAV unless given), with the
    CPU normalisation of its uint8 views or without."""

    def __init__(self, paths: list, args, decoder=None, normalise=normalize_on_device):
        self.ds = PretrainVideoDataset([VideoEntry(p, 0, -1) for p in paths], num_frames=args.frames,
                                       sampling_rate=args.rate, input_size=args.size,
                                       num_sample=args.views, seed=SEED)
        self.decoder, self.normalise = decoder, normalise
        self.decoded = []       # our decoder's count, per item

    @contextlib.contextmanager
    def _decoder(self):
        real = pyav_frames.decode_frames
        if self.decoder is None:
            def counted(path, indices, **kw):
                st = DecodeStats()
                out = real(path, indices, stats=st, **kw)
                self.decoded.append(st.decoded)
                return out
            pyav_frames.decode_frames = counted
        else:
            pyav_frames.decode_frames = lambda path, indices, **kw: self.decoder(path, indices)
        try:
            yield
        finally:
            pyav_frames.decode_frames = real

    def item(self, i: int) -> int:
        self.ds._counted.clear()        # every item counts its video's frames, as decord's len() does
        with self._decoder():
            clips, skipped = self.ds[i]
        if clips is None:
            raise RuntimeError(f"unreadable: {skipped}")
        if self.normalise is not None:
            self.normalise(clips)
        return clips.shape[0]


def rows_for(paths: list, args, official_repo, work: Path, tag: str) -> dict:
    """{name: loader or the reason it does not run}."""
    rows = {}
    repo, why = official_repo
    if repo is not None:
        try:
            rows["official (decord + PIL)"] = OfficialLoader(repo, paths, args, work / f"official-{tag}.txt")
        except Exception as exc:  # noqa: BLE001 - an unexpected checkout: report, run the rest
            rows["official (decord + PIL)"] = f"the official code did not load: {type(exc).__name__}: {exc}"
    else:
        rows["official (decord + PIL)"] = why
    rows["ours, PyAV"] = Ours(paths, args)
    rows["ours, PyAV, without the normalisation"] = Ours(paths, args, normalise=None)
    rows["ours before seeking (PyAV from frame 0, addcmul normalisation)"] = Ours(
        paths, args, decoder=from_frame_0, normalise=addcmul_normalise)
    for name, module, fn in (("decord", "decord", decord_frames), ("torchcodec", "torchcodec.decoders",
                                                                   torchcodec_frames)):
        why = importable(module)
        rows[f"ours, {name}"] = Ours(paths, args, decoder=fn) if why is None else f"{module} does not import: {why}"
    return rows


def exactness(paths: list, args, decoders: dict, n_videos: int) -> dict:
    """For each decoder, on the first ``n_videos`` files, three clips each: how many clips come
    back with every frame nearest to the plain decode's frame at its index (among the frames
    0..n-1), and the largest pixel difference from those frames."""
    import av
    out = {name: {"clips": 0, "right_frames": 0, "max_abs_diff": 0} for name in decoders}
    for p in paths[:n_videos]:
        with av.open(p) as c:
            full = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.int16)
        for k in range(3):
            idx = pretrain_frame_indices(len(full), args.frames, args.rate, np.random.default_rng([SEED, k]))
            for name, fn in decoders.items():
                got = fn(p, idx).astype(np.int16)
                dist = np.stack([np.abs(got - full[np.clip(idx + d, 0, len(full) - 1)]).mean((1, 2, 3))
                                 for d in (-2, -1, 0, 1, 2)])
                r = out[name]
                r["clips"] += 1
                r["right_frames"] += int((dist[2] <= dist.min(0)).all())     # ties: clipped at the ends
                r["max_abs_diff"] = max(r["max_abs_diff"], int(np.abs(got - full[idx]).max()))
    return out


def time_rows(rows: dict, n: int, rounds: int) -> dict:
    """Seconds and clips of each row's items: one warm-up item per row, then ``rounds`` passes
    over the ``n`` videos, the rows' order rotating from one video to the next."""
    names = [k for k, v in rows.items() if not isinstance(v, str)]
    for name in names:
        rows[name].item(0)
    for name in names:
        if isinstance(rows[name], Ours):
            rows[name].decoded.clear()
        elif isinstance(rows[name], OfficialLoader):
            rows[name].batches.clear()
    wall, cpu = {k: [] for k in names}, {k: [] for k in names}
    clips = dict.fromkeys(names, 0)
    for r in range(rounds):
        for i in range(n):
            random.seed(SEED + r * n + i)           # the official dataset draws from the global generators
            np.random.seed(SEED + r * n + i)
            k = (r * n + i) % len(names)
            for name in names[k:] + names[:k]:
                if isinstance(rows[name], Ours):
                    rows[name].ds.set_epoch(r)
                t0, c0 = time.perf_counter(), time.process_time()
                clips[name] += rows[name].item(i)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    return {k: (wall[k], cpu[k], clips[k]) for k in names}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for dist in ("av", "decord", "torchcodec", "opencv-python-headless", "torchvision"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    import av
    out["ffmpeg (PyAV)"] = ".".join(map(str, av.library_versions["libavcodec"]))
    return out


# -------------------------------------------------------------------------------------- the run

FILE_SETS = (("as downloaded (x264 defaults, GOP 250 + scene cuts)", "gop250"),
             ("re-encoded (our re-encoder, GOP 16)", "gop16"))


def run(args) -> Path:
    torch.set_num_threads(1)        # one worker's process: decoding and crops run on one core
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    downloaded = make_files(work, args.videos, args.seconds, args.short_side)
    sets = {"gop250": downloaded, "gop16": reencoded(downloaded, work, 16)}
    official = find_official(args.official_repo)
    env = environment("cpu")
    header = {**env, "versions": versions(),
              "settings": {"videos": args.videos, "views": args.views, "frames": args.frames,
                           "rate": args.rate, "size": args.size, "rounds": args.rounds, "threads": 1,
                           "seconds": args.seconds, "short_side": args.short_side},
              "official_repo": str(official[0]) if official[0] else None,
              "files": {tag: {"title": title, **describe(sets[tag])} for title, tag in FILE_SETS}}
    with Records(result_stem(args.out, BENCH, env["machine"]), BENCH, header) as rec:
        for title, tag in FILE_SETS:
            for row in measure(sets[tag], tag, args, official, work):
                rec.add(row)
    return rec.path


def measure(paths: list, tag: str, args, official, work: Path):
    """The rows of one kind of file, each yielded when it is measured."""
    tables = {p: keyframe_table(p) for p in paths}
    rows = rows_for(paths, args, official, work, tag)
    decoders = {"PyAV (ours)": lambda p, i: decode_frames(p, i)}
    if not isinstance(rows.get("ours, decord"), str):
        decoders["decord"] = decord_frames
    if not isinstance(rows.get("ours, torchcodec"), str):
        decoders["torchcodec"] = torchcodec_frames
    exact = exactness(paths, args, decoders, args.check)
    timed = time_rows(rows, len(paths), args.rounds)
    for name, loader in rows.items():
        row = {"files": tag, "name": name}
        if isinstance(loader, str):
            yield {**row, "status": f"not run: {loader}"}
            continue
        seconds, cpu, clips = timed[name]
        row.update(status="ok", clips=clips, items=len(seconds), seconds=round(sum(seconds), 4),
                   cpu_seconds=round(sum(cpu), 4), clips_per_s=round(clips / sum(seconds), 2),
                   clips_per_cpu_s=round(clips / sum(cpu), 2),
                   median_item_ms=round(1000 * float(np.median(seconds)), 1))
        if isinstance(loader, OfficialLoader):
            row.update(decoder="decord", torchvision=loader.torchvision,
                       decoded_per_video=_mean(decord_decoded(tables[p][1], b)
                                               for p, b in zip(_cycle(paths, len(loader.batches)), loader.batches)),
                       decoded_how="modelled: decord's seek rule on the file's keyframes")
        elif loader.decoder is None:
            row.update(decoder="PyAV", decoded_per_video=_mean(loader.decoded), decoded_how="counted")
        elif loader.decoder is from_frame_0:
            row.update(decoder="PyAV from frame 0", decoded_how="the last wanted frame + 1",
                       decoded_per_video=_mean(int(max(i)) + 1 for _, i in _our_indices(paths, args)))
        else:
            name_ = "decord" if loader.decoder is decord_frames else "torchcodec"
            rule = decord_decoded if name_ == "decord" else None
            row.update(decoder=name_, decoded_per_video=_mean(
                rule(tables[p][1], i) if rule else restart_rule_decoded(*tables[p], i)
                for p, i in _our_indices(paths, args)),
                decoded_how=f"modelled: {name_}'s seek rule on the file's keyframes")
        key = {"PyAV": "PyAV (ours)"}.get(row["decoder"], row["decoder"])
        if key in exact:
            row["exact"] = exact[key]
        yield row


def _our_indices(paths: list, args) -> list:
    """(path, frame indices) of every timed item of our dataset (its draws are a pure function of
    seed, epoch and index)."""
    out = []
    for r in range(args.rounds):
        for i, p in enumerate(paths):
            n = _frames(p)
            rng = np.random.default_rng([SEED, r, i, 0])
            out.append((p, pretrain_frame_indices(n, args.frames, args.rate, rng)))
    return out


_FRAMES: dict = {}


def _frames(path: str) -> int:
    if path not in _FRAMES:
        from vmae2_fast.data.pyav.video_io import count_frames
        _FRAMES[path] = count_frames(path)
    return _FRAMES[path]


def _cycle(paths: list, n: int) -> list:
    return [paths[k % len(paths)] for k in range(n)]


def _mean(xs) -> float:
    xs = list(xs)
    return round(float(np.mean(xs)), 1) if xs else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=24)
    p.add_argument("--seconds", type=float, default=10, help="length of each made video (at 30 fps)")
    p.add_argument("--short-side", type=int, default=320, help="short side of the made videos")
    p.add_argument("--views", type=int, default=4, help="repeated-augmentation views per video (--num_sample)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--rate", type=int, default=4)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=2, help="timed passes over the videos")
    p.add_argument("--check", type=int, default=4, help="videos whose clips are compared with a full decode")
    p.add_argument("--official-repo", help="checkout of OpenGVLab/VideoMAEv2 (default: .official/VideoMAEv2)")
    p.add_argument("--work-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "vmae2_fast", "bench-decode"))
    add_out_flag(p)
    return harness_main(p, run, argv)


if __name__ == "__main__":
    sys.exit(main())
