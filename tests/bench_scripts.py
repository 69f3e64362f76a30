"""The bench/ scripts, importable from the tests.

bench/ is a folder of scripts, not a package: `python bench/x.py` finds the harness and the
other modules beside it because Python puts the script's folder first on sys.path. The tests
put the folder LAST on sys.path (so that nothing installed is shadowed by a bench module's name)
and import a script by its name, as the scripts import each other.
"""
import importlib
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))


def script(name: str):
    """The module of bench/<name>.py (imported once, as the scripts import each other)."""
    module = importlib.import_module(name)
    if Path(module.__file__).resolve().parent != BENCH:
        raise ImportError(f"`import {name}` found {module.__file__}, not bench/{name}.py")
    return module


def report(folder: Path, pattern: str = "*.jsonl") -> dict:
    """The one records file matching `pattern` in `folder`, read as JSON lines: the run record's
    fields, `rows` (the measurements, in the order written) and `end` (None: the run stopped)."""
    (path,) = Path(folder).glob(pattern)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["record"] == "run" and all(r["record"] in ("row", "end") for r in lines[1:])
    return {**lines[0], "path": path, "rows": [r for r in lines if r["record"] == "row"],
            "end": next((r for r in lines if r["record"] == "end"), None)}
