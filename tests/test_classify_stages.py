"""Stages 2/3, distillation, evaluation and feature extraction on the tiny synthetic set; every
bad input ends with a clear message before any compute."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_runs import StartingWeights
from vmae2_fast import distill, finetune, post_pretrain
from vmae2_fast.cli import config_for, run_command
from vmae2_fast.data.clip_sampling import spread_offsets
from vmae2_fast.data.pyav.classify import VideoTestDataset
from vmae2_fast.stages.evaluate import metrics
from vmae2_fast.models import build_classifier, build_pretrain_model
from vmae2_fast.models.weights import read_checkpoint as load_checkpoint


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


def test_post_pretrain_then_finetune_then_evaluate(tiny_synthetic, tmp_path, stage1, monkeypatch):
    start = StartingWeights(monkeypatch)
    assert post_pretrain.main(flags(tiny_synthetic, tmp_path / "s2", init=stage1)) == 0
    # stage 2 started from the stage-1 encoder: every block and the embedding, as the file holds them
    s1 = torch.load(stage1, weights_only=True)["model"]
    began = start.take()
    encoder = [k for k in began if k.startswith(("blocks.", "patch_embed."))]
    assert len(encoder) > 10 and all(torch.equal(began[k], s1["encoder." + k]) for k in encoder)
    best = tmp_path / "s2" / "checkpoint-best.pth"
    ck = load_checkpoint(best)                          # ours: no pickled code
    assert ck["config"]["class_names"] == list(tiny_synthetic.class_names)
    recs = [json.loads(x) for x in (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_top1" in r for r in recs)
    assert finetune.main(flags(tiny_synthetic, tmp_path / "s3", init=best, clip_grad=1.0)) == 0
    # stage 3 started from stage 2's best classifier, head included (the same six classes)
    began = start.take()
    assert began.keys() == ck["model"].keys()
    assert all(torch.equal(began[k], ck["model"][k]) for k in began)
    best3 = tmp_path / "s3" / "checkpoint-best.pth"
    res = run_command("evaluate", ["--checkpoint", str(best3), "--data", tiny_synthetic.val_list, "--data-root",
                        tiny_synthetic.root, "--num-segments", "2", "--num-crops", "3",
                        "--output-dir", str(tmp_path / "ev")])
    assert res["videos"] == 6 and res["views"] == "2x3"
    check_evaluation(res, tmp_path / "ev", view_logits(best3, tiny_synthetic, 2, 3))


def test_evaluate_fuses_the_softmax_of_every_view(tiny_synthetic, tmp_path):
    """A classifier whose logits spread over several units, and frames larger than the crop so the
    three crops differ: every view counts, and the fusion is the mean of the softmaxes."""
    torch.manual_seed(0)
    clf = build_classifier("vit_micro", 6, img_size=32, num_frames=4)
    with torch.no_grad():
        for q in clf.parameters():
            q.add_(0.05 * torch.randn_like(q))
        clf.head.weight.normal_(0, 1.0)
    ckpt = tmp_path / "c.pth"
    torch.save({"model": clf.state_dict(), "config": {"model": "vit_micro", "input_size": 32,
                "num_frames": 4, "sampling_rate": 2, "short_side_size": 40}}, ckpt)
    res = run_command("evaluate", ["--checkpoint", str(ckpt), "--data", tiny_synthetic.val_list, "--data-root",
                        tiny_synthetic.root, "--num-segments", "2", "--num-crops", "3",
                        "--output-dir", str(tmp_path / "ev")])
    logits = view_logits(ckpt, tiny_synthetic, 2, 3)
    check_evaluation(res, tmp_path / "ev", logits)
    # the rule is observable here: crops differ, and averaging logits would give other numbers
    x = torch.stack([v for v, _ in logits.values()])                       # (videos, views, K)
    assert (x[:, 0] - x[:, 1]).abs().max() > 0.1
    assert (x.softmax(-1).mean(1) - x.mean(1).softmax(-1)).abs().max() > 1e-2


def check_evaluation(res, out_dir, logits):
    """predictions.jsonl and the metrics equal those of the hand-made views' logits."""
    rows = [json.loads(x) for x in (out_dir / "predictions.jsonl").read_text().splitlines()]
    assert [r["video"] for r in rows] == sorted(logits)
    probs = np.stack([logits[r["video"]][0].softmax(-1).mean(0).numpy() for r in rows])
    labels = np.array([logits[r["video"]][1] for r in rows])
    np.testing.assert_allclose([r["probs"] for r in rows], probs, rtol=1e-4, atol=1e-6)
    order = np.argsort(-probs, 1)
    hit1, hit5 = order[:, 0] == labels, (order[:, :5] == labels[:, None]).any(1)
    assert res["top1"] == pytest.approx(100 * hit1.mean())
    assert res["top5"] == pytest.approx(100 * hit5.mean())
    assert res["mean_class_accuracy"] == pytest.approx(
        100 * np.mean([hit1[labels == c].mean() for c in np.unique(labels)]))


def view_logits(checkpoint, ds, segments, crops):
    """{video: (logits of its S x C views, label)}, the views rebuilt by hand from the README's
    rule: frames every `sampling_rate`, short side resized, S clips spread evenly over them, C
    crops spread evenly along the long side (the width, for the tiny set's square frames)."""
    from pyav_truth import all_frames, to_model_input
    from vmae2_fast.data import read_cls_list
    ck = load_checkpoint(checkpoint)
    cfg = ck["config"]
    size, T, rate, short = cfg["input_size"], cfg["num_frames"], cfg["sampling_rate"], cfg["short_side_size"]
    model = build_classifier("vit_micro", 6, img_size=size, num_frames=T).eval()
    model.load_state_dict(ck["model"])
    out = {}
    for path, label in read_cls_list(ds.val_list, ds.root):
        frames = all_frames(path)[::rate]
        assert frames.shape[-1] == frames.shape[-2]                        # square videos
        frames = torch.nn.functional.interpolate(frames, size=(short, short), mode="bilinear",
                                                 align_corners=False)
        y0 = (short - size) // 2
        views = [to_model_input(frames[s:s + T, :, y0:y0 + size, x0:x0 + size])
                 for s in (int(i * (len(frames) - T) / (segments - 1)) for i in range(segments))
                 for x0 in (int(c * (short - size) / (crops - 1)) for c in range(crops))]
        with torch.no_grad():
            out[path] = (model(torch.stack(views)), label)
    return out


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
