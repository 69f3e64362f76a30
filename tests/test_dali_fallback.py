"""Per-file fallback: with ``--decoder auto`` the files DALI cannot decode are decoded by PyAV
inside the DALI loader, in their places of the global batch order. On this machine DALI's CPU
backend decodes VP9 but not H.264, a real mixed case: the list mixes the tiny set's VP9 files
with H.264 copies of some of them (made here with PyAV)."""
import logging
import os
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch

import needs
from test_dali_pipeline import R, S, T, loader   # batch 4, 2 views, seed 7
from vmae2_fast.data.index import IndexedVideo, build_index, dali_cannot_decode
from vmae2_fast.data.lists import VideoEntry
from vmae2_fast.data.loaders import pretrain_loader
from vmae2_fast.data.pyav.pretrain import PretrainVideoDataset
from vmae2_fast.data.synthetic import write_video

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # DALI's RandAugment aliases
H264_EVERY = 3                   # every third video of the list is an H.264 copy


@pytest.fixture(scope="module")
def dali():
    return needs.dali()


def h264_copy(src: str, dst: str, pix_fmt: str = "yuv420p") -> None:
    with av.open(src) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    if pix_fmt == "yuv420p":
        write_video(dst, frames, fps=12, codec="h264")
        return
    with av.open(dst, "w", format="mp4") as out:       # e.g. 4:2:2 H.264, which NVDEC refuses
        s = out.add_stream("libx264", rate=12)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        s.options = {"preset": "ultrafast", "crf": "16"}
        for f in frames:
            out.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(s.encode())


@pytest.fixture(scope="module")
def lists(dali, tiny_synthetic, tmp_path_factory):
    """(the VP9 list's videos, the mixed list's videos, mixed list file, root): the same videos
    in the same order, every third one an H.264 copy in the mixed list."""
    root = tmp_path_factory.mktemp("mixed")
    rels = [line.split()[0] for line in open(tiny_synthetic.pretrain_list).read().splitlines()]
    mixed = []
    for i, rel in enumerate(rels):
        src = os.path.join(tiny_synthetic.root, rel)
        if i % H264_EVERY == 1:
            dst = f"h264_{i}.mp4"
            h264_copy(src, str(root / dst))
        else:
            dst = f"vp9_{i}.webm"
            os.symlink(src, root / dst)
        mixed.append(dst)
    vp9_list, mixed_list = root / "vp9.txt", root / "mixed.txt"
    vp9_list.write_text("".join(f"{r} 0 -1\n" for r in rels))
    mixed_list.write_text("".join(f"{r} 0 -1\n" for r in mixed))
    vp9 = build_index(str(vp9_list), tiny_synthetic.root, progress=False,
                      output=str(root / "vp9.index.json")).videos
    mix = build_index(str(mixed_list), str(root), progress=False).videos
    assert [v.codec for v in mix].count("h264") == len(rels) // H264_EVERY
    return vp9, mix, str(mixed_list), str(root)


def test_the_index_says_which_files_dali_cannot_decode(lists, tmp_path):
    _, mix, _, _ = lists
    h264 = next(v for v in mix if v.codec == "h264")
    vp9 = next(v for v in mix if v.codec == "vp9")
    assert h264.pix_fmt == "yuv420p" and vp9.pix_fmt == "yuv420p"
    assert "codec h264" in dali_cannot_decode(h264, "cpu") and dali_cannot_decode(h264, "gpu") is None
    assert dali_cannot_decode(vp9, "cpu") is None and dali_cannot_decode(vp9, "gpu") is None
    h264_copy(vp9.path, str(tmp_path / "422.mp4"), pix_fmt="yuv422p")
    (tmp_path / "l.txt").write_text("422.mp4 0 -1\n")
    v422 = build_index(str(tmp_path / "l.txt"), str(tmp_path), progress=False).videos[0]
    assert v422.pix_fmt == "yuv422p" and "pixel format yuv422p" in dali_cannot_decode(v422, "gpu")
    mpeg4 = IndexedVideo("x.avi", "x.avi", 10, 25.0, "mpeg4", 64, 48, pix_fmt="yuv420p")
    assert "codec mpeg4" in dali_cannot_decode(mpeg4, "gpu")
    old = IndexedVideo("x.mp4", "x.mp4", 10, 25.0, "h264", 64, 48)     # an index without pix_fmt
    assert dali_cannot_decode(old, "gpu") is None


def test_mixed_batches_are_dali_and_pyav_rows_in_the_global_order(lists, caplog):
    """Every row of every batch: a DALI row equals the pure-DALI run of the VP9 list (same
    samples, the same DALI graph), a fallback row equals the PyAV pre-training dataset's item,
    bit for bit (same frames, boxes, decoder and resize)."""
    vp9, mix, _, _ = lists
    with caplog.at_level(logging.INFO, logger="vmae2_fast"):
        mixed = loader(mix, fallback=True)
    n_h264 = sum(v.codec == "h264" for v in mix)
    assert f"DALI (cpu) decodes {len(mix) - n_h264} of {len(mix)} videos; PyAV decodes the other " \
           f"{n_h264} (codec h264: {n_h264})" in caplog.text
    pyav = PretrainVideoDataset([VideoEntry(v.path, 0, v.frames) for v in mix], num_frames=T,
                                sampling_rate=R, input_size=S, num_sample=2, seed=7)
    pyav.set_epoch(1)
    mixed.sampler.set_epoch(1)
    order = [[i for _, i in b] for b in mixed.sampler]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vmae2_fast"):
        got = list(mixed(1))
    ref = list(loader(vp9)(1))
    assert len(got) == len(ref) == len(order) == len(mix) // 4
    seen = {"dali": 0, "pyav": 0}
    for batch, want, idxs in zip(got, ref, order):
        video, want = batch.video, want.video
        assert video.shape == (8, 3, T, S, S) and video.dtype == torch.uint8 and batch.skipped == ()
        for j, i in enumerate(idxs):
            rows = video[2 * j:2 * j + 2]
            if mix[i].codec == "h264":
                assert torch.equal(rows, pyav[i][0]), (i, mix[i].path)
                seen["pyav"] += 1
            else:
                assert torch.equal(rows, want[2 * j:2 * j + 2]), (i, mix[i].path)
                seen["dali"] += 1
    assert seen["pyav"] > 0 and seen["dali"] > 0 and dict(mixed.decoded) == seen
    assert f"epoch 1: DALI (cpu) decoded {seen['dali']} videos, PyAV {seen['pyav']}" in caplog.text


def test_forced_dali_leaves_them_out_and_names_the_reencode_command(lists, caplog):
    """`--decoder dali` (no fallback): the files are refused, and the warning says how to decode
    them (`--decoder auto`) or re-encode the list. Wired through `loaders.pretrain_loader`."""
    _, mix, list_file, root = lists
    index = SimpleNamespace(videos=mix, list_file=list_file, data_root=root)
    dist = SimpleNamespace(world_size=1, rank=0)
    cfg = SimpleNamespace(num_frames=T, sampling_rate=R, input_size=S, seed=0, num_workers=1,
                          dali_instances=1, batch_size=2, num_sample=1, decoder="dali")
    with caplog.at_level(logging.WARNING, logger="vmae2_fast"):
        forced = pretrain_loader(mix, index, cfg, dist, torch.device("cpu"), "dali")
    n_h264 = sum(v.codec == "h264" for v in mix)
    assert forced.num_videos == len(mix) - n_h264 and not forced.pyav_paths
    assert f"cannot decode {n_h264} of {len(mix)} videos (codec h264: {n_h264}); they are left out" in caplog.text
    assert f"python -m vmae2_fast.data.tools.reencode {list_file} --data-root {root} --out-root" in caplog.text
    assert "--decoder auto" in caplog.text
    cfg.decoder = "auto"
    auto = pretrain_loader(mix, index, cfg, dist, torch.device("cpu"), "dali")
    assert auto.num_videos == len(mix) and len(auto.pyav_paths) == n_h264


def test_a_corrupt_fallback_file_is_replaced_in_training_and_dropped_in_evaluation(lists, tmp_path):
    _, mix, _, _ = lists
    good = mix[:6]
    h264 = next(v for v in good if v.codec == "h264")
    data = open(h264.path, "rb").read()
    (tmp_path / "trunc.mp4").write_bytes(data[:len(data) // 4])
    bad = IndexedVideo(str(tmp_path / "trunc.mp4"), "trunc.mp4", h264.frames, 12.0, "h264", 48, 48,
                       label=5, pix_fmt="yuv420p")
    dl = loader(good + [bad], fallback=True, batch_size=2, num_views=1, sampling_rate=7)
    skipped = []
    for epoch in range(3):
        for batch in dl(epoch):
            assert batch.video.shape == (2, 3, T, S, S)
            skipped += batch.skipped
    assert dl.bad == {bad.path} and "PyAV cannot decode it either" in dl.reasons[bad.path]
    assert skipped and {p for p, _ in skipped} == {bad.path} and dl.skipped_total == len(skipped)
    labelled = [IndexedVideo(v.path, v.rel, v.frames, v.fps, v.codec, v.width, v.height, label=k,
                             pix_fmt=v.pix_fmt) for k, v in enumerate(good)]
    ev = loader(labelled[:2] + [bad] + labelled[2:], fallback=True, mode="test", batch_size=3,
                num_views=1, test_segments=1)
    batches = list(ev(0))
    assert [p for b in batches for p in b.paths] == [v.path for v in labelled]     # dropped, no stand-in
    assert torch.cat([b.labels for b in batches]).tolist() == list(range(len(labelled)))
    assert [s[0] for b in batches for s in b.skipped] == [bad.path] and ev.skipped_total == 1


def test_finetune_and_eval_modes_mix_too(lists):
    vp9, mix, _, _ = lists
    lab = lambda vs: [IndexedVideo(v.path, v.rel, v.frames, v.fps, v.codec, v.width, v.height,  # noqa: E731
                                   label=k % 6, pix_fmt=v.pix_fmt) for k, v in enumerate(vs)]
    ft = loader(lab(mix), fallback=True, mode="finetune", batch_size=3, erase_prob=0.5)
    n = 0
    for batch in ft(0):
        assert batch.video.shape == (6, 3, T, S, S) and batch.video.dtype == torch.uint8
        assert len(batch.labels) == 6 and all(0 <= e[0] < 6 for e in batch.erasures)
        n += 1
    assert n == len(mix) // 3 and ft.decoded["pyav"] > 0
    # validation: every video once, in list order; the fallback rows are the DALI graph's
    # computation by PyAV, so they match the pure-DALI run of the VP9 originals up to the
    # decoders' colour conversion
    got = list(loader(lab(mix), fallback=True, mode="val", batch_size=5, num_views=1)(0))
    ref = list(loader(lab(vp9), mode="val", batch_size=5, num_views=1)(0))
    assert [p for b in got for p in b.paths] == [v.path for v in mix]
    a, b = (torch.cat([x.video for x in r]).float() for r in (got, ref))
    h264_rows = torch.tensor([v.codec == "h264" for v in mix])
    assert torch.equal(a[~h264_rows], b[~h264_rows])
    assert (a[h264_rows] - b[h264_rows]).abs().mean() < 6        # grey levels: decoder + x264 loss
