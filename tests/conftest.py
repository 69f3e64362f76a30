"""Shared pytest fixtures, and the rules for skips (see needs.py for the packages)."""
import pytest
import torch

from op_cases import enable_interpreter
import needs
from needs import on_ci

# Before any test imports a Triton kernel (vmae2_fast.kernels): without CUDA the Triton kernels can only run
# on the interpreter, and triton fixes that choice when the kernels are first imported.
enable_interpreter()


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A tiny synthetic video dataset (6 classes x (2 train + 1 val) VP9 videos, 24 frames, 48x48).

    The parameters are also exposed as attributes so tests can re-render the raw frames.
    """
    needs.module("av")          # PyAV writes the videos (a GPU machine may lack it: skip there)
    from vmae2_fast.data.synthetic import ensure_synthetic_dataset
    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    ds = ensure_synthetic_dataset(str(root), videos_per_class_train=2, videos_per_class_val=1,
                                  num_frames=24, size=48, fps=12, seed=0, progress=False)
    ds.params = dict(videos_per_class_train=2, videos_per_class_val=1, num_frames=24, size=48,
                     seed=0)
    return ds


@pytest.fixture(scope="session")
def official_repo():
    """The checkout of the official code (needs.official_checkout); tests using it are marked
    `official_checkout`, whose skip for want of a checkout CI allows."""
    return needs.official_checkout()


def pytest_collection_modifyitems(config, items):
    """GPU tests skip cleanly, with a reason, where no CUDA device exists."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _skip_reason(report) -> str:
    return report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)


def _allowed_skip(report) -> str | None:
    """Why CI may let this skip pass: "gpu" (a test marked gpu, on a machine without CUDA), or
    "official_checkout" (a test marked so, skipped because no checkout of the official code is
    there: needs.official_checkout); None for any other skip."""
    keywords = getattr(report, "keywords", {})
    if "gpu" in keywords:
        return "gpu"
    if "official_checkout" in keywords and needs.NO_OFFICIAL_CHECKOUT in _skip_reason(report):
        return "official_checkout"
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On CI, on a machine without CUDA, a skip of a test not marked `gpu` is a failure: it means
    something the suite should have run did not (a package, a compiler, a set-up mistake).
    (On a GPU machine the CPU-interpreter tests legitimately skip.) The one other exception: a
    test marked `official_checkout` skipped because no checkout of the official code is there
    (it is never committed; `needs.official_checkout`)."""
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and not hasattr(report, "wasxfail") and on_ci()
            and not torch.cuda.is_available() and _allowed_skip(report) is None):
        report.outcome = "failed"
        report.longrepr = (f"CI=true: {item.nodeid} skipped ({_skip_reason(report)}); on CI only tests "
                           "marked `gpu` may skip on a machine without CUDA (and those marked "
                           "`official_checkout` where no official checkout is)")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The closing summary says how many tests skipped, and whether any was not a `gpu` test."""
    skipped = terminalreporter.stats.get("skipped", [])
    gpu = sum(1 for r in skipped if _allowed_skip(r) == "gpu")
    official = sum(1 for r in skipped if _allowed_skip(r) == "official_checkout")
    other = len(skipped) - gpu - official
    parts = [f"{gpu} marked gpu" + ("" if other else " (no CUDA device here)")]
    if official:
        parts.append(f"{official} marked official_checkout (no checkout of the official code here)")
    if other:
        parts.append(f"{other} OTHER (a missing package or set-up; see the reasons above)")
    terminalreporter.write_sep("-", "skipped: " + ", ".join(parts), yellow=bool(other), bold=bool(other))


def pytest_sessionfinish(session, exitstatus):
    """On CI, a non-gpu skip the report hook cannot turn into a failure (a whole module skipped
    at collection) still fails the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if not (on_ci() and reporter and not torch.cuda.is_available()):
        return
    other = [r for r in reporter.stats.get("skipped", []) if _allowed_skip(r) is None]
    if other and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
