"""The C++ (OpenMP) CPU backend of the fused ops: `csrc/*.cpp`, compiled on first use. Each op's
file (`ops/patch_embed.py`, ...) calls the functions of the module `load()` returns.

The extension is built with `torch.utils.cpp_extension.load` into
`$VMAE2_FAST_CACHE/torch_extensions/...` (default `~/.cache/vmae2_fast`) the first time a CPU op
runs (about 30-60 s on 2 cores, logged), then loaded from there. Building at first use rather than
in setup.py keeps `pip install torch==2.13.0 -e .` a single command on a machine without torch:
an isolated build environment would otherwise pull an unpinned multi-GB torch.

torch guards a build folder with a plain `lock` file and waits, without end, for whoever created
it to delete it; a build killed half-way (a test timeout, Ctrl-C, a machine snapshot taken
mid-build) leaves it behind and every later run hangs on its first CPU op. So our builders first
take an OS lock (`flock`, dropped by the kernel when its holder dies): whoever holds it is the only
builder alive, and any `lock` file it finds is left over from a dead one and is removed.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)
_module = None
_error: str | None = None


SOURCES = ("patch_embed.cpp", "decoder_assembly.cpp", "masked_loss.cpp", "bindings.cpp")


def _sources() -> list[Path] | None:
    package = Path(__file__).resolve().parent.parent        # vmae2_fast/
    # a source checkout (csrc/ beside the package) or an installed wheel (vmae2_fast/csrc/)
    for folder in (package.parent / "csrc", package / "csrc"):
        if all((folder / name).exists() for name in SOURCES):
            return [folder / name for name in SOURCES]
    return None


def build_dir() -> Path:
    """One folder per torch, Python and source text: two checkouts of different versions (a
    clone and its worktree, two installs) never rebuild over each other's module."""
    root = Path(os.environ.get("VMAE2_FAST_CACHE", Path.home() / ".cache" / "vmae2_fast"))
    sources = _sources() or []
    digest = hashlib.sha256()
    for f in sources + (sorted(sources[0].parent.glob("*.h")) if sources else []):
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    tag = (f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}"
           f"-{digest.hexdigest()[:12]}")
    return root / "torch_extensions" / tag.replace("+", "_")


@contextlib.contextmanager
def _only_builder(out: Path, wait_note_s: float = 10.0):
    """Hold the folder's OS lock; clear a `lock` file that a dead builder left behind."""
    with open(out / "build.flock", "a") as handle:
        t0 = time.monotonic()
        noted = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:   # another live process is building: it will finish or die
                if not noted and time.monotonic() - t0 > wait_note_s:
                    print(f"vmae2_fast: waiting for another process building the C++ CPU ops in "
                          f"{out} ...", file=sys.stderr, flush=True)
                    noted = True
                time.sleep(0.2)
        stale = out / "lock"
        if stale.exists():
            log.warning("removing %s, left by a C++ build that was killed half-way", stale)
            stale.unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load():
    """The compiled module, building it once; raises RuntimeError with the reason if impossible."""
    global _module, _error
    if _module is not None:
        return _module
    if _error is not None:
        raise RuntimeError(_error)
    sources = _sources()
    try:
        if sources is None:
            raise FileNotFoundError(f"csrc/ ({', '.join(SOURCES)}) is not installed")
        from torch.utils import cpp_extension
        out = build_dir()
        out.mkdir(parents=True, exist_ok=True)
        first = not list(out.glob("vmae2_fast_cpu_ops*.so"))
        if first:   # on stderr, not the log: also seen by API users, and before logging is set up
            print(f"vmae2_fast: compiling the C++ CPU ops once into {out} (about a minute on 2 "
                  "cores) ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        with _only_builder(out):
            _module = cpp_extension.load(name="vmae2_fast_cpu_ops", sources=[str(s) for s in sources],
                                         extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"],
                                         build_directory=str(out), verbose=False)
        if first:
            print(f"vmae2_fast: C++ CPU ops compiled in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
    except Exception as exc:  # no compiler, no ninja, a build error, ...
        _error = f"the C++ CPU ops could not be built or loaded ({type(exc).__name__}: {exc})"
        raise RuntimeError(_error) from exc
    return _module


def available() -> bool:
    try:
        load()
        return True
    except RuntimeError:
        return False


def error() -> str | None:
    """Why the C++ ops cannot be used, once a build or load has failed."""
    return _error
