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
