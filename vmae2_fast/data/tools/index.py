"""Probe every video (or frame folder) of a list once and write ``LIST.index.json`` beside it.

    python -m vmae2_fast.data.tools.index LIST --data-root DIR [--workers 16] [--full-decode]

What the index records, how a video is probed and when an index is stale: `vmae2_fast.data.index`.
The command prints what it found: usable videos per codec, the videos DALI cannot decode (with the
re-encode command) and the excluded ones with their reasons.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

from ...errors import ConfigError, UserError
from ..index import (DALI_CPU_CODECS, RAWFRAMES, VideoIndex, build_index, dali_cannot_decode,
                     index_path, reencode_hint)
from ..lists import KINDS
from ..media import DEFAULT_START, DEFAULT_TEMPLATE

__all__ = ["summarize", "main"]


def summarize(index: VideoIndex) -> str:
    n_ex = len(index.excluded)
    codecs = Counter(v.codec for v in index.videos)
    lines = [f"{len(index.videos)} usable videos, {n_ex} excluded; codecs: "
             + ", ".join(f"{k} {n}" for k, n in codecs.most_common())]
    not_cpu = sum(n for k, n in codecs.items() if k not in DALI_CPU_CODECS)
    folders = [v for v in index.videos if v.codec == RAWFRAMES]
    if folders:
        lines.append(f"{len(folders)} frame folders, {sum(v.frames for v in folders)} frames "
                     f"(min {min(v.frames for v in folders)}, max {max(v.frames for v in folders)} per folder)")
    if not_cpu:
        lines.append(f"{not_cpu} videos use codecs DALI decodes only on the GPU "
                     f"(on the CPU it handles {', '.join(sorted(DALI_CPU_CODECS))})")
    not_gpu = Counter(why for why in (dali_cannot_decode(v, "gpu") for v in index.videos
                                      if v.codec != RAWFRAMES) if why)
    if not_gpu:
        lines.append(f"{sum(not_gpu.values())} videos DALI cannot decode even on the GPU ("
                     + ", ".join(f"{k}: {n}" for k, n in not_gpu.most_common(5))
                     + "); --decoder auto decodes them with PyAV, or re-encode them: "
                     + reencode_hint(index.list_file, index.data_root))
    if n_ex:
        reasons = Counter(x["reason"].split(":")[0] for x in index.excluded)
        lines.append("excluded: " + ", ".join(f"{k} {n}" for k, n in reasons.most_common()))
        for x in index.excluded[:20]:
            lines.append(f"  {x['rel']}: {x['reason']}")
        if n_ex > 20:
            lines.append(f"  ... and {n_ex - 20} more (all are in the index file, readable=false)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vmae2_fast.data.tools.index",
                                description="Probe every video of a list once and write LIST.index.json")
    p.add_argument("list_file")
    p.add_argument("--data-root", default="")
    p.add_argument("--kind", default="auto", choices=KINDS)
    p.add_argument("--workers", type=int, default=min(32, (os.cpu_count() or 2) * 2))
    p.add_argument("--full-decode", action="store_true",
                   help="decode every frame (exact count and decodability; much slower)")
    p.add_argument("--fname-tmpl", default=DEFAULT_TEMPLATE,
                   help="frame folders: file name of frame number i (default: %(default)s)")
    p.add_argument("--start-idx", type=int, default=DEFAULT_START,
                   help="frame folders: number of the first frame where the list has no start "
                        "column (default: %(default)s)")
    p.add_argument("--output", default=None, help="index file (default: LIST.index.json)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        t = time.time()
        if a.fname_tmpl.format(1) == a.fname_tmpl:
            raise ConfigError(f"--fname-tmpl {a.fname_tmpl!r} has no field for the frame number")
        idx = build_index(a.list_file, a.data_root, a.kind, a.workers, a.full_decode, a.output,
                          progress=not a.no_progress, fname_tmpl=a.fname_tmpl, start_idx=a.start_idx)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summarize(idx))
    print(f"index written to {a.output or index_path(a.list_file)} in {time.time() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
