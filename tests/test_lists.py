"""Annotation lists in the official formats."""
import os

import pytest

from vmae2_fast.data.lists import read_cls_list, read_list


def write(tmp_path, text, name="list.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_pretrain_list_format_and_data_root(tmp_path):
    f = write(tmp_path, "videos/a.mp4 0 -1\n/abs/b.webm 1 120\n\nframes/c 1 64 0\n")
    items = read_list(f, data_root="/data")
    assert [(e.path, e.start, e.total) for e in items] == [
        ("/data/videos/a.mp4", 0, -1),
        ("/abs/b.webm", 1, 120),       # absolute path kept
        ("/data/frames/c", 1, 64)]     # 4th field ignored
    assert read_list(f)[0].path == "videos/a.mp4"     # no root: unchanged


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
        read_list(f)
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
        read_list(missing)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_cls_list(missing)


def test_empty_list(tmp_path):
    f = write(tmp_path, "\n  \n")
    with pytest.raises(ValueError, match="empty"):
        read_list(f)
    with pytest.raises(ValueError, match="empty"):
        read_cls_list(f)


def test_every_format_through_one_reader(tmp_path):
    pre = read_list(write(tmp_path, "a.webm 0 -1\nb.webm 2 30 0\n", "p.txt"), "/d")
    assert [(e.path, e.start, e.total, e.label) for e in pre] == [("/d/a.webm", 0, -1, None),
                                                                  ("/d/b.webm", 2, 30, None)]
    cls = read_list(write(tmp_path, "a.webm 3\n\nb.webm 0\n", "c.txt"))
    assert [(e.rel, e.label) for e in cls] == [("a.webm", 3), ("b.webm", 0)]
    raw = read_list(write(tmp_path, "frames/a 64 5\n", "r.txt"), kind="rawframes")
    assert (raw[0].total, raw[0].label) == (64, 5)
    csv = read_list(write(tmp_path, "video,label,frames\nx.mp4,4,100\ny.mp4,1,\n", "h.csv"), "/r")
    assert [(e.path, e.label, e.total) for e in csv] == [("/r/x.mp4", 4, 100), ("/r/y.mp4", 1, -1)]
    with pytest.raises(ValueError, match="p.txt:2"):
        read_list(write(tmp_path, "a.webm 0 -1\nb.webm x\n", "p.txt"), kind="pretrain")
    with pytest.raises(ValueError, match="no path column"):
        read_list(write(tmp_path, "name,label\nx,1\n", "bad.csv"), kind="csv")


def test_csv_without_header_and_with_path_label_header(tmp_path):
    """`path,label` CSV (with or without its header line) reads like `path label`."""
    expected = [(os.path.join("/r", "a.mp4"), 3), (os.path.join("/r", "b c.mp4"), 0)]
    assert read_cls_list(write(tmp_path, "a.mp4,3\nb c.mp4,0\n", "n.csv"), "/r") == expected
    assert read_cls_list(write(tmp_path, "path,label\na.mp4,3\nb c.mp4,0\n", "h.csv"), "/r") == expected
    pre = read_list(write(tmp_path, "a.mp4,2,40\n", "p.csv"))
    assert [(e.path, e.start, e.total) for e in pre] == [("a.mp4", 2, 40)]
    with pytest.raises(ValueError, match="n2.csv:2:.*integer"):
        read_cls_list(write(tmp_path, "a.mp4,3\nb.mp4,x\n", "n2.csv"))


def test_classification_reader_needs_labels_and_reads_frame_lists(tmp_path):
    # three fields with labels wanted: the official raw-frame format `frame_dir total label`
    assert read_cls_list(write(tmp_path, "frames/a 64 5\n", "r.txt"), "/d") == [("/d/frames/a", 5)]
    assert read_list(write(tmp_path, "a.mp4 3\n", "c.txt"))[0].label == 3
    with pytest.raises(ValueError, match="no label"):
        read_cls_list(write(tmp_path, "path,start\na.mp4,0\n", "nolabel.csv"))
