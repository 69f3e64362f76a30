"""Annotation lists in the official formats."""
import os

import pytest

from vmae2_fast.data.lists import PretrainItem, read_cls_list, read_pretrain_list


def write(tmp_path, text, name="list.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_pretrain_list_format_and_data_root(tmp_path):
    f = write(tmp_path, "videos/a.mp4 0 -1\n/abs/b.webm 1 120\n\nframes/c 1 64 0\n")
    items = read_pretrain_list(f, data_root="/data")
    assert items == [PretrainItem("/data/videos/a.mp4", 0, -1),
                     PretrainItem("/abs/b.webm", 1, 120),       # absolute path kept
                     PretrainItem("/data/frames/c", 1, 64)]     # 4th field ignored
    assert read_pretrain_list(f)[0].path == "videos/a.mp4"     # no root: unchanged


def test_cls_list_format(tmp_path):
    f = write(tmp_path, "videos/a.webm 3\nvideos/b.webm 0\n")
    assert read_cls_list(f, str(tmp_path)) == [(os.path.join(str(tmp_path), "videos/a.webm"), 3),
                                               (os.path.join(str(tmp_path), "videos/b.webm"), 0)]


@pytest.mark.parametrize("text, lineno", [
    ("a.mp4 0 -1\nb.mp4 0\n", 2),            # two fields (the official code crashes here)
    ("a.mp4 0 -1\n\nb.mp4 x -1\n", 3),       # not an integer; blank lines still count
    ("a.mp4 0 -1 0 extra\n", 1),             # five fields
])
def test_pretrain_malformed_line_names_file_and_line(tmp_path, text, lineno):
    f = write(tmp_path, text)
    with pytest.raises(ValueError) as err:
        read_pretrain_list(f)
    msg = str(err.value)
    assert f"{f}:{lineno}:" in msg
    assert text.splitlines()[lineno - 1].strip() in msg


def test_cls_malformed_line(tmp_path):
    f = write(tmp_path, "a.mp4 1\nb.mp4\n")
    with pytest.raises(ValueError, match=":2:.*b.mp4"):
        read_cls_list(f)
    f = write(tmp_path, "a.mp4 cat\n", "l2.csv")
    with pytest.raises(ValueError, match=":1:.*integer"):
        read_cls_list(f)


def test_missing_file(tmp_path):
    missing = str(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_pretrain_list(missing)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_cls_list(missing)


def test_empty_list(tmp_path):
    f = write(tmp_path, "\n  \n")
    with pytest.raises(ValueError, match="empty"):
        read_pretrain_list(f)
    with pytest.raises(ValueError, match="empty"):
        read_cls_list(f)
