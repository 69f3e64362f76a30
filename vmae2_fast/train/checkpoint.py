"""Crash-safe checkpoints, resume discovery and RNG state capture.

Checkpoints hold only tensors, numbers, strings, ``None`` and containers of
those, so they load with ``torch.load(weights_only=True)`` and no allow-list
(reading is `vmae2_fast.models.weights.read_checkpoint`, the one reader for
every checkpoint file). :func:`save_checkpoint` checks this before writing, so
an unloadable checkpoint is caught at save time rather than at resume time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import shutil
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ..errors import DiskFullError
from .storage import is_no_space

PathLike = Union[str, os.PathLike]

# Only exact "checkpoint-<digits>.pth" names count; "checkpoint-best.pth" and
# our temp files (".checkpoint-N.pth.<random>.tmp") never match.
_NUMBERED = re.compile(r"^checkpoint-(\d+)\.pth$")

_LEAF_TYPES = (torch.Tensor, bool, int, float, str, bytes, type(None),
               torch.Size, torch.dtype, torch.device)


def _check_weights_only_safe(obj: Any, where: str = "state") -> None:
    if isinstance(obj, _LEAF_TYPES):
        return
    if isinstance(obj, (dict, OrderedDict)):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; use str or int keys")
            _check_weights_only_safe(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_weights_only_safe(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which "
        "torch.load(weights_only=True) cannot read back; convert it to tensors, "
        "numbers, strings, lists or dicts (e.g. vars(args) for a Namespace, "
        "float(x) for a NumPy scalar)")


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable. Not possible on every OS (e.g. Windows).
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: PathLike, state: dict) -> Path:
    """Atomically write ``state`` to ``path``.

    Writes a temp file in the same directory (same file system, so the rename
    is atomic), flushes and fsyncs it, ``os.replace``s it onto ``path`` and
    fsyncs the directory. A crash leaves either the old file or the new one,
    never a truncated one; a leftover temp file is ignored by
    :func:`latest_checkpoint`. A full disk raises :class:`DiskFullError` (the
    temp file removed, ``path`` unchanged).
    """
    path = Path(path)
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    _check_weights_only_safe(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _replacing(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    return path


@contextlib.contextmanager
def _replacing(path: Path):
    """A temp name in ``path``'s folder (same file system: the rename is atomic) for the caller to
    fill; then renamed onto ``path`` and the folder fsynced. On any failure the temp file is
    removed and ``path`` is untouched; a full disk is raised as `DiskFullError`."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_no_space(exc):
            raise DiskFullError(
                f"no space left on the device of {path.parent} while writing {path.name}; the "
                f"partial file was removed and {path.name}, if it existed, is unchanged. Free "
                "some space, then run the same command again to resume.") from None
        raise
    _fsync_dir(path.parent)


# Hard links are impossible on some file systems (FAT/exFAT, some network and object stores).
_NO_LINK = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.EACCES,
            getattr(errno, "ENOTSUP", errno.EPERM), getattr(errno, "EOPNOTSUPP", errno.EPERM)}


def link_or_copy(src: PathLike, dst: PathLike) -> str:
    """Make ``dst`` name the same file as ``src``, atomically replacing ``dst``: a hard link (no
    second copy on disk), or, where the file system has none, a copy written like
    :func:`save_checkpoint` (temp file, fsync, rename). Returns ``"link"`` or ``"copy"``.

    Never writes into ``dst`` in place, so an old ``dst`` that is itself a hard link to another
    checkpoint is never changed."""
    src, dst = Path(src), Path(dst)
    with _replacing(dst) as tmp:
        tmp.unlink()                    # os.link needs a free name
        try:
            os.link(src, tmp)
            how = "link"
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 16 << 20)
                fout.flush()
                os.fsync(fout.fileno())
            how = "copy"
    return how


def numbered_checkpoints(output_dir: PathLike) -> list[tuple[int, Path]]:
    """All ``checkpoint-N.pth`` files in ``output_dir`` as ``(N, path)``, sorted by N."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = _NUMBERED.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    found.sort(key=lambda item: item[0])  # numeric: checkpoint-10 after checkpoint-9
    return found


def latest_checkpoint(output_dir: PathLike) -> Optional[Path]:
    """The ``checkpoint-N.pth`` with the largest N (by name only), or ``None``."""
    found = numbered_checkpoints(output_dir)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir: PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` numbered checkpoints.

    ``checkpoint-best.pth`` and any other name are never touched. Returns the
    deleted paths.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    found = numbered_checkpoints(output_dir)
    doomed = [p for _, p in found[:-keep_last]]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


# --------------------------------------------------------------------- RNG state

def capture_rng_state() -> dict:
    """RNG states of Python ``random``, NumPy's global generator, torch CPU and
    every CUDA device, as tensors / numbers / lists (weights_only-safe)."""
    py_version, py_internal, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": int(py_version),
                   "state": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
        "numpy": {"kind": str(np_kind),
                  # uint32 keys fit in int64 without loss
                  "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss),
                  "cached_gaussian": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state` (also after a save/load round trip)."""
    py = state["python"]
    random.setstate((int(py["version"]),
                     tuple(int(v) for v in py["state"].tolist()),
                     py["gauss_next"]))
    nps = state["numpy"]
    keys = np.asarray(nps["keys"].cpu().numpy(), dtype=np.uint32)
    np.random.set_state((nps["kind"], keys, int(nps["pos"]), int(nps["has_gauss"]),
                         float(nps["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if len(cuda_states) != n:
            warnings.warn(f"checkpoint has CUDA RNG states for {len(cuda_states)} devices, "
                          f"this process sees {n}; restoring the first {min(n, len(cuda_states))}")
        for device, s in enumerate(cuda_states[:n]):
            torch.cuda.set_rng_state(s.cpu().to(torch.uint8), device)
