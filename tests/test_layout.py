"""The layering rules of the package, checked on every module's imports (read with `ast`, nothing
is executed): dependencies point one way, so each idea keeps its one home."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "vmae2_fast"
ENTRY_POINTS = {"pretrain", "post_pretrain", "finetune", "evaluate", "distill", "extract_features",
                "hf_export"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> set:
    """Absolute names of the vmae2_fast modules `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("vmae2_fast")}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            if not name.startswith("vmae2_fast"):
                continue
            out.add(name)
            out |= {f"{name}.{a.name}" for a in node.names}      # `from . import ops` imports ops
    return out


def modules(subpackage: str):
    folder = PKG / subpackage if subpackage else PKG
    return sorted(folder.rglob("*.py")) if subpackage else sorted(folder.glob("*.py"))


def offending(paths, forbidden_prefixes):
    bad = {}
    for path in paths:
        hits = sorted(m for m in imported_modules(path)
                      if any(m == f or m.startswith(f + ".") for f in forbidden_prefixes))
        if hits:
            bad[str(path.relative_to(ROOT))] = hits
    return bad


def test_data_plane_knows_no_training_loop():
    assert offending(modules("data"), ["vmae2_fast.train", "vmae2_fast.stages"]) == {}


def test_models_import_neither_data_nor_train():
    assert offending(modules("models"), ["vmae2_fast.data", "vmae2_fast.train", "vmae2_fast.stages"]) == {}


def test_no_entry_point_imports_another():
    entries = [PKG / f"{name}.py" for name in sorted(ENTRY_POINTS)]
    assert all(p.exists() for p in entries)
    forbidden = [f"vmae2_fast.{name}" for name in ENTRY_POINTS]
    assert offending(entries, forbidden) == {}
    others = [p for p in modules("") if p.stem not in ENTRY_POINTS] + modules("stages") + \
        modules("train") + modules("data") + modules("models") + modules("ops")
    assert offending(others, forbidden) == {}, "library code must not import a command-line module"


def test_kernels_stand_alone():
    """kernels/ is importable by other codebases: it never imports the rest of vmae2_fast."""
    bad = {}
    for path in sorted((ROOT / "kernels").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad.update({path.name: n for n in names if n.startswith("vmae2_fast")})
            if isinstance(node, ast.ImportFrom) and node.level > 1:
                bad[path.name] = "relative import out of kernels/"
    assert bad == {}


def test_train_and_ops_do_not_import_stages_or_data():
    assert offending(modules("train") + modules("ops"), ["vmae2_fast.stages", "vmae2_fast.data"]) == {}


@pytest.mark.parametrize("rule", [test_data_plane_knows_no_training_loop, test_models_import_neither_data_nor_train])
def test_the_checker_catches_a_planted_import(rule, tmp_path, monkeypatch):
    """The rules can fail: a module that imports across the line is reported."""
    target = "data" if rule is test_data_plane_knows_no_training_loop else "models"
    planted = PKG / target / "_planted_for_test.py"
    planted.write_text("from ..train import loop  # noqa\n")
    try:
        with pytest.raises(AssertionError):
            rule()
    finally:
        planted.unlink()


def test_every_module_imports_without_pyav(tmp_path):
    """PyAV is imported where a video is read or written, never at import time: the GPU machines
    have no PyAV, and the GPU tests and benchmarks that read no video must still load there. Each
    module of the package is imported in a process where `import av` fails."""
    import json
    import subprocess
    import sys

    from hidden_packages import hide
    modules = sorted(module_name(p) for p in PKG.rglob("*.py") if p.name != "__main__.py")
    code = ("import importlib, json\nbad = []\n"
            f"for m in {modules!r}:\n"
            "    try:\n        importlib.import_module(m)\n"
            "    except ModuleNotFoundError as e:\n"
            "        if e.name == 'av': bad.append(m)\n"
            "print(json.dumps(bad))\n")
    env = {**__import__("os").environ, "PYTHONPATH": hide(tmp_path / "hidden")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    needs = json.loads(out.stdout.strip().splitlines()[-1])
    # the re-encoder and its transcoder are video tools through and through: they import av at once
    assert set(needs) <= {"vmae2_fast.data.transcode", "vmae2_fast.data.reencode"}, needs
    assert "vmae2_fast.data" in modules and "vmae2_fast.stages.pretrain" in modules


def sys_path_edits(source: str) -> list:
    """The lines of `source` that change sys.path: a call of one of its methods (insert, append,
    extend...), an assignment to it or to an item of it, `site.addsitedir`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        targets = []
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if ast.unparse(owner) == "sys.path" and node.func.attr in (
                    "insert", "append", "extend", "remove", "pop", "clear", "__setitem__", "__iadd__"):
                lines.append(node.lineno)
            if ast.unparse(node.func) == "site.addsitedir":
                lines.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for t in targets:
            if ast.unparse(t.value if isinstance(t, ast.Subscript) else t) == "sys.path":
                lines.append(node.lineno)
    return sorted(set(lines))


def test_bench_scripts_do_not_edit_sys_path():
    """`python bench/x.py` puts bench/ first on sys.path: the scripts import the harness and each
    other as they are, and a script that edits sys.path hides where its imports come from."""
    bad = {p.name: sys_path_edits(p.read_text(encoding="utf-8")) for p in sorted((ROOT / "bench").glob("*.py"))}
    assert {name: lines for name, lines in bad.items() if lines} == {}


@pytest.mark.parametrize("source", [
    "import sys\nsys.path.insert(0, 'x')\n",
    "import sys\nsys.path.append('x')\n",
    "import sys\nsys.path[:0] = ['x']\n",
    "import sys\nsys.path += ['x']\n",
    "import sys\nsys.path = ['x'] + sys.path\n",
    "import site\nsite.addsitedir('x')\n",
])
def test_the_sys_path_checker_catches_an_edit(source):
    assert sys_path_edits(source) == [2]


def test_the_sys_path_checker_lets_reading_it_be():
    assert sys_path_edits("import sys\nprint(sys.path[0], list(sys.path))\n") == []


def test_bench_modules_shadow_nothing(tmp_path):
    """A bench script runs with bench/ first on sys.path, so a bench module named like an
    installed package (Hugging Face's `kernels`, which transformers imports) or a folder of this
    repository would be imported in its place."""
    import subprocess
    import sys
    names = sorted(p.stem for p in (ROOT / "bench").glob("*.py"))
    code = (f"import importlib.util\nprint([n for n in {names!r} if importlib.util.find_spec(n)])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"installed modules named like bench modules: {out.stdout}"
    top = {p.stem for p in ROOT.iterdir() if p.is_dir() or p.suffix == ".py"}
    assert not top & set(names)
