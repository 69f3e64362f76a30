"""Kinetics-710 from three small made-up Kinetics lists."""
import json

from vmae2_fast.data.tools.k710 import main, youtube_id


def w(p, lines):
    p.write_text("".join(x + "\n" for x in lines))
    return str(p)


def test_k710_union_dedup_val_removed_and_maps(tmp_path):
    k400 = (w(tmp_path / "t4", ["aaaaaaaaaaa_000001_000011.mp4 0", "bbbbbbbbbbb_000002_000012.mp4 1",
                                "vvvvvvvvvvv_000000_000010.mp4 1"]),
            w(tmp_path / "v4", ["ccccccccccc_000003_000013.mp4 0"]),
            w(tmp_path / "l4", ["abseiling", "dying hair"]))
    k600 = (w(tmp_path / "t6", ["aaaaaaaaaaa_000001_000011.mp4 1",      # duplicate of K400's
                                "ddddddddddd_000004_000014.mp4 2",
                                "ccccccccccc_000003_000013.mp4 1"]),    # a K400 val video
            w(tmp_path / "v6", ["vvvvvvvvvvv_000000_000010.mp4 0"]),    # val here, train in K400
            w(tmp_path / "l6", ["Dyeing_Hair", "Abseiling", "juggling fire"]))
    k700 = (w(tmp_path / "t7", ["eeeeeeeeeee_000005_000015.mp4 0"]),
            w(tmp_path / "v7", ["fffffffffff_000006_000016.mp4 1"]),
            w(tmp_path / "l7", ["\"juggling fire\"", "new class", "abseiling"]))
    merge = tmp_path / "merge.json"
    merge.write_text(json.dumps({"dying hair": "dyeing hair"}))
    out = tmp_path / "k710"
    assert main(["--out", str(out), "--k400", *k400, "--k600", *k600, "--k700", *k700,
                 "--prefix", "k700=k700/", "--merge", str(merge)]) == 0
    names = (out / "label_map_k710.txt").read_text().splitlines()
    assert names == ["abseiling", "dying hair", "juggling fire", "new class"]
    assert json.loads((out / "label_710to400.json").read_text()) == [0, 1]
    assert json.loads((out / "label_710to600.json").read_text()) == [1, 0, 2]
    assert json.loads((out / "label_710to700.json").read_text()) == [2, 3, 0]
    train = (out / "train.csv").read_text().splitlines()
    val = (out / "val.csv").read_text().splitlines()
    assert val == ["ccccccccccc_000003_000013.mp4 0", "vvvvvvvvvvv_000000_000010.mp4 1",
                   "k700/fffffffffff_000006_000016.mp4 3"]
    assert train == ["aaaaaaaaaaa_000001_000011.mp4 0", "bbbbbbbbbbb_000002_000012.mp4 1",
                     "ddddddddddd_000004_000014.mp4 2", "k700/eeeeeeeeeee_000005_000015.mp4 2"]
    assert youtube_id("x/abc.mp4") == "abc"
