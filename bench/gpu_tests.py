"""pytest with records: the GPU suite's test runs (its smoke tests and `pytest -m gpu`), one record
per test written when the test completes, so that a run stopped at its time cap keeps every
outcome it reached (pytest's own JUnit file is written only at the end).

    python bench/gpu_tests.py --out DIR --tag gpu -- -m gpu tests -v --timeout 120 --durations 20 \\
        --junitxml DIR/junit.xml

Everything after `--` is pytest's command line. A test file that cannot be imported because
PyAV is not installed (the GPU machines have none unless its wheel is brought) is reported as
skipped with that reason, not as a collection error: the other tests run and the run can pass.
Any other collection error stays an error. Writes <out>/pytest-<machine>[-<tag>].jsonl (the
environment and pytest's arguments; a row per test: its node id, outcome, seconds and the first
line of its failure or skip reason) and .md (render.py); the exit status is pytest's.
"""
from __future__ import annotations

import argparse
import sys

import pytest
import torch

from harness import Records, add_out_flag, environment, result_stem

from vmae2_fast.cli import exit_code

PYAV_MISSING = "No module named 'av'"


def _first_line(longrepr) -> str:
    """The line that says what happened: a skip's reason, a failure's `E ...` line."""
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple):             # a skip: (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    text = str(longrepr)
    errors = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
    return (errors[0] if errors else text.strip().splitlines()[-1] if text.strip() else "")[:300]


class RecordsPlugin:
    """Writes a row when each test's teardown has run (its outcome is then final) and one for
    each collection error; turns "No module named 'av'" collection errors into skips."""

    def __init__(self, records: Records):
        self.records = records
        self.phases: dict[str, list] = {}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_make_collect_report(self, collector):
        outcome = yield
        report = outcome.get_result()
        if report.failed and PYAV_MISSING in str(report.longrepr):
            why = "Skipped: imports PyAV, which is not installed (bring its wheel: docs/gpu-suite.md)"
            outcome.force_result(pytest.CollectReport(report.nodeid, "skipped",
                                                      (str(collector.path), 0, why), []))

    def pytest_collectreport(self, report):
        if report.failed:
            self.records.add({"nodeid": report.nodeid, "outcome": "error", "phase": "collect", "seconds": 0.0,
                              "message": _first_line(report.longrepr)})
        elif report.skipped and report.nodeid:
            self.records.add({"nodeid": report.nodeid, "outcome": "skipped", "phase": "collect", "seconds": 0.0,
                              "message": _first_line(report.longrepr)})

    def pytest_runtest_logreport(self, report):
        self.phases.setdefault(report.nodeid, []).append(report)
        if report.when == "teardown":
            self.records.add(self._row(report.nodeid, self.phases.pop(report.nodeid)))

    @staticmethod
    def _row(nodeid: str, reports: list) -> dict:
        seconds = round(sum(r.duration for r in reports), 3)
        call = next((r for r in reports if r.when == "call"), None)
        # the phase that decided the outcome: the first that failed, else the first that skipped
        decisive = next((r for r in reports if r.failed), None) or next((r for r in reports if r.skipped), None)
        if decisive is not None and decisive.failed:
            outcome = "failed" if decisive.when == "call" else "error"
            message = _first_line(decisive.longrepr)
        elif call is not None and hasattr(call, "wasxfail"):
            outcome, message = ("xfailed" if call.skipped else "xpassed"), call.wasxfail
        elif decisive is not None:
            outcome, message = "skipped", _first_line(decisive.longrepr)
        else:
            outcome, message = "passed", ""
        return {"nodeid": nodeid, "outcome": outcome, "phase": decisive.when if decisive else "call",
                "seconds": seconds, "message": message}


def run(args) -> tuple[object, int]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = environment(device)
    header = {**env, "pytest": pytest.__version__, "args": args.pytest_args, "tag": args.tag}
    with Records(result_stem(args.out, "pytest", env["machine"], args.tag), "pytest", header) as records:
        status = pytest.main(args.pytest_args, plugins=[RecordsPlugin(records)])
    return records.path, int(status)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ours, pytest_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag", default="", help="appended to the result files' names")
    add_out_flag(p)
    args = p.parse_args(ours)
    args.pytest_args = pytest_args
    status = []

    def body():
        from render import render
        path, code = run(args)
        render(path)
        status.append(code)

    return exit_code(body) or (status[0] if status else 1)


if __name__ == "__main__":
    sys.exit(main())
