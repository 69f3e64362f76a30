"""The video index: every listed video probed once, so that training never has to.

``LIST.index.json`` lies beside the list; it is written by the command of `tools.index` (and, for
the embedded synthetic dataset, by the loader itself). For each video it records the frame count, fps, codec,
pixel format (chroma subsampling and bit depth), width x height, file size and mtime; files that cannot be used are excluded with the reason
(missing, not a video, corrupt, truncated, no decodable frame). The DALI pipeline needs the frame
counts (the official lists say ``-1``) to draw the official frame indices before decoding.

Probing demuxes every packet (cheap: no decoding) to count frames and decodes the first frame to
prove the stream is decodable. A file whose packets cover less than 90% of the duration its header
states is reported as truncated. ``--full-decode`` decodes every frame instead (exact, slow).

Frame folders (``frame_dir total label`` or ``frame_dir start total`` lines; ``--fname-tmpl``,
``--start-idx`` as in training): the frames are the files the template names from the start; with a
listed count, a folder that lacks any of them is excluded with the number missing and the first
names; without one, the consecutive files from the start are counted. The first frame is decoded
(all of them with ``--full-decode``); its size is recorded.

Staleness: training refuses an index whose list content (SHA-256), data root, or any listed file's
size or mtime has changed since it was built, and says how to rebuild it.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..errors import DataError, MissingFileError
from .lists import VideoEntry, detect_kind, read_list
from .media import DEFAULT_START, DEFAULT_TEMPLATE, frame_file, scan_frame_folder

__all__ = ["IndexedVideo", "VideoIndex", "StaleIndexError", "probe_video", "build_index",
           "load_index", "index_path", "DALI_CPU_CODECS", "DALI_GPU_CODECS", "DALI_PIX_FMTS",
           "dali_cannot_decode"]

VERSION = 1
RAWFRAMES = "rawframes"         # the codec name of a frame folder (DALI reads it with its image decoder)
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg", RAWFRAMES})
# MPEG-4 Part 2 (DivX/Xvid AVIs) is left out: NVDEC's support for it is unreliable (re-encode).
DALI_GPU_CODECS = frozenset({"vp8", "vp9", "mjpeg", "h264", "hevc", "av1", RAWFRAMES})
# 8-bit 4:2:0, the only chroma format NVDEC reads for H.264 (4:2:2 / 4:4:4 H.264 is refused) and
# the one both DALI backends are tested with; "" = not recorded (an index written before the
# pixel format was, or a frame folder), taken as decodable. MJPEG's full-range 4:2:2 is also read.
DALI_PIX_FMTS = frozenset({"yuv420p", "yuvj420p", "nv12", ""})
_MJPEG_PIX_FMTS = frozenset({"yuvj422p", "yuv422p"})


class StaleIndexError(DataError):
    """The index no longer describes the list or the files; the message says how to rebuild."""


@dataclass
class IndexedVideo:
    path: str
    rel: str
    frames: int
    fps: float
    codec: str
    width: int
    height: int
    label: Optional[int] = None
    start: int = 0
    pix_fmt: str = ""          # FFmpeg's name, e.g. yuv420p; "" when the index did not record it


def dali_cannot_decode(video: IndexedVideo, device: str) -> Optional[str]:
    """Why DALI on ``device`` (``"cpu"`` | ``"gpu"``) cannot decode ``video``, from what the index
    recorded (codec, pixel format); None when it can."""
    codecs = DALI_GPU_CODECS if device == "gpu" else DALI_CPU_CODECS
    if video.codec not in codecs:
        return f"codec {video.codec or 'unknown'} (DALI on the {device} reads {', '.join(sorted(codecs))})"
    if video.pix_fmt not in DALI_PIX_FMTS and not (video.codec == "mjpeg" and video.pix_fmt in _MJPEG_PIX_FMTS):
        return f"pixel format {video.pix_fmt} (DALI reads 8-bit 4:2:0)"
    return None


@dataclass
class VideoIndex:
    list_file: str
    data_root: str
    videos: List[IndexedVideo]
    excluded: List[Dict] = field(default_factory=list)   # {"rel", "reason"}


def index_path(list_file: str) -> str:
    return os.fspath(list_file) + ".index.json"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stat(path: str):
    try:
        st = os.stat(path)
        return int(st.st_size), int(st.st_mtime_ns)
    except OSError:
        return -1, -1


def probe_frame_folder(path: str, rec: dict, template: str, start: int, listed: int,
                       full_decode: bool) -> dict:
    """`probe_video` for a frame folder (see the module docstring)."""
    from PIL import Image
    n, missing = scan_frame_folder(path, template, start, listed)
    rec.update(codec=RAWFRAMES, frames=n)
    if n == 0:
        rec["reason"] = f"no frame named {template.format(start)} (check --fname-tmpl, --start-idx)"
        return rec
    if missing:
        rec["reason"] = (f"missing frames: {len(missing)} of the {n} listed "
                         f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})")
        return rec
    for i in range(n if full_decode else 1):
        name = frame_file(path, template, start + i)
        try:
            with Image.open(name) as img:
                img.load()
                if i == 0:
                    rec.update(width=img.width, height=img.height)
                elif img.size != (rec["width"], rec["height"]):
                    rec["reason"] = f"frame {os.path.basename(name)} is {img.size}, the first is " \
                                    f"{(rec['width'], rec['height'])}"
                    return rec
        except (OSError, ValueError, SyntaxError) as exc:
            rec["reason"] = f"corrupt: frame {os.path.basename(name)}: {exc}"
            return rec
    rec["readable"] = True
    return rec


def probe_video(path: str, full_decode: bool = False, *, template: str = DEFAULT_TEMPLATE,
                start: int = DEFAULT_START, listed: int = -1) -> dict:
    """Describe one file or frame folder: ``frames, fps, codec, pix_fmt, width, height, size, mtime_ns,
    readable, reason``. ``template``, ``start`` and ``listed`` (the list's frame count) describe a
    frame folder."""
    size, mtime = _stat(path)
    rec = dict(frames=0, fps=0.0, codec="", pix_fmt="", width=0, height=0, size=size,
               mtime_ns=mtime, readable=False, reason="")
    if size < 0:
        rec["reason"] = "missing"
        return rec
    if os.path.isdir(path):
        return probe_frame_folder(path, rec, template, start, listed, full_decode)
    import av
    try:
        with av.open(path) as c:
            if not c.streams.video:
                rec["reason"] = "no video stream"
                return rec
            s = c.streams.video[0]
            rate = s.average_rate or s.guessed_rate or 0
            rec.update(codec=s.codec_context.name, width=s.codec_context.width,
                       height=s.codec_context.height, fps=float(rate),
                       pix_fmt=s.codec_context.pix_fmt or "")
            expected = (c.duration or 0) / 1e6 * float(rate)   # frames the header promises
            if full_decode:
                n = sum(1 for _ in c.decode(s))
            else:
                n = sum(1 for p in c.demux(s) if p.size > 0)
                c.seek(0)
                if next(iter(c.decode(s)), None) is None:
                    rec["reason"] = "no decodable frame"
                    return rec
    except (av.FFmpegError, OSError, ValueError, StopIteration) as exc:
        rec["reason"] = f"corrupt: {exc}"
        return rec
    rec["frames"] = int(n)
    if n <= 0:
        rec["reason"] = "no frames"
    elif expected > 10 and n < 0.9 * expected - 1:
        rec["reason"] = f"truncated: {n} frames of the {expected:.0f} its header states"
    else:
        rec["readable"] = True
    return rec


def build_index(list_file: str, data_root: str = "", kind: str = "auto", workers: int = 8,
                full_decode: bool = False, output: Optional[str] = None,
                progress: bool = True, fname_tmpl: str = DEFAULT_TEMPLATE,
                start_idx: int = DEFAULT_START, labels: bool = False) -> VideoIndex:
    """Probe every video (or frame folder) of ``list_file`` in parallel and write the index file.
    ``labels``: the list is read as a classifier reads it (three fields: ``frame_dir total label``,
    what ``kind="rawframes"`` says explicitly), else three fields are ``path start total``."""
    kind = kind if kind != "auto" else detect_kind(list_file, labels)
    entries = read_list(list_file, data_root, kind, start_idx=start_idx)
    from tqdm import tqdm

    def probe(e):
        return probe_video(e.path, full_decode, template=fname_tmpl, start=e.start, listed=e.total)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        recs = list(tqdm(pool.map(probe, entries),
                         total=len(entries), desc="probing videos", disable=not progress,
                         unit="video", dynamic_ncols=True))
    cols = ["rel", "frames", "fps", "codec", "width", "height", "size", "mtime_ns", "readable",
            "reason", "label", "start", "pix_fmt"]
    rows = [[e.rel, r["frames"], r["fps"], r["codec"], r["width"], r["height"], r["size"],
             r["mtime_ns"], r["readable"], r["reason"], e.label, e.start, r["pix_fmt"]]
            for e, r in zip(entries, recs)]
    doc = {"version": VERSION, "list_sha256": _sha256(list_file),
           "data_root": os.path.abspath(data_root) if data_root else "",
           "full_decode": bool(full_decode), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
           "fname_tmpl": fname_tmpl, "start_idx": int(start_idx), "kind": kind,
           "columns": cols, "rows": rows}
    out = output or index_path(list_file)
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))
    os.replace(tmp, out)
    return _to_index(list_file, data_root, entries, doc)


def _to_index(list_file, data_root, entries: List[VideoEntry], doc) -> VideoIndex:
    c = {name: i for i, name in enumerate(doc["columns"])}
    videos, excluded = [], []
    for e, row in zip(entries, doc["rows"]):
        if not row[c["readable"]]:
            excluded.append({"rel": e.rel, "reason": row[c["reason"]]})
            continue
        frames = row[c["frames"]]
        pix_fmt = row[c["pix_fmt"]] if "pix_fmt" in c else ""   # older indexes: not recorded
        videos.append(IndexedVideo(e.path, e.rel, frames, row[c["fps"]], row[c["codec"]],
                                   row[c["width"]], row[c["height"]], e.label, e.start, pix_fmt))
    return VideoIndex(list_file, data_root, videos, excluded)


def rebuild_hint(list_file: str, data_root: str, fname_tmpl: str = DEFAULT_TEMPLATE,
                 start_idx: int = DEFAULT_START, kind: str = "auto") -> str:
    root = f" --data-root {data_root}" if data_root else ""
    root += " --kind rawframes" if kind == "rawframes" else ""
    frames = "" if fname_tmpl == DEFAULT_TEMPLATE else f" --fname-tmpl '{fname_tmpl}'"
    frames += "" if start_idx == DEFAULT_START else f" --start-idx {start_idx}"
    return f"python -m vmae2_fast.data.tools.index {list_file}{root}{frames}"


def reencode_hint(list_file: str, data_root: str) -> str:
    """The command that re-encodes a list for DALI (H.264 4:2:0; see `tools.reencode`)."""
    root = data_root.rstrip("/") if data_root else os.path.dirname(os.path.abspath(list_file))
    flag = f" --data-root {data_root}" if data_root else ""
    return f"python -m vmae2_fast.data.tools.reencode {list_file}{flag} --out-root {root}_reencoded"


def load_index(list_file: str, data_root: str = "", kind: str = "auto", check_files: bool = True,
               path: Optional[str] = None, fname_tmpl: str = DEFAULT_TEMPLATE,
               start_idx: int = DEFAULT_START, labels: bool = False) -> VideoIndex:
    """Load the index of ``list_file``; raise :class:`StaleIndexError` if it is out of date (the
    list, the data root, a file, the frame-folder naming, or how the list's columns are read
    changed)."""
    path = path or index_path(list_file)
    if not os.path.isfile(list_file):
        raise MissingFileError(f"annotation list not found: {list_file}")
    kind = kind if kind != "auto" else detect_kind(list_file, labels)
    hint = rebuild_hint(list_file, data_root, fname_tmpl, start_idx, kind)
    if not os.path.isfile(path):
        raise MissingFileError(f"no index for {list_file} (expected {path}); build it with: {hint}")
    with open(path, "r", encoding="utf-8") as f:
        doc = json.load(f)
    why = None
    root = os.path.abspath(data_root) if data_root else ""
    if doc.get("version") != VERSION:
        why = f"it has format version {doc.get('version')}, this code reads {VERSION}"
    elif doc["list_sha256"] != _sha256(list_file):
        why = "the list has changed since the index was built"
    elif doc["data_root"] != root:
        why = f"it was built for --data-root {doc['data_root'] or '(none)'}, not {root or '(none)'}"
    elif (doc.get("fname_tmpl", DEFAULT_TEMPLATE), doc.get("start_idx", DEFAULT_START)) != (fname_tmpl, start_idx):
        why = (f"it was built for frame files {doc.get('fname_tmpl', DEFAULT_TEMPLATE)!r} from "
               f"{doc.get('start_idx', DEFAULT_START)}, not {fname_tmpl!r} from {start_idx}")
    elif doc.get("kind", kind) != kind:
        why = f"it read the list as {doc['kind']!r} lines, this reader needs {kind!r}"
    entries = read_list(list_file, data_root, kind, start_idx=start_idx) if why is None else []
    if why is None and len(entries) != len(doc["rows"]):
        why = "the list and the index have different lengths"
    if why is None and check_files:
        c = {name: i for i, name in enumerate(doc["columns"])}
        with ThreadPoolExecutor(16) as pool:
            stats = list(pool.map(lambda e: _stat(e.path), entries))
        changed = [e.rel for e, st, row in zip(entries, stats, doc["rows"])
                   if st != (row[c["size"]], row[c["mtime_ns"]])]
        if changed:
            shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
            why = f"{len(changed)} listed file(s) changed (size or mtime) since it was built: {shown}"
    if why:
        raise StaleIndexError(f"the index {path} is stale: {why}. Rebuild it with: {hint}")
    return _to_index(list_file, data_root, entries, doc)


if __name__ == "__main__":
    # `python -m vmae2_fast.data.index` answers for one release with the command of `tools.index`,
    # so that scripts written for this path keep running.
    import sys

    from vmae2_fast.data.tools.index import main
    sys.exit(main())
