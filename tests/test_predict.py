"""`python -m vmae2_fast.predict` with a classifier fine-tuned on the tiny set: top-k with class
names on files, folders and lists (frame folders too), as a table and as JSON lines; the same
probabilities as `evaluate` and as views rebuilt by hand; unreadable videos skipped and
reported; every bad input an `error:` with exit code 2."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from test_classify_stages import view_logits
from vmae2_fast.cli import main_for, run_command
from vmae2_fast.data import read_cls_list
from vmae2_fast.data.synthetic import CLASS_NAMES
from vmae2_fast.models import build_pretrain_model

ROOT = Path(__file__).resolve().parent.parent


def test_flags_operands_and_views():
    """INPUTs may sit between flags; --views parses TxS, 'official' leaves the views to the
    checkpoint's dataset."""
    from vmae2_fast.cli import config_for
    cfg = config_for("predict", ["a.mp4", "--top-k", "3", "b/", "--checkpoint", "c.pth", "--views", "5x3"])
    assert cfg.inputs == ("a.mp4", "b/") and cfg.top_k == 3 and cfg.test_views() == (5, 3)
    assert config_for("predict", ["--onnx", "m.onnx", "a.mp4", "--views", "official"]).test_views() == (None, None)


def predict(capsys, *argv):
    """(exit code, JSON rows of stdout, stderr) of an in-process run with --json."""
    rc = main_for("predict", [*map(str, argv), "--json"])
    out, err = capsys.readouterr()
    return rc, [json.loads(line) for line in out.splitlines()], err


def check_rows(rows, k):
    for r in rows:
        assert {"path", "labels", "indices", "probs", "views", "timing"} <= set(r)
        assert len(r["indices"]) == len(r["probs"]) == len(r["labels"]) == k
        assert r["labels"] == [CLASS_NAMES[i] for i in r["indices"]]     # the checkpoint's names
        assert r["probs"] == sorted(r["probs"], reverse=True) and 0 < r["probs"][-1] <= r["probs"][0] < 1


def test_files_and_a_list_give_named_top_k_as_json_lines(tiny_classifier, tiny_synthetic):
    """The CLI as a script sees it: every stdout line is a JSON object; a file named twice (by
    itself and in the list) gets the same answer; the list's labels come along."""
    val = read_cls_list(tiny_synthetic.val_list, tiny_synthetic.root)
    res = subprocess.run([sys.executable, "-m", "vmae2_fast.predict", "--checkpoint", str(tiny_classifier),
                          "--top-k", "3", "--json", val[0][0], val[1][0], tiny_synthetic.val_list,
                          "--data-root", tiny_synthetic.root], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["path"] for r in rows] == [val[0][0], val[1][0]] + [p for p, _ in val]
    check_rows(rows, 3)
    assert [r.get("label") for r in rows] == [None, None] + [y for _, y in val]
    assert rows[0]["probs"] == rows[2]["probs"] and rows[0]["views"] == "1x1"
    assert "8 videos predicted" in res.stderr


def test_the_table_names_every_video_and_class(tiny_classifier, tiny_synthetic, capsys):
    val = read_cls_list(tiny_synthetic.val_list, tiny_synthetic.root)
    assert main_for("predict", ["--checkpoint", str(tiny_classifier), "--top-k", "2",
                                "--num-workers", "0", val[0][0], val[3][0]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["video", "#", "class", "probability"] and len(lines) == 1 + 2 * 2
    assert lines[1].startswith(val[0][0]) and lines[3].startswith(val[3][0])
    assert lines[1].split()[1:3][0] == "1" and lines[1].split()[2] in CLASS_NAMES
    assert lines[2].split()[0] == "2" and lines[2].split()[1] in CLASS_NAMES


@pytest.mark.parametrize("views", ["1x1", "2x3"])
def test_predictions_equal_evaluate_and_the_views_made_by_hand(tiny_classifier, tiny_synthetic, tmp_path,
                                                               capsys, views):
    """The probabilities of every class equal `evaluate`'s for the same views, and (2 x 3) the
    softmax mean over views rebuilt by hand from the documented rule."""
    t, s = map(int, views.split("x"))
    run_command("evaluate", ["--checkpoint", str(tiny_classifier), "--data", tiny_synthetic.val_list,
                             "--data-root", tiny_synthetic.root, "--num-segments", str(t),
                             "--num-crops", str(s), "--num-workers", "0",
                             "--output-dir", str(tmp_path / "ev")])
    evaluated = {r["video"]: np.array(r["probs"]) for r in map(
        json.loads, (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines())}
    capsys.readouterr()
    rc, rows, err = predict(capsys, "--checkpoint", tiny_classifier, "--views", views, "--top-k", 6,
                            "--data-root", tiny_synthetic.root, tiny_synthetic.val_list)
    assert rc == 0, err
    assert sorted(r["path"] for r in rows) == sorted(evaluated) and len(rows) == 6
    for r in rows:
        full = np.zeros(6)
        full[r["indices"]] = r["probs"]
        np.testing.assert_allclose(full, evaluated[r["path"]], rtol=0, atol=1e-6)
        assert r["views"] == views
    if views == "2x3":
        by_hand = view_logits(tiny_classifier, tiny_synthetic, t, s)
        for r in rows:
            fused = by_hand[r["path"]][0].softmax(-1).mean(0).numpy()
            np.testing.assert_allclose(np.array(r["probs"]), fused[r["indices"]], atol=1e-5)


def _frame_folder(video: str, folder: Path) -> int:
    """The video's frames as the official raw-frame folder (img_00001.jpg, ...)."""
    from PIL import Image
    from pyav_truth import all_frames
    folder.mkdir(parents=True)
    frames = all_frames(video).permute(0, 2, 3, 1).to(torch.uint8).numpy()
    for i, frame in enumerate(frames, start=1):
        Image.fromarray(frame).save(folder / f"img_{i:05}.jpg", quality=95)
    return len(frames)


def test_unreadable_videos_are_skipped_and_reported_with_frame_folders_and_workers(
        tiny_classifier, tiny_synthetic, tmp_path, capsys):
    """A folder of a good video, a file that is not a video and a frame folder, plus a raw-frame
    list (official `frame_dir total label`), decoded in two worker processes: the bad file is
    reported on stderr with its reason, every other video is predicted."""
    val = read_cls_list(tiny_synthetic.val_list, tiny_synthetic.root)
    videos = tmp_path / "videos"
    videos.mkdir()
    good = videos / "good.webm"
    good.write_bytes(Path(val[0][0]).read_bytes())
    (videos / "broken.mp4").write_bytes(b"this is not a video")
    n = _frame_folder(val[1][0], videos / "clip_frames")
    listed = tmp_path / "frames.txt"
    listed.write_text(f"clip_frames {n} 1\n")
    rc, rows, err = predict(capsys, "--checkpoint", tiny_classifier, "--num-workers", 2, "--top-k", 6,
                            "--batch-views", 1, videos, listed, "--data-root", videos)
    assert rc == 0, err
    paths = [r["path"] for r in rows]
    assert paths == [str(good), str(videos / "clip_frames"), str(videos / "clip_frames")]
    assert rows[2]["label"] == 1 and rows[1]["probs"] == rows[2]["probs"]
    assert f"skipped {videos / 'broken.mp4'}: cannot open video" in err
    assert "1 skipped as unreadable" in err
    # a frame folder is the same video as its file, up to the JPEG rounding of its pixels
    rc, direct, _ = predict(capsys, "--checkpoint", tiny_classifier, "--num-workers", 0, "--top-k", 6, val[1][0])
    dist = {i: p for i, p in zip(direct[0]["indices"], direct[0]["probs"])}
    assert max(abs(dist[i] - p) for i, p in zip(rows[1]["indices"], rows[1]["probs"])) < 0.02


def test_class_names_from_a_file(tiny_classifier, tiny_synthetic, tmp_path, capsys):
    video = read_cls_list(tiny_synthetic.val_list, tiny_synthetic.root)[0][0]
    names = [f"name {i}" for i in range(6)]
    text, mapping = tmp_path / "classes.txt", tmp_path / "classes.json"
    text.write_text("\n".join(names) + "\n")
    mapping.write_text(json.dumps({n: i for i, n in enumerate(names)}))
    results = []
    for file in (text, mapping):
        rc, rows, err = predict(capsys, "--checkpoint", tiny_classifier, "--classes", file,
                                "--num-workers", 0, video)
        assert rc == 0, err
        results.append(rows[0])
        assert rows[0]["labels"] == [names[i] for i in rows[0]["indices"]]
    assert results[0] == {**results[1], "timing": results[0]["timing"]}


def test_a_released_layout_predicts_the_same(tiny_classifier, tiny_synthetic, tmp_path, capsys):
    """The same weights as the official DeepSpeed fine-tuning files hold them (under ``module``,
    DDP's ``module.`` prefix, the run's arguments as an ``argparse.Namespace``, no config of ours):
    with --model and the clip flags, the probabilities of our checkpoint; without --model, an
    error that asks for it."""
    import argparse
    sd = torch.load(tiny_classifier, weights_only=True)["model"]
    released = tmp_path / "released.pth"
    torch.save({"module": {f"module.{k}": v for k, v in sd.items()}, "epoch": 1,
                "args": argparse.Namespace(model="vit_micro", input_size=32)}, released)
    video = read_cls_list(tiny_synthetic.val_list, tiny_synthetic.root)[0][0]
    clip = ["--input-size", 32, "--num-frames", 4, "--sampling-rate", 2, "--short-side-size", 40]
    common = ["--num-workers", 0, "--top-k", 6, video]
    rc, ours, err = predict(capsys, "--checkpoint", tiny_classifier, *common)
    assert rc == 0, err
    rc, theirs, err = predict(capsys, "--checkpoint", released, "--model", "vit_micro", *clip, *common)
    assert rc == 0, err
    assert theirs[0]["indices"] == ours[0]["indices"]
    np.testing.assert_allclose(theirs[0]["probs"], ours[0]["probs"], rtol=0, atol=1e-6)
    assert theirs[0]["labels"] == [str(i) for i in theirs[0]["indices"]]      # no names recorded
    _user_error(capsys, ["--checkpoint", released, *clip, *common], "does not record its model", "--model")


def _user_error(capsys, argv, *words):
    rc = main_for("predict", [str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and "error: " in err and all(w in err for w in words), err


def test_bad_inputs_are_errors_with_exit_code_2(tiny_classifier, tiny_synthetic, tmp_path, capsys):
    video = read_cls_list(tiny_synthetic.val_list, tiny_synthetic.root)[0][0]
    ck = ["--checkpoint", tiny_classifier, "--num-workers", 0]
    _user_error(capsys, [*ck, video, tmp_path / "nope.mp4"], "input not found", "nope.mp4")
    _user_error(capsys, ck, "INPUT")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    _user_error(capsys, ["--checkpoint", garbage, video], "is not a PyTorch checkpoint")
    _user_error(capsys, ["--checkpoint", tmp_path / "missing.pth", video], "not found")
    encoder = tmp_path / "encoder.pth"
    torch.save({"model": build_pretrain_model("vit_micro", img_size=32, num_frames=4).state_dict(),
                "config": {"model": "vit_micro"}}, encoder)
    _user_error(capsys, ["--checkpoint", encoder, video], "no classification head")
    five = tmp_path / "five.txt"
    five.write_text("a\nb\nc\nd\ne\n")
    _user_error(capsys, [*ck, "--classes", five, video], "names 5 classes", "has 6")
    bad_json = tmp_path / "classes.json"
    bad_json.write_text("{not json")
    _user_error(capsys, [*ck, "--classes", bad_json, video], "expected a JSON list of class names")
    _user_error(capsys, [*ck, "--views", "3by2", video], "--views")
    empty = tmp_path / "empty"
    empty.mkdir()
    _user_error(capsys, [*ck, empty], "no videos")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    _user_error(capsys, [*ck, broken], "none of the 1 videos could be read", "broken.mp4")
    assert not os.path.exists(tmp_path / "runs")
