"""The suite's own rules for skips (needs.py, conftest.py), checked by running pytest on small
test files with this suite's conftest loaded, once as on CI and once as on a laptop:

- a package that is not installed: skip locally (with the install command), fail on CI;
- a package that is installed but raises on import: fail everywhere;
- any other skip of a test not marked `gpu`: allowed locally, a failure on CI (no CUDA here);
- a whole module skipped at collection: the CI run still exits non-zero;
- the tests marked `official_checkout` are deselected unless asked for (CI has no checkout);
  asked for without one they skip with the clone command, a failure on CI like any other skip;
- the closing summary counts the skips, gpu-marked and other.
"""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow,    # each case starts pytest (and torch) in a fresh process
              pytest.mark.skipif(torch.cuda.is_available(),
                                 reason="the CI rule for plain skips applies on machines without CUDA")]

TESTS = Path(__file__).resolve().parent

FILES = {
    "test_missing.py": "import needs\n\ndef test_missing():\n    needs.module('no_such_package_x1')\n",
    "test_broken.py": "import needs\n\ndef test_broken():\n    needs.module('broken_pkg_x1')\n",
    "test_plain_skip.py": "import pytest\n\ndef test_plain_skip():\n    pytest.skip('no reason')\n",
    "test_gpu.py": "import pytest\n\n@pytest.mark.gpu\ndef test_gpu():\n    pass\n",
    "test_fine.py": "def test_fine():\n    assert True\n",
}
MODULE_SKIP = {"test_module_skip.py": "import pytest\npytest.skip('whole module', allow_module_level=True)\n"}


def run_pytest(tmp_path, files, ci: bool, plugins=()):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "broken_pkg_x1").mkdir(exist_ok=True)
    (tmp_path / "broken_pkg_x1" / "__init__.py").write_text("raise OSError('libfoo.so: cannot open')\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(tmp_path), env.get("PYTHONPATH", "")])
    if ci:
        env["CI"] = "true"
    xml = tmp_path / f"report-{ci}.xml"
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider",
                          *[a for p in plugins for a in ("-p", p)],
                          "--rootdir", str(tmp_path), "-c", os.devnull, "-rs", f"--junitxml={xml}",
                          *files], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    outcomes = {}
    for case in ET.parse(xml).iter("testcase"):
        kids = {c.tag: (c.get("message") or "") for c in case}
        kind = next((k for k in ("failure", "error", "skipped") if k in kids), "passed")
        outcomes[case.get("name")] = (kind, kids.get(kind, ""))
    return res, outcomes


def test_locally_missing_skips_with_the_install_command_and_the_rest_fails(tmp_path):
    res, got = run_pytest(tmp_path, FILES, ci=False)
    assert got["test_missing"][0] == "skipped" and "not installed" in got["test_missing"][1]
    assert "pip install torch==2.13.0 -e '.[test]'" in got["test_missing"][1]
    assert got["test_broken"][0] == "failure" and "installed but broken" in got["test_broken"][1]
    assert "libfoo.so" in got["test_broken"][1]
    assert got["test_plain_skip"][0] == "skipped" and got["test_gpu"][0] == "skipped"
    assert got["test_fine"][0] == "passed"
    assert "skipped: 1 marked gpu, 2 OTHER" in res.stdout, res.stdout[-2000:]
    assert res.returncode == 1                               # the broken package


def test_on_ci_only_gpu_tests_may_skip(tmp_path):
    res, got = run_pytest(tmp_path, FILES, ci=True)
    # failed by needs.py itself, not only by the conftest safety net that catches any plain skip
    assert got["test_missing"][0] == "failure"
    assert "CI=true, so this is a failure, not a skip" in got["test_missing"][1]
    assert got["test_broken"][0] == "failure"
    assert got["test_plain_skip"][0] == "failure"
    assert "only tests marked `gpu` may skip" in res.stdout
    assert got["test_gpu"] == ("skipped", "needs a CUDA device (run `pytest -m gpu` on a GPU machine)")
    assert got["test_fine"][0] == "passed"
    assert "skipped: 1 marked gpu (no CUDA device here)" in res.stdout, res.stdout[-2000:]


def test_on_ci_a_module_skipped_at_collection_fails_the_run(tmp_path):
    res, _ = run_pytest(tmp_path, {**MODULE_SKIP, "test_fine.py": FILES["test_fine.py"]}, ci=True)
    assert "1 OTHER" in res.stdout and res.returncode == 1, res.stdout[-2000:]


OFFICIAL_ABSENT = {
    # the test looks for a checkout in an empty folder
    "test_official_absent.py": "import pytest, needs\n\n@pytest.mark.official_checkout\n"
                               "def test_official_absent(tmp_path):\n    needs.official_checkout(str(tmp_path))\n",
    "pytest_markers.py": "def pytest_configure(config):\n"
                         "    config.addinivalue_line('markers', 'official_checkout: runs the official code')\n",
}


def test_without_a_checkout_an_official_test_skips_locally_and_fails_on_ci(tmp_path, monkeypatch):
    monkeypatch.delenv("VMAE2_FAST_OFFICIAL_REPO", raising=False)
    res, got = run_pytest(tmp_path, OFFICIAL_ABSENT, ci=False, plugins=("pytest_markers",))
    assert got["test_official_absent"][0] == "skipped", res.stdout[-2000:]
    assert "no checkout of the official code (OpenGVLab/VideoMAEv2)" in got["test_official_absent"][1]
    assert "git clone https://github.com/OpenGVLab/VideoMAEv2" in got["test_official_absent"][1]
    res, got = run_pytest(tmp_path, OFFICIAL_ABSENT, ci=True, plugins=("pytest_markers",))
    assert got["test_official_absent"][0] == "failure"
    assert "only tests marked `gpu` may skip" in got["test_official_absent"][1]
    assert res.returncode == 1


def test_a_variable_naming_a_folder_that_is_no_checkout_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("VMAE2_FAST_OFFICIAL_REPO", str(tmp_path / "nothing-here"))
    res, got = run_pytest(tmp_path, OFFICIAL_ABSENT, ci=False, plugins=("pytest_markers",))
    assert got["test_official_absent"][0] == "failure"
    assert "is not a checkout of OpenGVLab/VideoMAEv2" in got["test_official_absent"][1]


def test_the_official_checkout_tests_run_only_when_asked_for():
    """The project's own settings (pyproject addopts): a plain run, CI's, leaves them out."""
    def collected(*args):
        res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                              *args, "tests/test_official_code.py"], cwd=TESTS.parent, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        return {ln for ln in res.stdout.splitlines() if "::" in ln}
    real = "tests/test_official_code.py::test_the_real_official_code_computes_our_loss_and_every_gradient"
    plain, asked = collected(), collected("-m", "official_checkout")
    assert real not in plain and len(plain) > 1      # the stand-in checkout's tests still run
    assert asked == {real}
