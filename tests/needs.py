"""What the suite needs from the environment, and what a test does when it is not there.

The packages of the `test` extra (triton, nvidia-dali, transformers, safetensors) and the C++ CPU
ops are part of what the suite tests, so their absence must not look like success:

- on CI (`CI=true`, set by `.ci/run`) a missing or broken one FAILS the test with the reason;
- an installed package that raises on import (a broken install) fails everywhere: a skip would
  hide it, and the engine itself would quietly fall back to a slower path;
- locally, a package that is simply not installed skips, with the command that installs it.

The only skips a CPU machine may show on CI are the tests marked `gpu` (see conftest.py).
"""
from __future__ import annotations

import importlib
import os
import shutil

import pytest

INSTALL = "pip install torch==2.13.0 -e '.[test]'"


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(what: str, reason: str, *, missing: bool, install: str = INSTALL):
    """Skip (missing, local) or fail (on CI, or installed but broken); usable at module level."""
    state = "not installed" if missing else "installed but broken"
    msg = f"{what} is {state}: {reason}; fix: {install}"
    if on_ci() or not missing:
        pytest.fail(("CI=true, so this is a failure, not a skip: " if on_ci() else "") + msg,
                    pytrace=False)
    pytest.skip(msg, allow_module_level=True)


def _import(name: str, importer=None, install: str = INSTALL, package: str | None = None):
    """Import `name`; it counts as missing only when `package` (default: `name`) itself is
    absent: a module missing inside an installed package is breakage."""
    package = package or name
    try:
        return importer() if importer else importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (package == exc.name or package.startswith(exc.name + ".")):
            unavailable(name, str(exc), missing=True, install=install)
        unavailable(name, f"{type(exc).__name__}: {exc}", missing=False, install=install)
    except Exception as exc:  # noqa: BLE001 - a broken install can raise anything at import
        unavailable(name, f"{type(exc).__name__}: {exc}", missing=False, install=install)


def module(name: str, install: str = INSTALL):
    """`import name`, or skip/fail as above."""
    return _import(name, install=install)


def transformers():
    """transformers (from the repository root, where the suite runs: tests/test_layout.py checks
    that nothing there shadows a package it imports)."""
    return _import("transformers")


def triton_kernels():
    """The Triton kernels (`vmae2_fast.kernels`), runnable here: on CUDA, or on the CPU under the
    Triton interpreter (conftest.py sets TRITON_INTERPRET=1 before anything imports the kernels)."""
    import torch
    _import("triton")
    from vmae2_fast.ops import backends
    if not backends.triton_available():
        unavailable("triton", f"vmae2_fast.kernels could not load ({backends._triton_error})", missing=False)
    if not torch.cuda.is_available() and not backends.triton_interpreted():
        unavailable("the Triton CPU interpreter",
                    f"no CUDA device and TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r} "
                    "when the kernels were imported", missing=False,
                    install="unset TRITON_INTERPRET (tests/conftest.py sets it to 1 on CPU machines)")
    return backends


def dali():
    """`nvidia.dali`, and the engine agreeing that it is usable."""
    install = "pip install nvidia-dali-cuda130 (or " + INSTALL + ")"
    _import("nvidia.dali", install=install)
    _import("nvidia.dali.fn", install=install, package="nvidia.dali")
    from vmae2_fast.data.dali.pipeline import dali_status
    ok, info = dali_status()
    if not ok:
        unavailable("nvidia-dali", info, missing=False, install=install)
    return info


def cpp_ops():
    """The C++ CPU ops, compiled on first use: no compiler is 'missing', a failed build is broken."""
    from vmae2_fast.ops import cpp
    if cpp.available():
        return cpp
    compiler = os.environ.get("CXX", "c++")
    has_compiler = shutil.which(compiler) is not None
    unavailable("the C++ CPU ops", cpp.error() or "unknown error", missing=not has_compiler,
                install="install a C++ compiler and ninja (apt install g++; pip install ninja)"
                if not has_compiler else "fix the build error above (csrc/)")


def network_namespaces() -> None:
    """`ip netns add` works here (root, iproute2, a kernel that allows it): the two-host tests make
    their "hosts" with it. CI runs as root in the same sandbox as a session, where it works, so
    there its absence is a failure, not a skip; elsewhere (not root, no iproute2) it skips."""
    import subprocess
    import uuid
    if shutil.which("ip") is None:
        unavailable("iproute2 (the `ip` command)", "not found", missing=True, install="apt-get install iproute2")
    if os.geteuid() != 0:
        unavailable("network namespaces", "`ip netns add` needs root", missing=True,
                    install="run the test as root (as CI does), e.g. in a container")
    name = f"vmae2-probe-{uuid.uuid4().hex[:8]}"
    res = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        unavailable("network namespaces", f"`ip netns add` failed: {res.stderr.strip()}", missing=True,
                    install="a machine or container that allows network namespaces (CAP_SYS_ADMIN)")
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=60)


# A checkout of the official code is never part of the repository (its licence and size), so CI
# has none: the tests that run it are marked `official_checkout` and are deselected unless asked
# for (`pytest -m official_checkout`, pyproject addopts). They look for a checkout here or at
# $VMAE2_FAST_OFFICIAL_REPO; asked for where there is none, they skip with the clone command, and
# on CI that skip fails like any skip of a test not marked `gpu` (conftest.py).
OFFICIAL_REPO_ENV = "VMAE2_FAST_OFFICIAL_REPO"
NO_OFFICIAL_CHECKOUT = "no checkout of the official code (OpenGVLab/VideoMAEv2)"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def official_checkout(repo_root: str = REPO_ROOT):
    """The checkout of github.com/OpenGVLab/VideoMAEv2 the official-code tests run (a Path), from
    ${VMAE2_FAST_OFFICIAL_REPO} or <repo>/.official/VideoMAEv2. None there: skip with the clone
    command (a failure on CI, as any skip of a test not marked `gpu`); a variable naming a folder
    that is not a checkout: fail (a set-up mistake); einops missing beside one: as any package of
    the suite."""
    from pathlib import Path
    named = os.environ.get(OFFICIAL_REPO_ENV)
    repo = Path(named) if named else Path(repo_root) / ".official" / "VideoMAEv2"
    if not (repo / "engine_for_pretraining.py").is_file():
        if named:
            pytest.fail(f"{OFFICIAL_REPO_ENV}={named} is not a checkout of OpenGVLab/VideoMAEv2 "
                        "(no engine_for_pretraining.py there)", pytrace=False)
        pytest.skip(f"{NO_OFFICIAL_CHECKOUT} at {repo} or ${OFFICIAL_REPO_ENV}: `git clone "
                    f"https://github.com/OpenGVLab/VideoMAEv2 {repo}` to run it", allow_module_level=True)
    module("einops")
    return repo
