"""A checkpoint whose unpickling would run code (here: create a file) is refused by every path of
the engine that reads one, through the real command lines: pretrain --resume (a path and
`auto`), post_pretrain / finetune --init, distill --teacher, evaluate, extract_features,
hf_export, predict and onnx_export. Only --trust-checkpoint unpickles it, and then the code does run (which shows that the
test would see it). The harmless objects of released files load without it: the official
`argparse.Namespace` and DeepSpeed's fp16 loss scaler (written by a stand-in `deepspeed` package,
so that the pickle names the real class)."""
import subprocess
import sys
import textwrap

import pytest
import torch

from test_classify_stages import flags as cls_flags
from test_pretrain_loop import micro_flags
from vmae2_fast.cli import main_for
from vmae2_fast.models import build_classifier
from vmae2_fast.models.weights import DeepSpeedLossScaler, load_classifier_weights, read_checkpoint


class WritesAFile:
    """Unpickling this calls open(marker, "w"): the file appears if the pickle is executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture()
def evil(tmp_path):
    """A classifier checkpoint (real weights) carrying the code object; and its marker file."""
    marker = tmp_path / "the-pickle-ran"
    model = build_classifier("vit_micro", 6, img_size=32, num_frames=4)
    path = tmp_path / "evil.pth"
    torch.save({"model": model.state_dict(), "config": {"model": "vit_micro", "input_size": 32,
                                                        "num_frames": 4}, "extra": WritesAFile(marker)}, path)
    return path, marker


def commands(ds, tmp_path, path):
    out = tmp_path / "runs"
    yield "pretrain --resume PATH", "pretrain", micro_flags(ds, out / "pt", no_progress=True, resume=path)
    auto = out / "auto"
    auto.mkdir(parents=True)
    (auto / "checkpoint-last.pth").write_bytes(path.read_bytes())
    yield "pretrain --resume auto", "pretrain", micro_flags(ds, auto, no_progress=True)
    yield "post_pretrain --init", "post_pretrain", cls_flags(ds, out / "s2", init=path)
    yield "finetune --init", "finetune", cls_flags(ds, out / "ft", init=path)
    yield "distill --teacher", "distill", cls_flags(ds, out / "d", teacher=path, teacher_model="vit_micro")
    yield "evaluate", "evaluate", ["--checkpoint", str(path), "--output-dir", str(out / "ev"),
                                   "--data", ds.val_list, "--data-root", ds.root]
    yield "extract_features", "extract_features", ["--checkpoint", str(path), "--videos", ds.root,
                                                   "--out", str(out / "feat")]
    yield "hf_export", "hf_export", ["--checkpoint", str(path), "--model", "vit_micro",
                                     "--out", str(out / "hf")]
    yield "predict", "predict", ["--checkpoint", str(path), ds.val_list, "--data-root", ds.root]
    yield "onnx_export", "onnx_export", ["--checkpoint", str(path), "--out", str(out / "m.onnx")]


def test_no_path_runs_pickled_code(tiny_synthetic, tmp_path, evil, capsys):
    path, marker = evil
    for what, command, argv in commands(tiny_synthetic, tmp_path, path):
        assert main_for(command, argv) == 2, what
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "could run code" in err and "--trust-checkpoint" in err, (what, err)
        assert "io.open" in err, err                       # the message names the global
        assert not marker.exists(), f"{what} executed the pickle"


def test_trust_checkpoint_is_the_only_way_in(tiny_synthetic, tmp_path, evil):
    path, marker = evil
    argv = ["--checkpoint", str(path), "--model", "vit_micro", "--out", str(tmp_path / "hf"),
            "--trust-checkpoint"]
    with pytest.warns(UserWarning, match="trusted"):
        main_for("hf_export", argv)
    assert marker.exists()                                 # it did run: the test above would see it


def test_official_and_deepspeed_files_load_without_trust(tmp_path):
    """A DeepSpeed fine-tuning file as the official scripts write it (fp16, ZeRO stage 0): the
    optimizer state holds DeepSpeed's DynamicLossScaler object. It is written in a subprocess
    with a stand-in `deepspeed` package, so this process never imports that class."""
    pkg = tmp_path / "fake" / "deepspeed" / "runtime" / "fp16"
    pkg.mkdir(parents=True)
    for d in (pkg, pkg.parent, pkg.parent.parent):
        (d / "__init__.py").write_text("")
    (pkg / "loss_scaler.py").write_text(textwrap.dedent("""
        class DynamicLossScaler:
            def __init__(self):
                self.cur_scale, self.cur_iter, self.scale_window, self.dynamic = 128.0, 7, 128, True
        class LossScaler:
            def __init__(self):
                self.cur_scale, self.dynamic = 1.0, False
        """))
    model = build_classifier("vit_micro", 6, img_size=32, num_frames=4)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    target = tmp_path / "mp_rank_00_model_states.pt"
    script = textwrap.dedent(f"""
        import argparse, sys, torch
        sys.path.insert(0, {str(tmp_path / 'fake')!r})
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        sd = torch.load({str(tmp_path / 'weights.pt')!r})
        torch.save({{"module": sd, "buffer_names": [], "sparse_tensor_module_names": set(),
                     "optimizer": {{"loss_scaler": DynamicLossScaler(), "dynamic_loss_scale": True,
                                    "overflow": False, "static": LossScaler()}},
                     "lr_scheduler": None, "ds_config": None, "ds_version": "0.9.5",
                     "global_steps": 10, "epoch": 3, "args": argparse.Namespace(lr=1e-3)}},
                   {str(target)!r})
        """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    raw = read_checkpoint(tmp_path)                        # the DeepSpeed tag folder
    scaler = raw["optimizer"]["loss_scaler"]
    assert isinstance(scaler, DeepSpeedLossScaler) and scaler.cur_scale == 128.0 and scaler.cur_iter == 7
    assert raw["args"].lr == 1e-3
    clf = build_classifier("vit_micro", 6, img_size=32, num_frames=4)
    load_classifier_weights(clf, target)
    for k, v in model.state_dict().items():
        assert torch.equal(clf.state_dict()[k], v), k
