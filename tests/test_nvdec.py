"""NVDEC (DALI's ``mixed`` video decoder), validated on a GPU (`pytest -m gpu`):

* it gives the frames PyAV gives, on real H.264 and HEVC files made here, for the official
  pre-training sampling (a 16 x 4 clip from the middle of the video, seeking to it): every frame is
  the right one (nearer to PyAV's frame i than to its neighbours) and the pixels agree within the
  colour-conversion tolerance the README states (mean absolute difference at most 3 grey levels);
* the re-encoded embedded dataset trains (and a folder of real clips, when
  ``VMAE2_REAL_VIDEOS`` names one, re-encoded first);
* a corrupt file in a GPU batch is skipped and counted as on the CPU;
* with ``--decoder auto`` a 4:2:2 H.264 file (NVDEC refuses it) is decoded by PyAV in the same run
  and the log says how many went which way;
* the step never waits for NVDEC when NVDEC is faster; normalisation on the GPU equals the CPU's.
"""
import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import needs
from cli_runs import micro_flags, train_records
from vmae2_fast.data.clip_sampling import pretrain_frame_indices
from vmae2_fast.data.index import IndexedVideo, build_index
from vmae2_fast.data.pyav.video_io import decode_frames
from vmae2_fast.data.synthetic import synthetic_video_frames

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
COLOUR_TOLERANCE = 3.0              # mean |DALI - PyAV| in grey levels (README, "Decoders")
SIZE, FRAMES = 160, 96


def encode(path: Path, encoder: str, pix_fmt: str = "yuv420p", gop: int = 32) -> Path:
    """A moving synthetic clip (every frame differs from its neighbours) in ``encoder``."""
    frames = synthetic_video_frames(0, "train", 0, 0, FRAMES, SIZE)
    fmt = "mp4"
    with av.open(str(path), "w", format=fmt) as out:
        s = out.add_stream(encoder, rate=25)
        s.width, s.height, s.pix_fmt = SIZE, SIZE, pix_fmt
        s.codec_context.gop_size = gop
        s.options = ({"preset": "ultrafast", "crf": "18"} if encoder == "libx264" else
                     {"preset": "ultrafast", "crf": "18", "x265-params": f"keyint={gop}:log-level=error"})
        for f in frames:
            out.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(s.encode())
    return path


def nvdec_frames(path: Path, indices) -> np.ndarray:
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    @pipeline_def(batch_size=1, num_threads=2, device_id=0)
    def pipe():
        enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
        idx = fn.external_source(name="idx", dtype=types.INT32, ndim=1)
        return fn.decoders.video(enc, device="mixed", frames=idx)
    p = pipe()
    p.build()
    p.feed_input("enc", [np.fromfile(path, np.uint8)])
    p.feed_input("idx", [np.asarray(indices, np.int32)])
    return np.array(p.run()[0].as_cpu()[0])


@pytest.fixture(scope="module", autouse=True)
def dali():
    return needs.dali()


@pytest.mark.parametrize("encoder", ["libx264", "libx265"], ids=["h264", "hevc"])
def test_nvdec_gives_pyavs_frames_for_the_official_sampling(tmp_path, encoder):
    path = encode(tmp_path / f"clip-{encoder}.mp4", encoder)
    idx = pretrain_frame_indices(FRAMES, 16, 4, np.random.default_rng(0))
    idx = np.concatenate([idx, [0, 1, FRAMES - 1]])            # and the edges, out of order
    got = nvdec_frames(path, idx).astype(np.float64)
    everything = decode_frames(str(path), np.arange(FRAMES)).astype(np.float64)
    want = everything[idx]
    assert got.shape == want.shape == (len(idx), SIZE, SIZE, 3)
    err = np.abs(got - want).mean(axis=(1, 2, 3))
    assert err.max() <= COLOUR_TOLERANCE, err
    for k, i in enumerate(idx):                                # the right frame, not a neighbour
        for j in (i - 1, i + 1):
            if 0 <= j < FRAMES:
                assert err[k] < np.abs(got[k] - everything[j]).mean(), (i, j)


def reencoded_train(tmp_path: Path, list_file: str, root: str, decoder: str = "dali"):
    from vmae2_fast.data.tools.reencode import reencode_list
    from vmae2_fast.data.tools.transcode import EncodeSettings
    from vmae2_fast.pretrain import main
    # short side 128 (the tiny set is 48x48: at NVDEC's minimum H.264 width), GOP 16, 4:2:0
    res = reencode_list(list_file, root, str(tmp_path / "h264"),
                        EncodeSettings(codec="h264", short_side=128, upscale=True), workers=4,
                        progress=False)
    assert not res.failed and res.index is not None
    assert {v.codec for v in res.index.videos} == {"h264"}
    ds = type("DS", (), {"pretrain_list": res.out_list, "root": str(tmp_path / "h264")})
    out = tmp_path / "run"
    assert main(micro_flags(ds, out, decoder=decoder, device="cuda", max_steps=4, progress=False,
                            num_workers=2)) == 0
    losses = [r["loss"] for r in train_records(out)]
    assert losses and all(np.isfinite(losses))
    log = (out / "log.txt").read_text()
    assert f"video decoder: {decoder}" in log
    return losses


def test_the_reencoded_embedded_dataset_trains_on_nvdec(tiny_synthetic, tmp_path):
    reencoded_train(tmp_path, tiny_synthetic.pretrain_list, tiny_synthetic.root)


def test_reencoded_real_clips_train_on_nvdec(tmp_path):
    folder = os.environ.get("VMAE2_REAL_VIDEOS")
    if not folder:
        pytest.skip("set VMAE2_REAL_VIDEOS to a folder of real video files to run this")
    files = sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*")
                   if p.suffix.lower() in (".mp4", ".avi", ".mkv", ".webm", ".mov"))[:16]
    assert len(files) >= 4, f"{folder} holds fewer than 4 videos"
    lst = tmp_path / "real.txt"
    lst.write_text("".join(f"{f} 0 -1\n" for f in files))
    reencoded_train(tmp_path, str(lst), folder)


def test_a_corrupt_file_in_a_gpu_batch_is_skipped_and_counted(tmp_path):
    from vmae2_fast.data.dali.pipeline import DaliVideoLoader
    good = [encode(tmp_path / f"g{k}.mp4", "libx264") for k in range(5)]
    data = good[0].read_bytes()
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "garbage.mp4").write_bytes(b"\0\0\0\x18ftypmp42" + b"\0" * 800)
    (tmp_path / "l.txt").write_text("".join(f"{p.name} 0 -1\n" for p in good))
    videos = build_index(str(tmp_path / "l.txt"), str(tmp_path), progress=False).videos
    bad = [IndexedVideo(str(tmp_path / n), n, FRAMES, 25.0, "h264", SIZE, SIZE, pix_fmt="yuv420p")
           for n in ("trunc.mp4", "garbage.mp4")]
    dl = DaliVideoLoader(videos + bad, batch_size=2, num_frames=8, sampling_rate=4, input_size=64,
                         device="gpu", device_id=0, target_device="cuda:0", num_threads=2)
    skipped = 0
    for epoch in range(3):
        for batch in dl(epoch):
            video, sk = batch.video, batch.skipped
            assert video.device.type == "cuda" and video.dtype == torch.uint8
            assert video.shape == (2, 3, 8, 64, 64)
            skipped += len(sk)
            assert all(p in {b.path for b in bad} for p, _ in sk)
    assert dl.bad == {b.path for b in bad} and skipped >= 2 and skipped == dl.skipped_total


def test_auto_decodes_what_nvdec_refuses_with_pyav_in_the_same_run(tmp_path):
    """A list of H.264 4:2:0 files and one 4:2:2 file, `--decoder auto` on the GPU: every video
    trains, the 4:2:2 one through PyAV, and the run log says how many went which way."""
    from vmae2_fast.pretrain import main
    names = [encode(tmp_path / f"v{k}.mp4", "libx264").name for k in range(7)]
    names.append(encode(tmp_path / "v422.mp4", "libx264", pix_fmt="yuv422p").name)
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{n} 0 -1\n" for n in names))
    build_index(str(lst), str(tmp_path), progress=False)
    ds = type("DS", (), {"pretrain_list": str(lst), "root": str(tmp_path)})
    out = tmp_path / "run"
    assert main(micro_flags(ds, out, device="cuda", epochs=1, progress=False, batch_size=4,
                            num_workers=2)) == 0
    log = (out / "log.txt").read_text()
    assert "video decoder: dali (auto" in log
    assert "DALI (gpu) decodes 7 of 8 videos; PyAV decodes the other 1 (pixel format yuv422p: 1)" in log
    assert "epoch 0: DALI (gpu) decoded " in log and " videos, PyAV " in log
    assert not [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()
                if json.loads(x).get("skipped_videos")]


def test_normalisation_on_the_gpu_equals_the_cpu():
    from vmae2_fast.data.pixels import normalize_on_device
    x = torch.randint(0, 256, (4, 3, 8, 32, 32), dtype=torch.uint8)
    cpu = normalize_on_device(x)
    gpu = normalize_on_device(x.cuda())
    assert gpu.dtype == torch.float32 and (gpu.cpu() - cpu).abs().max() < 1e-6
    bf = normalize_on_device(x.cuda(), torch.bfloat16)
    assert bf.dtype == torch.bfloat16 and (bf.float().cpu() - cpu).abs().max() < 0.02
    er = [(1, 2, 3, 4, 5, None), (2, 0, 0, 8, 8, torch.ones(3, 8, 8, 8))]
    out = normalize_on_device(x.cuda(), erase=er).cpu()
    assert torch.equal(out[2, :, :, :8, :8], torch.ones(3, 8, 8, 8))
    assert not torch.equal(out[1, :, :, 2:6, 3:8], cpu[1, :, :, 2:6, 3:8])


def test_the_step_never_waits_for_nvdec_when_it_is_faster(tmp_path):
    """DALI on the GPU prefetches on its own stream: a 0.25 s step never waits for data after
    the first batch (the loader decodes 2 x 2 clips of 160^2 H.264 far faster than that)."""
    from test_overlap import STEP_S, run_steps
    from vmae2_fast.data.dali.pipeline import DaliVideoLoader
    names = [encode(tmp_path / f"v{k}.mp4", "libx264").name for k in range(8)]
    (tmp_path / "l.txt").write_text("".join(f"{n} 0 -1\n" for n in names))
    videos = build_index(str(tmp_path / "l.txt"), str(tmp_path), progress=False).videos
    dl = DaliVideoLoader(videos, batch_size=2, num_frames=16, sampling_rate=4, input_size=112,
                         num_views=2, device="gpu", device_id=0, target_device="cuda:0", num_threads=2)
    list(dl(0))
    marks = run_steps(dl(1), STEP_S, device="cuda")
    waits = [got - t0 for t0, got, _ in marks[1:]]
    assert len(marks) == 4 and max(waits) < 0.1 * STEP_S, waits
