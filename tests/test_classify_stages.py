"""Stages 2/3, distillation, evaluation and feature extraction on the tiny synthetic set; every
bad input ends with a clear message before any compute."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vmae2_fast import distill, evaluate, finetune, post_pretrain
from vmae2_fast.classify import make_config
from vmae2_fast.finetune_config import FinetuneConfig
from vmae2_fast.models import build_classifier, build_pretrain_model
from vmae2_fast.train.checkpoint import load_checkpoint


def flags(ds, out, **extra):
    f = dict(model="vit_micro", preset="cpu_demo", train_list=ds.train_list, val_list=ds.val_list,
             data_root=ds.root, output_dir=str(out), input_size=32, short_side_size=32, num_frames=4,
             batch_size=4, epochs=1, warmup_epochs=0, num_workers=0, aa="none")
    f.update(extra)
    argv = []
    for k, v in f.items():
        argv += ["--" + k.replace("_", "-")] + ([] if v is True else [str(v)])
    return argv


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    path = tmp_path_factory.mktemp("s1") / "checkpoint-last.pth"
    torch.manual_seed(0)
    torch.save({"model": build_pretrain_model("vit_micro", img_size=32, num_frames=4).state_dict()}, path)
    return path


def test_presets_resolve():
    cfg = make_config("finetune", FinetuneConfig, ["--preset", "ssv2", "--model", "vit_g"])
    assert (cfg.num_classes, cfg.flip, cfg.sparse_sample, cfg.layer_decay, cfg.lr) == (174, False, True, 0.9, 3e-4)
    cfg = make_config("finetune", FinetuneConfig, ["--preset", "k400", "--lr", "2e-5"])
    assert cfg.lr == 2e-5 and cfg.num_classes == 400 and cfg.mixup == 0.8 and cfg.cutmix == 1.0
    from vmae2_fast.finetune_config import PostPretrainConfig
    g = make_config("post_pretrain", PostPretrainConfig, ["--model", "vit_g"])
    assert (g.num_classes, g.clip_grad, g.weight_decay, g.drop_path, g.layer_decay) == (710, 5.0, 0.1, 0.3, 0.9)


def test_post_pretrain_then_finetune_then_evaluate(tiny_synthetic, tmp_path, stage1):
    assert post_pretrain.main(flags(tiny_synthetic, tmp_path / "s2", init=stage1)) == 0
    best = tmp_path / "s2" / "checkpoint-best.pth"
    ck = load_checkpoint(best)                          # ours: no pickled code
    assert ck["config"]["class_names"] == list(tiny_synthetic.class_names)
    recs = [json.loads(x) for x in (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_top1" in r for r in recs)
    assert finetune.main(flags(tiny_synthetic, tmp_path / "s3", init=best, clip_grad=1.0)) == 0
    best3 = tmp_path / "s3" / "checkpoint-best.pth"
    res = evaluate.run(["--checkpoint", str(best3), "--data", tiny_synthetic.val_list, "--data-root",
                        tiny_synthetic.root, "--num-segments", "2", "--num-crops", "3",
                        "--output-dir", str(tmp_path / "ev")])
    assert res["videos"] == 6 and res["views"] == "2x3"
    rows = [json.loads(x) for x in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    truth = expected_probs(best3, tiny_synthetic, segments=2, crops=3)
    assert [r["video"] for r in rows] == sorted(truth)
    for r in rows:
        np.testing.assert_allclose(r["probs"], truth[r["video"]][0], rtol=1e-4, atol=1e-6)
    probs = np.stack([truth[r["video"]][0] for r in rows])
    labels = np.array([truth[r["video"]][1] for r in rows])
    order = np.argsort(-probs, 1)
    hit1, hit5 = order[:, 0] == labels, (order[:, :5] == labels[:, None]).any(1)
    assert res["top1"] == pytest.approx(100 * hit1.mean())
    assert res["top5"] == pytest.approx(100 * hit5.mean())
    assert res["mean_class_accuracy"] == pytest.approx(
        100 * np.mean([hit1[labels == c].mean() for c in np.unique(labels)]))


def expected_probs(checkpoint, ds, segments, crops):
    """{video: (probabilities, label)} rebuilt by hand from the README's rule: frames every
    `sampling_rate`, short side resized, S clips and C crops spread evenly, softmax per view,
    then the mean over the S x C views."""
    from pyav_truth import all_frames, to_model_input
    from vmae2_fast.data import read_cls_list
    ck = load_checkpoint(checkpoint)
    cfg = ck["config"]
    size, T, rate = cfg["input_size"], cfg["num_frames"], cfg["sampling_rate"]
    model = build_classifier("vit_micro", 6, img_size=size, num_frames=T).eval()
    model.load_state_dict(ck["model"])
    out = {}
    for path, label in read_cls_list(ds.val_list, ds.root):
        frames = all_frames(path)[::rate]
        assert frames.shape[-1] == frames.shape[-2] and cfg["short_side_size"] == size   # square
        frames = torch.nn.functional.interpolate(frames, size=(cfg["short_side_size"],) * 2,
                                                 mode="bilinear", align_corners=False)
        starts = [int(s * (len(frames) - T) / (segments - 1)) for s in range(segments)]
        views = []
        for s in starts:
            for c in range(crops):        # square frames of the crop size: every crop is the frame
                views.append(to_model_input(frames[s:s + T]))
        with torch.no_grad():
            out[path] = (model(torch.stack(views)).softmax(-1).mean(0).numpy(), label)
    return out


def test_evaluate_views():
    assert evaluate.view_positions(20, 4, 1) == [8]
    assert evaluate.view_positions(20, 4, 5) == [0, 4, 8, 12, 16]
    assert evaluate.view_positions(3, 4, 2) == [0, 0]
    m = evaluate.metrics(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 1, 1]))
    assert m["top1"] == pytest.approx(200 / 3) and m["mean_class_accuracy"] == pytest.approx(75.0)


def test_video_views_shapes(tiny_synthetic):
    from vmae2_fast.data import read_cls_list
    path = read_cls_list(tiny_synthetic.val_list, tiny_synthetic.root)[0][0]
    assert evaluate.video_views(path, 4, 2, 32, 40, 5, 3).shape == (15, 3, 4, 32, 32)
    assert evaluate.video_views(path, 4, 2, 32, 32, 1, 1).shape == (1, 3, 4, 32, 32)
    assert evaluate.video_views(path, 4, 2, 32, 32, 2, 3, sparse=True).shape == (6, 3, 4, 32, 32)


def bad(capsys, tmp_path, ds, **extra):
    rc = finetune.main(flags(ds, tmp_path / "bad", **extra))
    err = capsys.readouterr().err
    assert rc == 2 and not (tmp_path / "bad" / "checkpoint-last.pth").exists()
    return err


def test_bad_inputs(tiny_synthetic, tmp_path, capsys, stage1):
    ds = tiny_synthetic
    assert "--num-classes is 10 but" in bad(capsys, tmp_path, ds, num_classes=10)
    wrong = tmp_path / "wrong.csv"
    lines = Path(ds.train_list).read_text().splitlines()
    wrong.write_text("\n".join(lines[:-1] + [lines[-1].split()[0] + " 9"]) + "\n")
    assert "label 9 of" in bad(capsys, tmp_path, ds, train_list=wrong, num_classes=6)
    empty = tmp_path / "empty.csv"
    empty.write_text("\n")
    assert "empty" in bad(capsys, tmp_path, ds, train_list=empty)
    big = tmp_path / "vit_s.pth"
    torch.save({"model": build_pretrain_model("vit_s", img_size=32, num_frames=4).state_dict()}, big)
    assert "--model vit_s" in bad(capsys, tmp_path, ds, init=big)
    teacher = build_classifier("vit_micro", 6, img_size=32, num_frames=4)
    other = tmp_path / "teacher.pth"
    torch.save({"model": teacher.state_dict(), "config": {"class_names": list("abcdef")}}, other)
    rc = distill.main(flags(ds, tmp_path / "bad", teacher=other, teacher_model="vit_micro"))
    assert rc == 2 and "another class set" in capsys.readouterr().err
    t5 = tmp_path / "teacher5.pth"
    torch.save({"model": build_classifier("vit_micro", 5, img_size=32, num_frames=4).state_dict()}, t5)
    rc = distill.main(flags(ds, tmp_path / "bad", teacher=t5, teacher_model="vit_micro"))
    assert rc == 2 and "same" in capsys.readouterr().err
