"""Stages 2/3, distillation, evaluation and feature extraction on the tiny synthetic set; every
bad input ends with a clear message before any compute."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vmae2_fast import distill, finetune, post_pretrain
from vmae2_fast.cli import config_for, run_command
from vmae2_fast.data.clip_sampling import spread_offsets
from vmae2_fast.data.pyav.classify import VideoTestDataset
from vmae2_fast.stages.evaluate import metrics
from vmae2_fast.stages.features import window_starts
from vmae2_fast.models import build_classifier, build_pretrain_model
from vmae2_fast.models.weights import read_checkpoint


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
    cfg = config_for("finetune", ["--preset", "ssv2_from_pt", "--model", "vit_g"])
    assert (cfg.num_classes, cfg.flip, cfg.sparse_sample, cfg.layer_decay, cfg.lr) == (174, False, True, 0.9, 3e-4)
    cfg = config_for("finetune", ["--preset", "k400_from_pt", "--lr", "2e-5"])
    assert cfg.lr == 2e-5 and cfg.num_classes == 400 and cfg.mixup == 0.8 and cfg.cutmix == 1.0
    g = config_for("post_pretrain", ["--model", "vit_g"])
    assert (g.num_classes, g.clip_grad, g.weight_decay, g.drop_path, g.layer_decay) == (710, 5.0, 0.1, 0.3, 0.9)


def test_post_pretrain_then_finetune_then_evaluate(tiny_synthetic, tmp_path, stage1):
    assert post_pretrain.main(flags(tiny_synthetic, tmp_path / "s2", init=stage1)) == 0
    best = tmp_path / "s2" / "checkpoint-best.pth"
    ck = read_checkpoint(best)                          # ours: no pickled code
    assert ck["config"]["class_names"] == list(tiny_synthetic.class_names)
    recs = [json.loads(x) for x in (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_top1" in r for r in recs)
    assert finetune.main(flags(tiny_synthetic, tmp_path / "s3", init=best, clip_grad=1.0)) == 0
    res = run_command("evaluate", ["--checkpoint", str(tmp_path / "s3" / "checkpoint-best.pth"), "--data",
                        tiny_synthetic.val_list, "--data-root", tiny_synthetic.root, "--num-segments",
                        "2", "--num-crops", "3", "--output-dir", str(tmp_path / "ev")])
    assert res["videos"] == 6 and res["views"] == "2x3" and 0 <= res["top1"] <= 100
    rows = (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == 6 and abs(sum(json.loads(rows[0])["probs"]) - 1) < 1e-5


def test_evaluate_views():
    assert spread_offsets(20, 4, 1) == [8]
    assert spread_offsets(20, 4, 5) == [0, 4, 8, 12, 16]
    assert spread_offsets(3, 4, 2) == [0, 0]
    m = metrics(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 1, 1]))
    assert m["top1"] == pytest.approx(200 / 3) and m["mean_class_accuracy"] == pytest.approx(75.0)


def test_video_views_shapes(tiny_synthetic):
    from vmae2_fast.data import read_cls_list
    path = read_cls_list(tiny_synthetic.val_list, tiny_synthetic.root)[0][0]
    def views(short, segments, crops, sparse=False):
        return VideoTestDataset([(path, 0)], 4, 2, 32, short, segments, crops, sparse).views(path)
    assert views(40, 5, 3).shape == (15, 3, 4, 32, 32)
    assert views(32, 1, 1).shape == (1, 3, 4, 32, 32)
    assert views(32, 2, 3, sparse=True).shape == (6, 3, 4, 32, 32)


def test_distill_runs_with_a_frozen_teacher(tiny_synthetic, tmp_path):
    teacher = build_classifier("vit_micro", 6, img_size=32, num_frames=4)
    path = tmp_path / "teacher.pth"
    torch.save({"model": teacher.state_dict(), "config": {"class_names": list(tiny_synthetic.class_names)}}, path)
    assert distill.main(flags(tiny_synthetic, tmp_path / "d", teacher=path, teacher_model="vit_micro",
                              max_steps=2)) == 0
    assert read_checkpoint(tmp_path / "d" / "checkpoint-last.pth")["global_step"] == 2


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


def test_extract_features(tiny_synthetic, tmp_path):
    clf = build_classifier("vit_micro", 6, img_size=32, num_frames=4)
    torch.save({"model": clf.state_dict(), "config": {"model": "vit_micro", "input_size": 32}},
               tmp_path / "c.pth")
    videos = Path(tiny_synthetic.root) / "videos"
    res = run_command("extract_features", ["--checkpoint", str(tmp_path / "c.pth"), "--videos", str(videos),
                                "--out", str(tmp_path / "f"), "--window", "4", "--stride", "4"])
    assert res["videos"] == 18
    feats = np.load(tmp_path / "f" / (sorted(videos.iterdir())[0].stem + ".npy"))
    assert feats.shape == (len(range(0, 24 - 4 + 1, 4)), 64) and feats.dtype == np.float32
    assert window_starts(30, 16, 4) == [0, 4, 8, 12]
