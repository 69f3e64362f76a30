"""Pack a list's videos into WebDataset tar shards that every stage can stream (offline tool).

    python -m vmae2_fast.make_shards LIST --data-root DIR --out DIR_OR_URL \\
        [--reencode [--codec h264 --short-side 320 --gop 16]] [--shard-size 64MB]

Each usable video of LIST (a pre-training list, or a classification list: its labels go along)
is stored as it is (or, with ``--reencode``, through the re-encoder first, see
`tools.reencode`) as ``KEY.EXT`` next to ``KEY.json`` (label, frame count, the list's path), KEY
the video's number in the set. A shard is closed past ``--shard-size`` bytes. The frame count of
every video is read from its packets (`index.probe_video`), so a missing, corrupt or truncated
video is left out here, listed in the manifest's ``excluded`` and in the summary, instead of being
discovered by every epoch of training.

Output, at a local folder or any fsspec URL (``s3://bucket/prefix``; credentials from the AWS
variables or ``--storage-options``): ``shard-000000.tar``, ... and then ``shards.json`` (see
`data.shard_store`), written last: a set with a manifest is complete. Shards are built in a
local temporary folder and uploaded one by one as they close.

Why WebDataset tars rather than MosaicML's MDS: a tar is read sequentially or by byte range with
nothing but fsspec, and stays readable by tar, `webdataset`, torchdata and DALI's webdataset
reader, so a user's other tools read the same bytes; MDS needs its own reader, local cache and
process coordination. The exact-resume and rank-split rules our reader needs come from the
manifest (`data.shard_loader`), not from the container.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import List, Optional

from ...errors import ConfigError, DataError, MissingFileError
from ..index import probe_video
from ..lists import VideoEntry, detect_kind, read_list
from ..shard_store import MANIFEST, Store, join, manifest_doc, parse_storage_options

__all__ = ["ShardResult", "write_shards", "parse_size", "main"]

_UNITS = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "KIB": 2 ** 10, "MIB": 2 ** 20,
          "GIB": 2 ** 30}


def parse_size(text: str | int) -> int:
    """``256MB``, ``1GiB``, ``1000000`` -> bytes."""
    if isinstance(text, int):
        return text
    t = str(text).strip().upper().replace(" ", "")
    num = t.rstrip("KMGIB")
    unit = t[len(num):]
    try:
        value = float(num) * _UNITS[unit]
    except (ValueError, KeyError):
        raise ConfigError(f"--shard-size {text!r}: give bytes, or a number with KB, MB, GB, KiB, MiB "
                          "or GiB") from None
    if value < 1:
        raise ConfigError(f"--shard-size must be positive, got {text!r}")
    return int(value)


@dataclass
class ShardResult:
    out: str
    shards: int = 0
    samples: int = 0
    bytes: int = 0
    seconds: float = 0.0
    excluded: List[dict] = field(default_factory=list)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    # fixed metadata: the same videos give the same bytes, whoever packs them and when
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _ShardPacker:
    """Writes shards into a local folder and hands each closed one to ``publish``."""

    def __init__(self, tmp_dir: str, shard_bytes: int, publish):
        self.tmp_dir, self.limit, self.publish = tmp_dir, shard_bytes, publish
        self.records: List[dict] = []
        self.tar: Optional[tarfile.TarFile] = None
        self.cur: Optional[dict] = None
        self.next_id = 0

    def _open(self) -> None:
        name = f"shard-{len(self.records):06d}.tar"
        self.cur = {"name": name, "ext": [], "offsets": [], "sizes": [], "frames": [], "labels": [],
                    "sources": [], "width": [], "height": [], "codec": [], "pix_fmt": []}
        self.path = os.path.join(self.tmp_dir, name)
        self.tar = tarfile.open(self.path, "w", format=tarfile.USTAR_FORMAT)

    def _member(self, name: str, data: bytes) -> int:
        self.tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
        padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        return self.tar.offset - padded           # where the member's data starts in the tar

    def add(self, entry: VideoEntry, probe: dict) -> None:
        if self.tar is None:
            self._open()
        key = f"{self.next_id:09d}"
        ext = (os.path.splitext(entry.path)[1].lstrip(".") or "video").lower()
        with open(entry.path, "rb") as f:
            data = f.read()
        offset = self._member(f"{key}.{ext}", data)
        label, frames = -1 if entry.label is None else int(entry.label), int(probe["frames"])
        meta = json.dumps({"label": label, "frames": frames, "source": entry.rel}).encode()
        self._member(f"{key}.json", meta)
        c = self.cur
        c["ext"].append(ext)
        c["offsets"].append(offset)
        c["sizes"].append(len(data))
        c["frames"].append(frames)
        c["labels"].append(label)
        c["sources"].append(entry.rel)
        for k in ("width", "height", "codec", "pix_fmt"):    # what DALI's sample planner needs
            c[k].append(probe[k])
        self.next_id += 1
        if self.tar.offset >= self.limit:
            self.close()

    def close(self) -> None:
        if self.tar is None:
            return
        self.tar.close()
        self.cur["bytes"] = os.path.getsize(self.path)
        self.publish(self.path, self.cur["name"])
        self.records.append(self.cur)
        self.tar, self.cur = None, None


def _probe_all(entries: List[VideoEntry], workers: int, progress: bool) -> List[dict]:
    from tqdm import tqdm
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(tqdm(pool.map(lambda e: probe_video(e.path), entries), total=len(entries),
                         desc="reading frame counts", unit="video", disable=not progress,
                         dynamic_ncols=True))


def write_shards(list_file: str, data_root: str, out: str, *, shard_size: str | int = "64MB",
                 kind: str = "auto", storage_options: dict | None = None, workers: int = 4,
                 reencode: Optional[dict] = None, reencode_root: Optional[str] = None,
                 progress: bool = True) -> ShardResult:
    """Write the shard set of ``list_file`` at ``out`` (see the module docstring); ``reencode``:
    the re-encoder's `EncodeSettings` fields, to transcode the videos first (into
    ``reencode_root``, a temporary folder by default)."""
    list_file = os.fspath(list_file)
    if not os.path.isfile(list_file):
        raise MissingFileError(f"annotation list not found: {list_file}")
    if not out:
        raise ConfigError("--out is required (a folder, or a URL such as s3://bucket/prefix)")
    limit = parse_size(shard_size)
    store = Store(out, storage_options)
    if "://" not in out:
        os.makedirs(out, exist_ok=True)
    if store.exists(MANIFEST):
        raise ConfigError(f"{join(out, MANIFEST)} exists: {out} already holds a shard set; choose another "
                          "--out or delete it first")
    kind = detect_kind(list_file) if kind == "auto" else kind
    if kind == "rawframes":
        raise DataError("frame-folder lists (frame_dir total label) cannot be packed into shards; "
                        "list video files")
    t0 = time.perf_counter()
    res = ShardResult(out)
    with tempfile.TemporaryDirectory(prefix="vmae2_shards_") as tmp:
        if reencode is not None:
            from .reencode import EncodeSettings, reencode_list
            root = reencode_root or os.path.join(tmp, "reencoded")
            done = reencode_list(list_file, data_root, root, EncodeSettings(**reencode), kind=kind,
                                 workers=workers, index=False, progress=progress)
            res.excluded += [{"source": x["rel"], "reason": x["reason"]} for x in done.failed]
            list_file, data_root = done.out_list, root
        entries = read_list(list_file, data_root, kind)
        classes = _class_names(list_file)
        probes = _probe_all(entries, workers, progress)

        def publish(path: str, name: str) -> None:
            if "://" in out:
                store.put(path, name)
                os.remove(path)
            else:
                shutil.move(path, os.path.join(out, name))

        packer = _ShardPacker(tmp, limit, publish)
        for e, rec in zip(entries, probes):
            if not rec["readable"]:
                res.excluded.append({"source": e.rel, "reason": rec["reason"]})
                continue
            packer.add(e, rec)
        packer.close()
        if not packer.records:
            raise DataError(f"none of the {len(entries)} videos of {list_file} could be read "
                            f"(first: {res.excluded[0]['source']}: {res.excluded[0]['reason']})")
        labelled = all(lab >= 0 for r in packer.records for lab in r["labels"])
        doc = manifest_doc("classify" if labelled else "pretrain", packer.records, classes, res.excluded)
        store.write(MANIFEST, json.dumps(doc, separators=(",", ":")).encode())
    res.shards = len(packer.records)
    res.samples = packer.next_id
    res.bytes = sum(r["bytes"] for r in packer.records)
    res.seconds = time.perf_counter() - t0
    return res


def _class_names(list_file: str) -> Optional[list]:
    """The class names of ``classes.txt`` beside the list, the file fine-tuning reads."""
    path = os.path.join(os.path.dirname(os.path.abspath(list_file)), "classes.txt")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [x.strip() for x in f if x.strip()]


def summarize(res: ShardResult) -> str:
    lines = [f"wrote {res.samples} videos into {res.shards} shard{'s' if res.shards != 1 else ''} ({res.bytes / 1e6:.1f} MB) at "
             f"{res.out} in {res.seconds:.1f} s; {len(res.excluded)} left out"]
    lines += [f"  left out: {x['source']}: {x['reason']}" for x in res.excluded[:20]]
    if len(res.excluded) > 20:
        lines.append(f"  ... and {len(res.excluded) - 20} more (all in {join(res.out, MANIFEST)})")
    lines.append(f"train from it with --data {res.out}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vmae2_fast.make_shards",
        description="Pack a list's videos (with labels and frame counts) into WebDataset tar shards "
                    "at a folder or an fsspec URL (s3://bucket/prefix), for streaming with --data.")
    p.add_argument("list_file", help="annotation list (any format vmae2_fast reads; video files)")
    p.add_argument("--data-root", default="", help="folder the list's paths are relative to")
    p.add_argument("--out", required=True, help="folder or URL of the shard set (s3://bucket/prefix, ...)")
    p.add_argument("--shard-size", default="64MB",
                   help="close a shard past this size (default 64MB; a reading DataLoader worker holds "
                        "up to two shards in memory)")
    p.add_argument("--kind", default="auto", help="list format: auto, pretrain, cls or csv")
    p.add_argument("--storage-options", default="",
                   help='fsspec options for --out as JSON, e.g. \'{"endpoint_url": "http://host:8333"}\' '
                        "(default: the AWS_* environment variables)")
    p.add_argument("--workers", type=int, default=4, help="threads reading frame counts (and re-encoding)")
    p.add_argument("--reencode", action="store_true",
                   help="transcode the videos first (short GOP, small short side: faster decoding)")
    p.add_argument("--reencode-root", default=None,
                   help="keep the re-encoded videos here (default: a temporary folder)")
    p.add_argument("--codec", default="h264", help="with --reencode: h264 or vp9")
    p.add_argument("--short-side", type=int, default=320, help="with --reencode: output short side")
    p.add_argument("--gop", type=int, default=16, help="with --reencode: frames between keyframes")
    p.add_argument("--no-progress", action="store_true")
    return p


def _main(a: argparse.Namespace) -> None:
    if a.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {a.workers}")
    reencode = dict(codec=a.codec, short_side=a.short_side, gop=a.gop) if a.reencode else None
    res = write_shards(a.list_file, a.data_root, a.out, shard_size=a.shard_size, kind=a.kind,
                       storage_options=parse_storage_options(a.storage_options), workers=a.workers,
                       reencode=reencode, reencode_root=a.reencode_root, progress=not a.no_progress)
    print(summarize(res))


def main(argv=None) -> int:
    from ...cli import exit_code
    return exit_code(_main, _parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
