"""K710 head rows for Kinetics-400/600/700, generated from class names: by hand-made examples, the
K710 builder with the released order, and the classifier importer taking the rows it selects."""
import json

import pytest
import torch

from vmae2_fast.data.tools.k710 import main as build_k710
from vmae2_fast.data.label_maps import head_map_from_names, kinetics_head_map
from vmae2_fast.models import build_classifier
from vmae2_fast.models.weights import load_classifier_weights

K710 = ["riding a bike", "marching", "dyeing hair", "abseiling", "juggling fire"]


def test_names_map_to_k710_rows_through_normalisation_and_merge():
    assert head_map_from_names(K710, ["Abseiling", "riding_a_bike", '"marching"']) == [3, 0, 1]
    assert head_map_from_names(K710, ["dying hair"], {"dying hair": "dyeing hair"}) == [2]
    with pytest.raises(ValueError, match="1 of 2 classes are not K710 classes.*flying"):
        head_map_from_names(K710, ["marching", "flying"])


def test_map_is_found_then_generated_then_refused_with_the_way_out(tmp_path):
    found = tmp_path / "k710"
    found.mkdir()
    (found / "label_710to400.json").write_text("[1, 0]")
    assert kinetics_head_map(400, [None, str(found)], None, None, str(tmp_path)) == str(found / "label_710to400.json")
    names710 = [f"class {i}" for i in range(710)]
    path = kinetics_head_map(600, [str(found)], names710, ["Class 7", "class_3"], str(tmp_path / "out"))
    assert json.loads(open(path).read()) == [7, 3]
    with pytest.raises(ValueError, match="label_710to700.json.*--k710-order.*--head-map"):
        kinetics_head_map(700, [str(found)], None, ["a"], str(tmp_path))


def w(p, lines):
    p.write_text("".join(x + "\n" for x in lines))
    return str(p)


def test_builder_follows_the_released_order_and_generates_consistent_maps(tmp_path):
    k400 = (w(tmp_path / "t4", ["aaaaaaaaaaa_000001_000011.mp4 1"]),
            w(tmp_path / "v4", ["bbbbbbbbbbb_000001_000011.mp4 0"]), w(tmp_path / "l4", ["abseiling", "dying hair"]))
    k600 = (w(tmp_path / "t6", ["ccccccccccc_000001_000011.mp4 2"]), w(tmp_path / "v6", ["ddddddddddd_000001_000011.mp4 0"]),
            w(tmp_path / "l6", ["marching", "Abseiling", "juggling_fire"]))
    order = w(tmp_path / "order", ["juggling fire", "dyeing hair", "abseiling", "marching"])
    merge = tmp_path / "merge.json"
    merge.write_text(json.dumps({"dying hair": "dyeing hair"}))
    out = tmp_path / "k710"
    assert build_k710(["--out", str(out), "--k400", *k400, "--k600", *k600, "--merge", str(merge),
                       "--k710-order", order]) == 0
    assert (out / "classes.txt").read_text().splitlines() == ["juggling fire", "dyeing hair", "abseiling", "marching"]
    assert json.loads((out / "label_710to400.json").read_text()) == [2, 1]
    assert json.loads((out / "label_710to600.json").read_text()) == [3, 2, 0]
    assert (out / "train.csv").read_text().splitlines() == ["aaaaaaaaaaa_000001_000011.mp4 1",
                                                            "ccccccccccc_000001_000011.mp4 0"]


def test_the_importer_takes_the_rows_the_callable_selects(tmp_path):
    torch.manual_seed(0)
    src = build_classifier("vit_micro", 710, img_size=32, num_frames=4, init_scale=1.0)
    ckpt = tmp_path / "k710.pth"
    torch.save({"model": src.state_dict(), "config": {"class_names": [f"c{i}" for i in range(710)]}}, ckpt)
    mapping = [709, 3, 0, 512]
    (tmp_path / "label_710to4.json").write_text(json.dumps(mapping))
    seen = []

    def choose(rows, cfg):
        seen.append((rows, len(cfg["class_names"])))
        return str(tmp_path / "label_710to4.json")
    dst = build_classifier("vit_micro", 4, img_size=32, num_frames=4)
    report = load_classifier_weights(dst, ckpt, choose)
    assert seen == [(710, 710)] and report.head == "remapped"
    assert torch.equal(dst.head.weight, src.head.weight[mapping])
    assert torch.equal(dst.head.bias, src.head.bias[mapping])


def test_the_stage_asks_for_rows_only_for_a_k710_head_on_kinetics(tmp_path):
    from types import SimpleNamespace
    from vmae2_fast.stages.classify import kinetics_rows
    k710_lists = tmp_path / "k710"
    k710_lists.mkdir()
    (k710_lists / "label_710to400.json").write_text("[0]")
    cfg = SimpleNamespace(dataset="k400", data=str(tmp_path / "k400"), init=str(tmp_path / "ck.pth"),
                          output_dir=str(tmp_path / "run"))
    choose = kinetics_rows(cfg, 400, None, str(tmp_path / "k400" / "train.csv"))
    assert choose(710, {"data": str(k710_lists)}) == str(k710_lists / "label_710to400.json")
    assert choose(400, {}) is None                                     # a K400 head: as it is
    assert kinetics_rows(SimpleNamespace(**{**vars(cfg), "dataset": "ucf101"}), 101, None, "x")(710, {}) is None
