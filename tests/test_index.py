"""Manifests in every format, the video index, and its staleness check."""
import os
import time

import pytest

from vmae2_fast.data.index import StaleIndexError, build_index, index_path, load_index
from vmae2_fast.data.tools.index import main
from vmae2_fast.data.pyav.video_io import count_frames


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_index_probes_excludes_and_goes_stale(tiny_synthetic, tmp_path, capsys):
    vids = sorted(os.listdir(os.path.join(tiny_synthetic.root, "videos")))[:3]
    src = os.path.join(tiny_synthetic.root, "videos")
    for v in vids:
        (tmp_path / v).write_bytes(open(os.path.join(src, v), "rb").read())
    data = (tmp_path / vids[0]).read_bytes()
    (tmp_path / "trunc.webm").write_bytes(data[: len(data) // 3])
    (tmp_path / "junk.webm").write_bytes(b"not a video at all" * 50)
    lst = write(tmp_path, "list.txt", "".join(f"{v} 0 -1\n" for v in vids + ["trunc.webm",
                                                                            "junk.webm", "gone.webm"]))
    assert main([lst, "--data-root", str(tmp_path), "--workers", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "3 usable videos, 3 excluded" in out and "truncated" in out and "missing" in out
    assert os.path.isfile(index_path(lst))
    idx = load_index(lst, str(tmp_path))
    assert [v.rel for v in idx.videos] == vids
    for v in idx.videos:       # packet counts agree with a full decode, header facts recorded
        assert v.frames == count_frames(v.path) == 24
        assert (v.codec, v.width, v.height, v.fps) == ("vp9", 48, 48, 12.0)
    reasons = {x["rel"]: x["reason"] for x in idx.excluded}
    assert reasons["gone.webm"] == "missing" and reasons["junk.webm"].startswith("corrupt")
    assert reasons["trunc.webm"].startswith("truncated")

    # a changed file, a changed list and another data root all make the index stale
    time.sleep(0.01)
    (tmp_path / vids[1]).write_bytes(data)
    with pytest.raises(StaleIndexError, match=f"changed.*{vids[1]}.*python -m vmae2_fast.data.tools.index"):
        load_index(lst, str(tmp_path))
    build_index(lst, str(tmp_path), progress=False)
    load_index(lst, str(tmp_path))
    with pytest.raises(StaleIndexError, match="data-root"):
        load_index(lst, "/elsewhere")
    with open(lst, "a") as f:
        f.write(f"{vids[0]} 0 -1\n")
    with pytest.raises(StaleIndexError, match="list has changed"):
        load_index(lst, str(tmp_path))


def test_pyav_training_refuses_a_stale_index(tiny_synthetic, tmp_path, capsys):
    """The same flags train with a fresh index and stop, before any compute, with a stale one."""
    import shutil
    from cli_runs import micro_flags
    from vmae2_fast.pretrain import main as pretrain
    lst = tmp_path / "p.csv"
    shutil.copy(tiny_synthetic.pretrain_list, lst)
    build_index(str(lst), tiny_synthetic.root, progress=False)

    def train(out):
        return pretrain(micro_flags(tiny_synthetic, tmp_path / out, data=lst, decoder="pyav",
                                    max_steps=1, progress=False))

    assert train("fresh") == 0, capsys.readouterr().err       # control: these flags do train
    assert (tmp_path / "fresh" / "checkpoint-last.pth").exists()
    capsys.readouterr()
    with open(lst, "a") as f:
        f.write("videos/extra.webm 0 -1\n")
    assert train("stale") == 2
    err = capsys.readouterr().err
    assert "is stale" in err and "list has changed" in err
    assert f"python -m vmae2_fast.data.tools.index {lst} --data-root {tiny_synthetic.root}" in err
    assert not (tmp_path / "stale" / "checkpoint-last.pth").exists()
