"""bench/gpu_tests.py, pytest with records: a row per test written when the test completes (a
run stopped at its cap keeps them), failures with their `E` line, and a test file that needs the
missing PyAV skipped with that reason while any other collection error stays an error."""
import os
import subprocess
import sys
from pathlib import Path

from bench_scripts import BENCH, script
from hidden_packages import hide

records = script("records")

TESTS = {
    "test_a.py": "def test_passes():\n    pass\n\n"
                 "def test_fails():\n    assert 1 == 2, 'one is not two'\n",
    # the rows of the tests before it are on disk while this one runs
    "test_b.py": "import glob, json, os\n\n"
                 "def test_sees_the_earlier_rows():\n"
                 "    (path,) = glob.glob(os.path.join(os.environ['RECORDS_DIR'], 'pytest-*.jsonl'))\n"
                 "    ids = [json.loads(x).get('nodeid', '') for x in open(path)]\n"
                 "    assert any(i.endswith('test_a.py::test_passes') for i in ids)\n"
                 "    assert any(i.endswith('test_a.py::test_fails') for i in ids)\n",
    "test_c.py": "import pytest\n\n@pytest.mark.skip(reason='not here')\ndef test_skipped():\n    pass\n",
    "test_needs_av.py": "import av\n\ndef test_decodes():\n    pass\n",
    "test_broken.py": "import a_module_nobody_installed\n",
}


def test_rows_as_tests_complete_pyav_skips_and_other_collection_errors_stay(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    for name, text in TESTS.items():
        (folder / name).write_text(text)
    out = tmp_path / "out"
    env = {**os.environ, "RECORDS_DIR": str(out), "PYTHONPATH": hide(tmp_path / "shim", "av")}
    res = subprocess.run([sys.executable, str(BENCH / "gpu_tests.py"), "--out", str(out), "--tag", "x", "--",
                          str(folder), "-p", "no:cacheprovider", "--rootdir", str(folder), "-v",
                          "--continue-on-collection-errors"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-2000:]       # pytest's: a test failed
    (path,) = out.glob("pytest-*-x.jsonl")
    header, rows, end = records.read_records(path)
    assert end is not None and header["args"][0] == str(folder)
    got = {Path(r["nodeid"]).name: (r["outcome"], r["phase"], r["message"]) for r in rows}
    assert got["test_a.py::test_passes"][0] == "passed"
    assert got["test_a.py::test_fails"][:2] == ("failed", "call") and "one is not two" in got["test_a.py::test_fails"][2]
    assert got["test_b.py::test_sees_the_earlier_rows"][0] == "passed"
    assert got["test_c.py::test_skipped"] == ("skipped", "setup", "not here")
    assert got["test_needs_av.py"][:2] == ("skipped", "collect") and "PyAV" in got["test_needs_av.py"][2]
    assert got["test_broken.py"][:2] == ("error", "collect") and "a_module_nobody_installed" in got["test_broken.py"][2]
    md = path.with_suffix(".md").read_text()
    assert "1 error, 1 failed, 2 passed, 2 skipped" in md and "test_fails" in md and "one is not two" in md
