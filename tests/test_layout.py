"""The layering rules of the package, checked on every module's imports (read with `ast`, nothing
is executed): dependencies point one way, so each idea keeps its one home."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "vmae2_fast"
ENTRY_POINTS = {"pretrain", "post_pretrain", "finetune", "evaluate", "distill", "extract_features",
                "hf_export", "predict", "onnx_export", "plan"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_main_guard(node) -> bool:
    """``if __name__ == "__main__":``, whose body runs only as ``python -m``, never on import."""
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def _walk(tree, skip_main: bool):
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if not (skip_main and _is_main_guard(node)):
            todo.extend(ast.iter_child_nodes(node))


def imported_modules(path: Path, skip_main: bool = False) -> set:
    """Absolute names of the vmae2_fast modules `path` imports (relative imports resolved);
    ``skip_main``: leave out what only its ``if __name__ == "__main__":`` block imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = set()
    for node in _walk(tree, skip_main):
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


def offending(paths, forbidden_prefixes, skip_main: bool = False):
    bad = {}
    for path in paths:
        hits = sorted(m for m in imported_modules(path, skip_main)
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


TOOLS = PKG / "data" / "tools"
# `python -m` paths that answer with a tool's command for one release, so that scripts written for
# them keep running
OLD_COMMANDS = {"vmae2_fast.data.index": "vmae2_fast.data.tools.index",
                "vmae2_fast.data.reencode": "vmae2_fast.data.tools.reencode",
                "vmae2_fast.data.k710": "vmae2_fast.data.tools.k710"}


def runtime_modules():
    """Every module of the package except the offline tools."""
    return [p for p in sorted(PKG.rglob("*.py")) if TOOLS not in p.parents]


def test_runtime_never_imports_the_offline_tools():
    """The offline tools (re-encoder, transcoder, K710 builder, index command) are run by hand
    before training: no module a run loads imports them. A ``python -m`` block that forwards an
    old command path to its tool is not an import of the runtime."""
    assert TOOLS.is_dir() and (TOOLS / "reencode.py").is_file()
    assert offending(runtime_modules(), ["vmae2_fast.data.tools"], skip_main=True) == {}


def test_the_index_and_the_sampling_rules_know_no_decoder():
    """What every decoder shares (lists, the index, the media naming and error, the batch order,
    the clip sampling rules, the typed batches) imports neither decoder package: a type both
    decoders use has its home outside both."""
    neutral = [PKG / "data" / f"{name}.py" for name in
               ("lists", "index", "media", "sampler", "clip_sampling", "batches", "pixels")]
    assert all(p.exists() for p in neutral)
    assert offending(neutral, ["vmae2_fast.data.pyav", "vmae2_fast.data.dali"], skip_main=True) == {}


@pytest.mark.parametrize("old", sorted(OLD_COMMANDS))
def test_old_tool_commands_still_answer(old):
    """``python -m`` with a tool's old path runs the tool (its help names the new path)."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", old, "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"python -m {OLD_COMMANDS[old]}" in out.stdout


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


def test_kernels_folder_holds_triton_kernels_only_and_is_no_package():
    """kernels/ has no __init__.py (a regular package there would answer `import kernels` from the
    clone's root, hiding Hugging Face's package of that name), and every module in it is a Triton
    kernel module."""
    folder = ROOT / "kernels"
    assert not (folder / "__init__.py").exists()
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "triton" in imported, f"{path.name} is not a Triton kernel module"


def test_the_engine_imports_no_kernel_package_statically():
    """Only ops/backends.py loads the Triton kernels, on first use (triton fixes interpreted or
    compiled when it decorates them); the specs (each op's `reference`) import neither triton nor
    vmae2_fast.kernels."""
    bad = {}
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if isinstance(node, ast.ImportFrom) and node.level and "kernels" in (node.module or ""):
                names.append("vmae2_fast.kernels")
            hits = [n for n in names if n == "triton" or n.startswith(("triton.", "vmae2_fast.kernels"))]
            if hits:
                bad[str(path.relative_to(ROOT))] = hits
    assert bad == {}


def _run_from_root(code: str, env=None, args=()):
    import os
    import subprocess
    import sys
    out = subprocess.run([sys.executable, *args, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_transformers_videomae_imports_from_the_repository_root():
    """transformers imports Hugging Face's `kernels` package when it is installed (the test extra
    installs it); from the clone's root, where every README command runs, nothing of ours may
    answer to that name."""
    import needs
    needs.transformers()
    out = _run_from_root(
        "import importlib.util\n"
        "from transformers import VideoMAEForPreTraining, VideoMAEConfig\n"
        "VideoMAEForPreTraining(VideoMAEConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,"
        " intermediate_size=64, decoder_hidden_size=16, decoder_num_hidden_layers=1,"
        " decoder_num_attention_heads=2, decoder_intermediate_size=32, image_size=32, num_frames=4))\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "print(spec.origin if spec else None)\n")
    origin = out.strip().splitlines()[-1]
    assert origin == "None" or not origin.startswith(str(ROOT / "kernels")), origin


# Packages torch itself imports; with numpy, the only ones a bare `pip install torch numpy` has.
_TORCH_ONLY = {"torch", "numpy", "typing_extensions", "sympy", "mpmath", "networkx", "jinja2", "markupsafe",
               "filelock", "fsspec", "functorch", "torchgen", "vmae2_fast"}


def test_the_source_tree_imports_without_installing():
    """`PYTHONPATH=. python -c "import vmae2_fast.models, vmae2_fast.ops"` with only torch and
    numpy: the child starts without site (so no editable-install finder), sees site-packages only
    for torch and numpy (anything else raises ModuleNotFoundError), and must find the package, its
    ops and the Triton kernel folder from the source tree."""
    import site
    sites = [p for p in site.getsitepackages() if Path(p, "torch").is_dir()]
    assert sites, "torch is not installed in a site-packages folder"
    code = f"""
import importlib.util, sys
sys.path.append({sites[0]!r})
class OnlyTorchAndNumpy:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in sys.stdlib_module_names or top in {sorted(_TORCH_ONLY)!r}:
            return None
        raise ModuleNotFoundError(f"No module named {{top!r}} (hidden)", name=top)
sys.meta_path.insert(0, OnlyTorchAndNumpy())
import vmae2_fast.models, vmae2_fast.ops
print(vmae2_fast.__file__)
print(importlib.util.find_spec("vmae2_fast.kernels.patch_embed").origin)
print("triton" in sys.modules)
"""
    lines = _run_from_root(code, env={"PYTHONPATH": str(ROOT)}, args=("-S",)).strip().splitlines()
    assert lines[-3] == str(PKG / "__init__.py")
    assert lines[-2] == str(ROOT / "kernels" / "patch_embed.py")
    assert lines[-1] == "False"


def test_train_and_ops_do_not_import_stages_or_data():
    assert offending(modules("train") + modules("ops"), ["vmae2_fast.stages", "vmae2_fast.data"]) == {}


@pytest.mark.parametrize("rule", [test_data_plane_knows_no_training_loop, test_models_import_neither_data_nor_train,
                                  test_runtime_never_imports_the_offline_tools])
def test_the_checker_catches_a_planted_import(rule, tmp_path, monkeypatch):
    """The rules can fail: a module that imports across the line is reported."""
    target, line = {test_data_plane_knows_no_training_loop: ("data", "from ..train import loop"),
                    test_models_import_neither_data_nor_train: ("models", "from ..train import loop"),
                    test_runtime_never_imports_the_offline_tools: ("stages", "from ..data.tools import k710"),
                    }[rule]
    planted = PKG / target / "_planted_for_test.py"
    planted.write_text(line + "  # noqa\n")
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
    assert set(needs) <= {"vmae2_fast.data.tools.transcode", "vmae2_fast.data.tools.reencode"}, needs
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
