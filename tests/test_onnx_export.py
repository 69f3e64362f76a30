"""`python -m vmae2_fast.onnx_export` and `predict --onnx`: the classifier fine-tuned on the tiny
set, and its encoder as a feature extractor, in ONNX Runtime equal PyTorch to 1e-4 (fp32) on a
real decoded clip, at any batch size; predict through ONNX Runtime gives PyTorch's predictions;
missing packages name the extra that installs them."""
import json
import sys

import numpy as np
import pytest
import torch

import needs
from vmae2_fast.cli import main_for, run_command
from vmae2_fast.data import read_cls_list
from vmae2_fast.data.pyav.classify import VideoTestDataset
from vmae2_fast.data.pixels import normalize_on_device
from vmae2_fast.models import build_classifier
from vmae2_fast.models.weights import read_checkpoint

TOL = 1e-4


@pytest.fixture(scope="module")
def onnx_packages():
    return needs.module("onnx"), needs.module("onnxruntime")


@pytest.fixture(scope="module")
def exported(tiny_classifier, tmp_path_factory, onnx_packages):
    """{kind: (path, the export's summary)} for the classifier and the feature extractor."""
    out = tmp_path_factory.mktemp("onnx")
    res = {}
    for kind, extra in (("classifier", []), ("features", ["--features"])):
        path = out / f"{kind}.onnx"
        res[kind] = path, run_command("onnx_export", ["--checkpoint", str(tiny_classifier),
                                                      "--out", str(path), *extra])
    return res


def torch_model(checkpoint):
    ck = read_checkpoint(checkpoint)
    model = build_classifier("vit_micro", 6, img_size=32, num_frames=4).eval()
    model.load_state_dict(ck["model"])
    return model


def real_clips(ds, n):
    """The centred 32 x 32 views of the first n validation videos (frames every 2nd, short side
    40), normalised: the model's input for real decoded video."""
    paths = [p for p, _ in read_cls_list(ds.val_list, ds.root)[:n]]
    views = VideoTestDataset([(p, 0) for p in paths], 4, 2, 32, 40, 1, 1)
    return normalize_on_device(torch.cat([views.views(p) for p in paths]))


@pytest.mark.parametrize("kind", ["classifier", "features"])
def test_onnx_runtime_equals_pytorch_on_real_clips(exported, tiny_classifier, tiny_synthetic, onnx_packages,
                                                   kind):
    """The file passes onnx.checker, declares opset 18 and a dynamic batch over the checkpoint's
    clip, and ONNX Runtime gives PyTorch's logits (features) on real decoded clips, one at a time
    and five at once."""
    onnx, ort = onnx_packages
    path, summary = exported[kind]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")] == [18]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    assert inp.name == "video" and inp.shape[1:] == [3, 4, 32, 32] and isinstance(inp.shape[0], str)
    assert out.name == ("logits" if kind == "classifier" else "features")
    model = torch_model(tiny_classifier)
    forward = model if kind == "classifier" else model.forward_features
    clips = real_clips(tiny_synthetic, 5)
    for batch in (clips[:1], clips):
        with torch.no_grad():
            ref = forward(batch).numpy()
        got = session.run(None, {"video": batch.numpy()})[0]
        assert got.shape == ref.shape == (len(batch), 6 if kind == "classifier" else 64)
        assert np.abs(ref).max() > 0.1                  # a real comparison, not of near-zeros
        np.testing.assert_allclose(got, ref, rtol=0, atol=TOL)
    # what the command printed: both of its checks within the tolerance
    assert len(summary["max_abs_diff"]) == 2 and max(summary["max_abs_diff"].values()) < TOL
    meta = json.loads(session.get_modelmeta().custom_metadata_map["vmae2_fast"])
    assert meta["kind"] == kind and meta["config"]["short_side_size"] == 40
    assert meta["preprocessing"]["mean"] == [0.485, 0.456, 0.406]


def test_predict_through_onnx_runtime_gives_the_pytorch_predictions(exported, tiny_classifier, tiny_synthetic,
                                                                    capsys):
    """--onnx alone (settings and names from the file) and with --checkpoint, 2 x 3 views."""
    path = exported["classifier"][0]
    common = ["--views", "2x3", "--top-k", "6", "--num-workers", "0", "--json", "--data-root",
              tiny_synthetic.root, tiny_synthetic.val_list]
    runs = {}
    for name, argv in (("torch", ["--checkpoint", str(tiny_classifier)]), ("onnx", ["--onnx", str(path)]),
                       ("both", ["--onnx", str(path), "--checkpoint", str(tiny_classifier)])):
        assert main_for("predict", argv + common) == 0
        out, err = capsys.readouterr()
        runs[name] = [json.loads(line) for line in out.splitlines()]
        assert len(runs[name]) == 6, err
    assert "ONNX Runtime (CPUExecutionProvider)" in err
    for name in ("onnx", "both"):
        for a, b in zip(runs["torch"], runs[name]):
            assert a["path"] == b["path"] and a["labels"] == b["labels"]
            pa = dict(zip(a["indices"], a["probs"]))
            pb = dict(zip(b["indices"], b["probs"]))
            assert max(abs(pa[i] - pb[i]) for i in range(6)) < 1e-5


def test_onnx_misuse_is_an_error(exported, tiny_classifier, tiny_synthetic, tmp_path, capsys):
    video = read_cls_list(tiny_synthetic.val_list, tiny_synthetic.root)[0][0]
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    cases = [(["--onnx", str(exported["features"][0]), video], "predict needs the classifier"),
             (["--onnx", str(garbage), video], "is not a model ONNX Runtime can load"),
             (["--onnx", str(tmp_path / "none.onnx"), video], "ONNX file not found"),
             (["--onnx", str(exported["classifier"][0]), "--checkpoint", str(tiny_classifier),
               "--num-frames", "8", video], "takes clips [3, 4, 32, 32]")]
    for argv, words in cases:
        assert main_for("predict", argv) == 2, words
        err = capsys.readouterr().err
        assert "error: " in err and words in err and "Traceback" not in err, err
    assert main_for("onnx_export", ["--checkpoint", str(tiny_classifier), "--out", str(tmp_path / "x.onnx"),
                                    "--check-video", str(garbage)]) == 2
    assert "cannot decode the check video" in capsys.readouterr().err
    strict = tmp_path / "strict.onnx"         # the check can fail: a tolerance below fp32 rounding
    assert main_for("onnx_export", ["--checkpoint", str(tiny_classifier), "--out", str(strict),
                                    "--tolerance", "1e-12"]) == 2
    assert "more than --tolerance 1e-12" in capsys.readouterr().err and strict.is_file()


@pytest.mark.parametrize("missing, command", [("onnx", "onnx_export"), ("onnxscript", "onnx_export"),
                                              ("onnxruntime", "predict")])
def test_a_missing_package_names_its_extra(tiny_classifier, tmp_path, monkeypatch, capsys, missing, command):
    monkeypatch.setitem(sys.modules, missing, None)         # `import missing` now fails
    argv = (["--checkpoint", str(tiny_classifier), "--out", str(tmp_path / "m.onnx")] if command == "onnx_export"
            else ["--onnx", str(tmp_path / "m.onnx"), str(tiny_classifier)])
    assert main_for(command, argv) == 2
    err = capsys.readouterr().err
    extra = "onnxruntime" if command == "predict" else "onnx"
    assert f"needs {missing}" in err and f"pip install 'vmae2_fast[{extra}]'" in err, err
    assert not (tmp_path / "m.onnx").exists()
