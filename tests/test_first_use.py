"""First use says what it is doing: generating the embedded dataset and compiling the C++ ops
each print a line when they start and one with the time they took (on stderr, so API users see
them too); the second use is silent."""
import re

from vmae2_fast.data.synthetic import ensure_synthetic_dataset
from vmae2_fast.ops import cpp


def test_generating_the_dataset_says_so_with_its_time(tmp_path, capsys):
    kw = dict(videos_per_class_train=1, videos_per_class_val=0, num_frames=4, size=16, progress=False)
    ensure_synthetic_dataset(str(tmp_path / "ds"), **kw)
    err = capsys.readouterr().err
    assert "generating the synthetic dataset once (6 classes, 6 videos" in err
    assert re.search(r"synthetic dataset generated in \d+ s", err), err
    ensure_synthetic_dataset(str(tmp_path / "ds"), **kw)
    assert capsys.readouterr().err == ""


def test_compiling_the_cpp_ops_says_so_with_its_time(tmp_path, monkeypatch, capsys):
    from torch.utils import cpp_extension
    monkeypatch.setenv("VMAE2_FAST_CACHE", str(tmp_path))         # nothing compiled there yet
    monkeypatch.setattr(cpp, "_module", None)
    monkeypatch.setattr(cpp, "_error", None)
    built = []

    def fake_load(**kw):                                          # the real build takes ~1 min
        built.append(kw["build_directory"])
        return "the module"
    monkeypatch.setattr(cpp_extension, "load", fake_load)
    assert cpp.load() == "the module" and built == [str(cpp.build_dir())]
    err = capsys.readouterr().err
    assert f"compiling the C++ CPU ops once into {cpp.build_dir()}" in err
    assert re.search(r"C\+\+ CPU ops compiled in \d+ s", err), err
    (cpp.build_dir() / "vmae2_fast_cpu_ops.so").write_bytes(b"")  # built: later loads are quiet
    monkeypatch.setattr(cpp, "_module", None)
    cpp.load()
    assert capsys.readouterr().err == ""


def test_a_build_killed_half_way_does_not_hang_the_next_run(tmp_path):
    """torch's own guard is a `lock` file that it waits on without end; a build killed half-way
    leaves it behind (this hung a CI run for 90 minutes). The next run must clear it and load."""
    import shutil
    import subprocess
    import sys

    from needs import cpp_ops
    built = cpp_ops().build_dir()                                  # built once for the suite
    copy = tmp_path / "torch_extensions" / built.name
    shutil.copytree(built, copy, ignore=shutil.ignore_patterns("lock", "build.flock"))
    (copy / "lock").write_bytes(b"")                              # what the killed build left
    probe = "from vmae2_fast.ops import cpp; cpp.load(); print('loaded')"
    env = {**__import__("os").environ, "VMAE2_FAST_CACHE": str(tmp_path)}
    try:
        run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                             text=True, timeout=180)
    except subprocess.TimeoutExpired:
        raise AssertionError("the C++ ops waited on a lock file that no live build holds") from None
    assert run.returncode == 0 and "loaded" in run.stdout, run.stderr
    assert not (copy / "lock").exists()
