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


@pytest.fixture(autouse=True)
def _float32_matmul_flags():
    """A training stage sets torch's process-wide TF32 flags on CUDA (`stages/build.py`): each
    test starts from the flags the session started with, so no test runs on another's setting."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.fixture(scope="session")
def tiny_classifier(tiny_synthetic, tmp_path_factory):
    """A vit_micro classifier fine-tuned for 3 steps on the tiny set (32x32, 4 frames at rate 2,
    short side 40 so that the test crops differ): its checkpoint-best.pth, which records its
    clip settings and class names. A high learning rate and a head initialised at full scale
    give logits of order 1, so that comparisons of its outputs are not comparisons of near-zeros."""
    from vmae2_fast import finetune
    out = tmp_path_factory.mktemp("tiny_classifier")
    argv = ["--model", "vit_micro", "--preset", "cpu_demo", "--train-list", tiny_synthetic.train_list,
            "--val-list", tiny_synthetic.val_list, "--data-root", tiny_synthetic.root,
            "--output-dir", str(out), "--input-size", "32", "--short-side-size", "40",
            "--num-frames", "4", "--sampling-rate", "2", "--batch-size", "4", "--epochs", "1",
            "--warmup-epochs", "0", "--num-workers", "0", "--aa", "none", "--no-progress",
            "--lr", "0.5", "--init-scale", "1.0"]
    assert finetune.main(argv) == 0
    return out / "checkpoint-best.pth"


@pytest.fixture(scope="session")
def official_repo():
    """The checkout of the official code (needs.official_checkout) for the tests marked
    `official_checkout`, which run only when asked for (`pytest -m official_checkout`)."""
    return needs.official_checkout()


def pytest_collection_modifyitems(config, items):
    """GPU tests skip cleanly, with a reason, where no CUDA device exists."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _is_gpu_skip(report) -> bool:
    return "gpu" in getattr(report, "keywords", {})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On CI, on a machine without CUDA, a skip of a test not marked `gpu` is a failure: it means
    something the suite should have run did not (a package, a compiler, a set-up mistake).
    (On a GPU machine the CPU-interpreter tests legitimately skip.)"""
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and not hasattr(report, "wasxfail") and on_ci()
            and not torch.cuda.is_available() and "gpu" not in item.keywords):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"CI=true: {item.nodeid} skipped ({reason}); on CI only tests marked "
                           "`gpu` may skip on a machine without CUDA")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The closing summary says how many tests skipped, and whether any was not a `gpu` test."""
    skipped = terminalreporter.stats.get("skipped", [])
    gpu = sum(1 for r in skipped if _is_gpu_skip(r))
    other = len(skipped) - gpu
    terminalreporter.write_sep(
        "-", f"skipped: {gpu} marked gpu (no CUDA device here)" if not other else
        f"skipped: {gpu} marked gpu, {other} OTHER (a missing package or set-up; see the reasons above)",
        yellow=bool(other), bold=bool(other))


def pytest_sessionfinish(session, exitstatus):
    """On CI, a non-gpu skip the report hook cannot turn into a failure (a whole module skipped
    at collection) still fails the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if not (on_ci() and reporter and not torch.cuda.is_available()):
        return
    other = [r for r in reporter.stats.get("skipped", []) if not _is_gpu_skip(r)]
    if other and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
