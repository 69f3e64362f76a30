"""Frame folders (the official raw-frame layout): frames extracted from the tiny synthetic videos
with PyAV, written as lossless PNG (so a folder and its source video must give the same clips,
pixel for pixel: same sampling, same crops) and as JPEG (the official format: DALI's image decoder
must agree with PIL). Missing frames are skipped and counted like bad videos, the index reports
them, and every stage runs from frame-folder lists."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vmae2_fast.data.index import build_index, load_index, StaleIndexError
from vmae2_fast.data.lists import read_list
from vmae2_fast.data.pyav.classify import VideoClsDataset, VideoTestDataset
from vmae2_fast.data.media import FrameLayout, VideoDecodeError, scan_frame_folder
from vmae2_fast.data.pyav.frames import read_frame_folder
from vmae2_fast.data.pyav.pretrain import PretrainVideoDataset
from vmae2_fast.data.pyav.video_io import count_frames, decode_frames

PNG = FrameLayout("img_{:05}.png", 1)
JPG = FrameLayout("img_{:05}.jpg", 1)


def extract(video: str, folder: Path, layout: FrameLayout, start: int) -> int:
    n = count_frames(video)
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(decode_frames(video, range(n))):
        Image.fromarray(frame).save(folder / layout.template.format(start + i), quality=95)
    return n


@pytest.fixture(scope="module")
def frames(tiny_synthetic, tmp_path_factory):
    """Frame folders of every tiny video, PNG from 1 and JPEG from 0, with their lists."""
    root = tmp_path_factory.mktemp("frames")
    out = {"root": root, "videos": {}}
    for split in ("train", "val"):
        items = read_list(getattr(tiny_synthetic, f"{split}_list"), tiny_synthetic.root, labels=True)
        png, jpg, pretrain = [], [], []
        for e in items:
            name = Path(e.rel).stem
            n = extract(e.path, root / "png" / name, PNG, 1)
            extract(e.path, root / "jpg" / name, JPG, 0)
            out["videos"][name] = e.path
            png.append(f"png/{name} {n} {e.label}")
            jpg.append(f"jpg/{name} {n} {e.label}")
            pretrain.append(f"png/{name} 1 {n}")
        for kind, lines in (("png", png), ("jpg", jpg)):
            (root / kind / f"{split}.csv").write_text("\n".join(lines) + "\n")
        if split == "train":
            (root / "pretrain.csv").write_text("\n".join(pretrain) + "\n")
    return out


def pairs(frames, split, kind="png", start=1):
    """(frame-folder entries, the same clips as video entries)."""
    folders = read_list(frames["root"] / kind / f"{split}.csv", str(frames["root"]), labels=True,
                        start_idx=start)
    return folders, [(frames["videos"][Path(e.path).name], e.label) for e in folders]


def test_png_folder_reads_the_video_frames_exactly(frames):
    name, video = next(iter(frames["videos"].items()))
    folder = frames["root"] / "png" / name
    n = count_frames(video)
    assert scan_frame_folder(str(folder), PNG.template, 1) == (n, [])
    idx = [0, 5, 5, n - 1, 2]
    assert np.array_equal(read_frame_folder(str(folder), idx, PNG.template, 1), decode_frames(video, idx))


def test_every_dataset_samples_a_folder_like_its_video(frames):
    folders, videos = pairs(frames, "train")
    common = dict(num_frames=8, sampling_rate=2, input_size=32, seed=5)
    for a, b in ((VideoClsDataset(folders, True, layout=PNG, aa="none", **common),
                  VideoClsDataset(videos, True, aa="none", **common)),
                 (VideoClsDataset(folders, False, layout=PNG, **common),
                  VideoClsDataset(videos, False, **common)),
                 (VideoClsDataset(folders, True, layout=PNG, sparse=True, **common),
                  VideoClsDataset(videos, True, sparse=True, **common))):
        a.set_epoch(2), b.set_epoch(2)
        for i in range(len(folders)):
            assert torch.equal(a[i][0], b[i][0]), i
    test_a = VideoTestDataset(folders, segments=2, crops=3, num_frames=8, sampling_rate=2, input_size=32, layout=PNG)
    test_b = VideoTestDataset(videos, segments=2, crops=3, num_frames=8, sampling_rate=2, input_size=32)
    assert torch.equal(test_a[0][0], test_b[0][0])
    pre = read_list(frames["root"] / "pretrain.csv", str(frames["root"]))     # path start total
    pa = PretrainVideoDataset(pre, num_frames=8, sampling_rate=2, input_size=32, num_sample=2, seed=1,
                              layout=PNG)
    from vmae2_fast.data.lists import VideoEntry
    pb = PretrainVideoDataset([VideoEntry(frames["videos"][Path(e.path).name]) for e in pre], num_frames=8,
                              sampling_rate=2, input_size=32, num_sample=2, seed=1)
    for i in range(3):
        assert torch.equal(pa[i][0], pb[i][0])


def test_missing_frames_are_skipped_and_counted(frames, tmp_path):
    folders, _ = pairs(frames, "train")
    broken = tmp_path / "broken"
    shutil.copytree(folders[0].path, broken)
    for i in range(1, 30):                                 # most frames gone: every clip hits one
        (broken / PNG.template.format(i)).unlink(missing_ok=True)
    items = [type(folders[0])(str(broken), start=1, total=folders[0].total, label=0)] + folders[1:]
    ds = VideoClsDataset(items, True, num_frames=8, sampling_rate=2, input_size=32, aa="none", layout=PNG)
    clips, label, erasures, skipped = ds[0]
    assert len(skipped) >= 1 and clips.shape == (2, 3, 8, 32, 32)
    assert {path for path, _ in skipped} == {str(broken)}   # each skip names the folder and why
    val = VideoClsDataset(items, False, num_frames=8, sampling_rate=2, input_size=32, layout=PNG)
    assert val[0][0] is None and [p for p, _ in val[0][2]] == [str(broken)]   # dropped, named
    with pytest.raises(VideoDecodeError, match="missing frame"):
        read_frame_folder(str(broken), [1], PNG.template, 1)


def test_index_counts_frames_and_reports_missing_ones(frames, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(frames["root"] / "jpg", root / "jpg")
    lst = root / "jpg" / "train.csv"
    first = lst.read_text().splitlines()[0].split()[0]
    (root / first / "img_00003.jpg").unlink()
    idx = build_index(str(lst), str(root), progress=False, fname_tmpl=JPG.template, start_idx=0,
                      labels=True)
    assert len(idx.videos) == 11 and len(idx.excluded) == 1
    assert "missing frames: 1 of the 24 listed (img_00003.jpg)" in idx.excluded[0]["reason"]
    assert all(v.codec == "rawframes" and v.frames == 24 and (v.width, v.height) == (48, 48)
               for v in idx.videos)
    load_index(str(lst), str(root), fname_tmpl=JPG.template, start_idx=0, labels=True)
    with pytest.raises(StaleIndexError, match="frame files"):
        load_index(str(lst), str(root), fname_tmpl=PNG.template, start_idx=0, labels=True)
    with pytest.raises(StaleIndexError, match="rawframes"):        # read as `path start total`
        load_index(str(lst), str(root), fname_tmpl=JPG.template, start_idx=0, labels=False)


def test_dali_image_decoder_agrees_with_pil(frames, tmp_path):
    import needs
    from vmae2_fast.data.dali.pipeline import DaliVideoLoader
    needs.dali()                 # not installed: skip locally, fail on CI
    root = tmp_path / "data"
    shutil.copytree(frames["root"] / "jpg", root / "jpg")
    lst = root / "jpg" / "val.csv"
    (root / lst.read_text().split()[0] / "img_00004.jpg").write_bytes(b"not a jpeg")
    idx = build_index(str(lst), str(root), progress=False, fname_tmpl=JPG.template,
                      start_idx=0, labels=True)
    dl = DaliVideoLoader(idx.videos, mode="val", batch_size=3, num_frames=8, sampling_rate=2,
                         input_size=32, short_side=32, fname_tmpl=JPG.template)
    ds = VideoClsDataset([v for v in read_list(lst, str(root), labels=True, start_idx=0)],
                         False, num_frames=8, sampling_rate=2, input_size=32, short_side_size=32,
                         layout=FrameLayout(JPG.template, 0))
    seen = dropped = 0
    for batch in dl(0):
        video = batch.video
        dropped += len(batch.skipped)
        for k, path in enumerate(batch.paths):
            ref = next(ds[i][0] for i in range(len(ds)) if ds.items[i].path == path)[0]
            # both are pixels in 0..255 (DALI's uint8, PyAV's float32 resize): the same JPEG
            # pixels and geometry differ by DALI's rounding (<= 0.5) and little else
            assert (video[k].float() - ref).abs().mean() < 1.0
            seen += 1
    assert seen == 5 and dropped == 1                          # the corrupt frame's clip is dropped


@pytest.mark.slow
def test_every_stage_runs_from_frame_folder_lists(frames, tmp_path):
    from vmae2_fast.cli import run_command
    root = str(frames["root"])
    common = ["--model", "vit_micro", "--preset", "cpu_demo", "--input-size", "32", "--num-frames", "4",
              "--sampling-rate", "2", "--batch-size", "4", "--epochs", "1", "--warmup-epochs", "0",
              "--num-workers", "0", "--no-progress", "--fname-tmpl", "img_{:05}.png"]
    pre = run_command("pretrain", common + ["--data", f"{root}/pretrain.csv", "--data-root", root,
                                            "--output-dir", str(tmp_path / "pt"), "--preview-every", "0"])
    assert pre["global_step"] == 3 and pre["skipped_videos"] == 0
    ft = run_command("finetune", common + ["--data", f"{root}/png", "--data-root", root, "--short-side-size",
                                           "32", "--init", str(tmp_path / "pt" / "checkpoint-last.pth"),
                                           "--output-dir", str(tmp_path / "ft")])
    assert ft["best_top1"] >= 0
    ev = run_command("evaluate", ["--checkpoint", str(tmp_path / "ft" / "checkpoint-best.pth"), "--data",
                                  f"{root}/png/val.csv", "--data-root", root, "--num-segments", "2",
                                  "--num-crops", "1", "--output-dir", str(tmp_path / "ev")])
    assert ev["videos"] == 6 and ev["views"] == "2x1"
    cfg = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert cfg["fname_tmpl"] == "img_{:05}.png"
