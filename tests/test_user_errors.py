"""Every user error ends with `error: ...` and exit code 2 before any compute, never a traceback:
output folders (a file in the way, no write permission, a read-only file system, a full disk),
lists and data roots, checkpoint files; and every command's --help names every model.

The output-folder cases run the real CLI in a subprocess. A read-only file system and a full disk
are real: a tmpfs mounted read-only, or filled up, inside a private mount namespace (`unshare
--user --map-root-user --mount`, no root needed); "not writable" runs the CLI as a user without
write permission (`unshare --user`, which drops root's override of file permissions). Where
unshare is not allowed these skip, and the unit tests below still cover the messages.
"""
import errno
import shlex
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch

from test_pretrain_loop import micro_flags
from vmae2_fast.cli import COMMANDS, main_for
from vmae2_fast.errors import OutputDirError
from vmae2_fast.models.zoo import MODEL_SPECS
from vmae2_fast.train import storage


def _unshare_works(*flags) -> bool:
    try:
        return subprocess.run(["unshare", *flags, "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


NAMESPACES = _unshare_works("--user", "--map-root-user", "--mount")
needs_mounts = pytest.mark.skipif(not NAMESPACES, reason="unshare --user --mount is not allowed here")
needs_userns = pytest.mark.skipif(not _unshare_works("--user"), reason="unshare --user is not allowed here")


def run_cli(argv, shell_before="", unshare=()):
    """`python -m vmae2_fast.pretrain ARGV` in a subprocess, optionally after shell commands in
    a private namespace; returns (exit code, stderr)."""
    cmd = shlex.join([sys.executable, "-m", "vmae2_fast.pretrain", *argv])
    full = ["sh", "-c", f"{shell_before} exec {cmd}"] if shell_before or unshare else shlex.split(cmd)
    res = subprocess.run([*(["unshare", *unshare] if unshare else []), *full], capture_output=True,
                         text=True, timeout=300)
    return res.returncode, res.stderr


def assert_user_error(code, err, *words):
    assert code == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert "error: " in err and all(w in err for w in words), err[-2000:]


def flags(ds, out, **extra):
    return micro_flags(ds, out, no_progress=True, kernels="reference", **extra)


# ------------------------------------------------------------------ output folders, real CLI
def test_output_dir_that_is_a_file(tiny_synthetic, tmp_path):
    (tmp_path / "run").write_text("a file")
    code, err = run_cli(flags(tiny_synthetic, tmp_path / "run"))
    assert_user_error(code, err, "is a file")


@needs_userns
def test_output_dir_without_write_permission(tiny_synthetic):
    # not under pytest's tmp_path: that folder is private (0700) to its owner
    with tempfile.TemporaryDirectory() as tmp:
        locked = Path(tmp) / "locked"
        locked.mkdir(mode=0o555)
        Path(tmp).chmod(0o755)
        code, err = run_cli(flags(tiny_synthetic, locked / "run"), unshare=("--user",))
        locked.chmod(0o755)
    assert_user_error(code, err, "not writable", "--output-dir")


def run_on_tmpfs(ds, tmp_path, options: str, then: str):
    """The CLI with --output-dir MNT/run on a fresh tmpfs (``options``), after ``then`` (shell,
    MNT for the mount point), in a private mount namespace."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    before = f"mount -t tmpfs {options} tmpfs {mnt} && {then.replace('MNT', str(mnt))} &&"
    return run_cli(flags(ds, mnt / "run"), before, ("--user", "--map-root-user", "--mount"))


@needs_mounts
def test_output_dir_on_a_read_only_file_system(tiny_synthetic, tmp_path):
    code, err = run_on_tmpfs(tiny_synthetic, tmp_path, "", "mkdir MNT/run && mount -o remount,ro MNT")
    assert_user_error(code, err, "read-only file system")


@needs_mounts
def test_output_dir_on_a_full_disk(tiny_synthetic, tmp_path):
    code, err = run_on_tmpfs(tiny_synthetic, tmp_path, "-o size=256k",
                             "(head -c 1048576 /dev/zero > MNT/filler 2>/dev/null; true)")
    assert_user_error(code, err, "no space")


# ------------------------------------------------------------------ the same messages, unit level
@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "no space"), (errno.EROFS, "read-only"),
                                        (errno.EACCES, "not writable")])
def test_probe_failures_are_output_dir_errors(tmp_path, monkeypatch, code, words):
    def refuse(*a, **k):
        raise OSError(code, "simulated")
    monkeypatch.setattr(storage.tempfile, "mkstemp", refuse)
    with pytest.raises(OutputDirError, match=words):
        storage.prepare_output_dir(tmp_path / "out")


def test_a_file_among_the_parents(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputDirError, match="is a file"):
        storage.prepare_output_dir(tmp_path / "f" / "run" / "deeper")
    storage.prepare_output_dir(tmp_path / "ok" / "run")               # a good one works
    assert (tmp_path / "ok" / "run").is_dir() and not list((tmp_path / "ok" / "run").iterdir())


def test_no_space_is_found_behind_torch_save():
    inner = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise inner
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")
    except RuntimeError as outer:
        assert storage.is_no_space(outer)
    assert not storage.is_no_space(RuntimeError("other"))


# ------------------------------------------------------------------ lists, data roots, checkpoints
def test_list_and_data_root_problems(tiny_synthetic, tmp_path, capsys):
    base = flags(tiny_synthetic, tmp_path / "x")
    assert main_for("pretrain", base + ["--data", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err
    assert main_for("pretrain", base + ["--data-root", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "none of the 12 videos" in err and "--data-root" in err
    (tmp_path / "empty.csv").write_text("\n")
    assert main_for("pretrain", base + ["--data", str(tmp_path / "empty.csv")]) == 2
    assert "empty" in capsys.readouterr().err
    assert main_for("pretrain", base + ["--max-bad-fraction", "1.5"]) == 2
    assert "--max-bad-fraction" in capsys.readouterr().err


def _bad_files(tmp_path, good: Path) -> dict:
    zipped = tmp_path / "zip.pth"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("readme.txt", "hello")
    files = {"empty": (tmp_path / "empty.pth", b""),
             "garbage": (tmp_path / "garbage.pth", b"this is not a checkpoint, just text"),
             "truncated": (tmp_path / "truncated.pth", good.read_bytes()[:5000])}
    for path, data in files.values():
        path.write_bytes(data)
    return {"empty": "is empty", "garbage": "is not a PyTorch checkpoint", "zip": "zip archive",
            "truncated": "truncated or corrupt", "missing": "not found"}, \
        {**{k: p for k, (p, _) in files.items()}, "zip": zipped, "missing": tmp_path / "nope.pth"}


def test_checkpoint_problems_on_every_path(tiny_synthetic, tmp_path, capsys):
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.zeros(3000)}}, good)
    messages, paths = _bad_files(tmp_path, good)
    base = flags(tiny_synthetic, tmp_path / "run")
    video = str(Path(tiny_synthetic.root) / "videos")                   # an input that exists
    for kind, path in paths.items():
        for command, argv in (("pretrain", base + ["--resume", str(path)]),
                              ("evaluate", ["--checkpoint", str(path), "--output-dir", str(tmp_path / "e")]),
                              ("hf_export", ["--checkpoint", str(path), "--model", "vit_micro",
                                             "--out", str(tmp_path / "hf")]),
                              ("predict", ["--checkpoint", str(path), video]),
                              ("onnx_export", ["--checkpoint", str(path), "--out", str(tmp_path / "m.onnx")])):
            assert main_for(command, argv) == 2, (command, kind)
            err = capsys.readouterr().err
            assert err.startswith("error: ") and messages[kind] in err, (command, kind, err)


# ------------------------------------------------------------------ --help
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_help_lists_every_model(command, capsys):
    from vmae2_fast.cli import config_for
    with pytest.raises(SystemExit):
        config_for(command, ["--help"])
    out = capsys.readouterr().out
    flags_text = " ".join(out.split())               # argparse wraps lines
    if "--model" in flags_text:
        assert all(name in flags_text for name in MODEL_SPECS), flags_text
    if command != "plan":                            # the planner reads no checkpoint
        assert "--trust-checkpoint" in flags_text


def test_only_the_user_error_family_becomes_exit_code_2(monkeypatch, capsys):
    """A mistake found in what the user gave (errors.UserError, raised where it is found) ends
    with `error: ...` and exit code 2; a ValueError raised by a bug keeps its traceback, so it is
    never mistaken for the user's fault."""
    from vmae2_fast import errors
    from vmae2_fast.stages import pretrain as stage

    def user_mistake(cfg):
        raise errors.DataError("list.csv:3: expected 'path start total'")
    monkeypatch.setattr(stage, "run", user_mistake)
    assert main_for("pretrain", ["--model", "vit_micro"]) == 2
    assert "error: list.csv:3: expected" in capsys.readouterr().err

    def bug(cfg):
        raise ValueError("operands could not be broadcast together")
    monkeypatch.setattr(stage, "run", bug)
    with pytest.raises(ValueError, match="broadcast"):
        main_for("pretrain", ["--model", "vit_micro"])


@pytest.mark.parametrize("cls", ["ConfigError", "DataError", "MissingFileError", "OutputDirError",
                                 "CheckpointError", "CheckpointMismatchError", "BadDataError",
                                 "MissingPackageError"])
def test_every_user_error_is_one_family_and_keeps_its_builtin_base(cls):
    from vmae2_fast import errors
    err = getattr(errors, cls)("x")
    assert isinstance(err, errors.UserError) and isinstance(err, ValueError)
    if cls == "MissingFileError":
        assert isinstance(err, FileNotFoundError)
    if cls == "MissingPackageError":
        assert isinstance(err, ImportError)
