"""The DALI loader on the CPU backend (VP9): same frames, boxes and pixels as the PyAV path."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import needs
from vmae2_fast.data import VideoEntry, PretrainVideoDataset
from vmae2_fast.data.batches import ClassifyBatch, EvalBatch, PretrainBatch
from vmae2_fast.data.dali.pipeline import DaliVideoLoader
from vmae2_fast.data.index import IndexedVideo, build_index
from vmae2_fast.data.pixels import normalize_on_device
from vmae2_fast.data.clip_sampling import pretrain_frame_indices
from vmae2_fast.data.clip_sampling import multiscale_crop_box
from vmae2_fast.data.pyav.video_io import decode_frames

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # DALI's RandAugment aliases


@pytest.fixture(autouse=True, scope="module")
def dali():
    return needs.dali()     # not installed: skip locally, fail on CI; broken: fail

T, R, S = 4, 2, 32


@pytest.fixture(scope="module")
def videos(tiny_synthetic):
    return build_index(tiny_synthetic.pretrain_list, tiny_synthetic.root, progress=False,
                       output=str(tiny_synthetic.root) + "/../dali_test.index.json").videos


def loader(videos, **kw):
    args = dict(batch_size=4, num_frames=T, sampling_rate=R, input_size=S, num_views=2, seed=7)
    args.update(kw)
    return DaliVideoLoader(videos, **args)


def test_indices_and_boxes_are_the_official_sampler(videos):
    dl = loader(videos)
    for i in range(len(videos)):
        s = dl.planner.sample(3, i, 0)
        rng = np.random.default_rng([7, 3, i, 0])
        v = videos[i]
        assert np.array_equal(s.frames, pretrain_frame_indices(v.frames, T, R, rng))
        assert s.boxes == [multiscale_crop_box(v.width, v.height, S, rng) for _ in range(2)]


# Clips whose pixels say where they come from: red = KX x column, green = KY x row, blue = 10 x
# frame number (exact in lossless VP9 up to the YUV 4:2:0 round trip), one landscape and one
# portrait, so that a crop in the wrong place, a transposed region or the wrong frames show as
# coordinates, not as a small mean difference.
CODED = {"landscape": (80, 48, 3, 5), "portrait": (48, 80, 5, 3)}         # W, H, KX, KY


def write_lossless_vp9(path, frames):
    import av
    with av.open(str(path), "w", format="webm") as c:
        stream = c.add_stream("libvpx-vp9", rate=12)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"lossless": "1", "deadline": "realtime", "cpu-used": "8"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)


@pytest.fixture(scope="module")
def coded_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("coded")
    for name, (w, h, kx, ky) in CODED.items():
        y, x = np.mgrid[0:h, 0:w]
        frames = np.stack([np.stack([kx * x, ky * y, np.full_like(x, 10 * t)], -1) for t in range(24)])
        write_lossless_vp9(root / f"{name}.webm", frames.astype(np.uint8))
    (root / "list.txt").write_text("".join(f"{n}.webm 0 24\n" for n in CODED))
    return build_index(str(root / "list.txt"), str(root), progress=False, output=str(root / "list.index.json")).videos


def coordinates_of(clip, video):
    """(source column, source row, frame number) that each output pixel of a (3, T, S, S) clip says it shows."""
    _, _, kx, ky = CODED[Path(video.path).stem]
    c = clip.double()
    return c[0] / kx, c[1] / ky, c[2] / 10


def check_geometry(clip, video, box, frames, margin=3):
    """The interior of a view is its planned box, resized: output pixel (i, j) shows the source
    point (x0 + (j + 1/2) w / S - 1/2, y0 + (i + 1/2) h / S - 1/2), and frame t of the view is
    the planned frame (the borders are left out: there the resize filters reach outside the box).
    Within 0.6 source pixels on average and 2 at most: DALI's view is within 0.15 / 0.5, PyAV's
    colour conversion (swscale) decodes every channel about one level low, a third of a pixel
    here; a crop two pixels off or a transposed region is far outside."""
    x0, y0, w, h = box
    size = clip.shape[-1]
    centres = torch.arange(size, dtype=torch.float64) + 0.5
    want_x = (x0 + centres * w / size - 0.5).view(1, 1, -1)
    want_y = (y0 + centres * h / size - 0.5).view(1, -1, 1)
    got_x, got_y, got_t = coordinates_of(clip, video)
    inner = (slice(None), slice(margin, size - margin), slice(margin, size - margin))
    err_x, err_y = (got_x - want_x)[inner].abs(), (got_y - want_y)[inner].abs()
    assert err_x.mean() < 0.6 and err_x.max() < 2.0, (box, err_x.mean(), err_x.max())
    assert err_y.mean() < 0.6 and err_y.max() < 2.0, (box, err_y.mean(), err_y.max())
    assert (got_t.mean(dim=(1, 2)) - torch.as_tensor(frames, dtype=torch.float64)).abs().max() < 0.3


def test_output_equals_cpu_path(coded_videos):
    """Both decoders crop the planned box of the planned frames, to a fraction of a source pixel,
    on non-square clips (landscape and portrait); shapes and dtype as the batch type says."""
    videos = coded_videos
    dl = loader(videos, batch_size=2)
    ds = PretrainVideoDataset([VideoEntry(v.path, 0, v.frames) for v in videos], num_frames=T,
                              sampling_rate=R, input_size=S, num_sample=2, seed=7)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        dl.sampler.set_epoch(epoch)
        order = [[i for _, i in b] for b in dl.sampler]
        batches = list(dl(epoch))
        assert len(batches) == len(order) == 1
        video = batches[0].video
        assert isinstance(batches[0], PretrainBatch) and batches[0].skipped == ()
        assert video.shape == (4, 3, T, S, S) and video.dtype == torch.uint8
        for b, i in enumerate(order[0]):
            plan = dl.planner.sample(epoch, i, 0)
            cpu = ds[i][0]
            assert cpu.dtype == torch.uint8
            for k in range(2):
                check_geometry(video[2 * b + k], videos[i], plan.boxes[k], plan.frames)   # DALI
                check_geometry(cpu[k], videos[i], plan.boxes[k], plan.frames)             # PyAV


def _bt601_bilinear(path, indices):
    import av
    import torch.nn.functional as F
    with av.open(path) as c:
        frames = [f for i, f in zip(range(max(indices) + 1), c.decode(video=0))]
    out = []
    for i in indices:
        f = frames[i]
        planes = [np.frombuffer(p, np.uint8).reshape(-1, p.line_size).astype(np.float64)
                  for p in f.planes]
        y = planes[0][:f.height, :f.width]
        uv = [torch.tensor(p[:(f.height + 1) // 2, :(f.width + 1) // 2])[None, None] for p in planes[1:]]
        u, v = (F.interpolate(p, size=(f.height, f.width), mode="bilinear")[0, 0].numpy() for p in uv)
        y, u, v = (y - 16) * 255 / 219, (u - 128) * 255 / 224, (v - 128) * 255 / 224
        rgb = np.stack([y + 1.402 * v, y - 0.344136 * u - 0.714136 * v, y + 1.772 * u], -1)
        out.append(np.clip(np.round(rgb), 0, 255))
    return np.stack(out)


def test_decoded_frames_equal_pyav(videos):
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
        return fn.decoders.video(enc, device="cpu", frames=[0, 5, 2, 23, 23])
    p = pipe()
    p.build()
    path = videos[0].path
    p.feed_input("enc", [np.fromfile(path, np.uint8)])
    got = np.array(p.run()[0][0]).astype(np.float64)
    idx = [0, 5, 2, 23, 23]
    pyav = decode_frames(path, idx).astype(np.float64)
    assert got.shape == pyav.shape
    assert np.abs(got - pyav).mean() < 4          # swscale's default chroma upsampling differs
    # the same YUV planes with BT.601 limited range and bilinear chroma: equal to within rounding
    assert np.abs(got - _bt601_bilinear(path, idx)).max() <= 2


def test_corrupt_and_truncated_files_are_skipped_and_counted(videos, tmp_path):
    good = videos[:6]
    data = open(good[0].path, "rb").read()
    (tmp_path / "trunc.webm").write_bytes(data[: len(data) // 3])
    (tmp_path / "garbage.webm").write_bytes(b"\x1aE\xdf\xa3" + b"\0" * 500)
    bad = [IndexedVideo(str(tmp_path / n), n, 24, 12.0, "vp9", 48, 48)
           for n in ("trunc.webm", "garbage.webm")]
    dl = loader(good + bad, batch_size=2, num_views=1, sampling_rate=7)
    skipped = 0
    for epoch in range(2):
        for batch in dl(epoch):
            video, n = batch.video, batch.skipped
            assert video.shape == (2, 3, T, S, S) and torch.isfinite(video).all()
            skipped += len(n)
            assert all(p in {b.path for b in bad} and "DALI" in r for p, r in n)
    assert dl.bad == {b.path for b in bad}
    assert skipped >= 2 and skipped == dl.skipped_total


def test_sharding_covers_every_video_once_and_resume_skips(videos):
    n = len(videos)
    for world in (1, 2, 3):
        ranks = [loader(videos, batch_size=2, world_size=world, rank=r) for r in range(world)]
        seen = [i for dl in ranks for b in dl.batch_indices(5, 0) for i in b]
        per_epoch = (n // (2 * world)) * 2 * world
        assert len(seen) == len(set(seen)) == per_epoch
    a = [list(b) for b in loader(videos, batch_size=2).batch_indices(5, 0)]
    b = [list(b) for b in loader(videos, batch_size=2).batch_indices(5, 2)]
    assert a[2:] == b and a != [list(x) for x in loader(videos, batch_size=2).batch_indices(6, 0)]


def test_finetune_and_test_views(videos):
    labelled = [IndexedVideo(v.path, v.rel, v.frames, v.fps, v.codec, v.width, v.height, label=k % 6)
                for k, v in enumerate(videos[:4])]
    ft = loader(labelled, mode="finetune", batch_size=2, rand_augment=(4, 7), erase_prob=1.0)
    batch = next(iter(ft(0)))
    assert isinstance(batch, ClassifyBatch)
    video, labels, erasures = batch.video, batch.labels, batch.erasures
    assert video.shape == (4, 3, T, S, S) and labels.tolist()[::2] == labels.tolist()[1::2]
    # cube erasing travels as boxes; the noise is N(0, 1) in NORMALISED space, drawn on the device
    assert video.dtype == torch.uint8 and erasures and all(e[-1] is None for e in erasures)
    plain, erased = normalize_on_device(video), normalize_on_device(video, erase=erasures)
    box = torch.zeros(plain.shape, dtype=torch.bool)
    for i, y0, x0, h, w, _ in erasures:
        box[i, :, :, y0:y0 + h, x0:x0 + w] = True
    assert torch.equal(erased[~box], plain[~box])
    noise = erased[box]
    assert noise.numel() > 200 and abs(noise.mean()) < 0.25 and 0.8 < noise.std() < 1.2
    te = loader(labelled, mode="test", batch_size=3, num_views=3, test_segments=2)
    out = list(te(0))
    assert all(isinstance(o, EvalBatch) for o in out)
    assert [o.video.shape[0] for o in out] == [3 * 6, 1 * 6]          # last batch is partial
    assert torch.cat([o.labels for o in out]).tolist() == [v.label for v in labelled]
    # one decode, S x C views: temporal windows differ, the C crops of one window overlap
    v = out[0].video.view(3, 2, 3, 3, T, S, S)
    assert not torch.equal(v[0, 0, 0], v[0, 1, 0])


def test_cli_pretrain_with_dali(tiny_synthetic, tmp_path):
    from vmae2_fast.pretrain import main
    lst = tmp_path / "pretrain.csv"
    shutil.copy(tiny_synthetic.pretrain_list, lst)
    argv = ["--model", "vit_micro", "--preset", "cpu_demo", "--data", str(lst), "--data-root",
            str(tiny_synthetic.root), "--output-dir", str(tmp_path / "run"), "--input-size", "32",
            "--num-frames", "4", "--sampling-rate", "2", "--num-sample", "2", "--batch-size", "4",
            "--epochs", "1", "--warmup-epochs", "1", "--num-workers", "0", "--decoder", "dali",
            "--no-progress"]
    assert main(argv) == 2                        # no index yet: refused, with the command
    build_index(str(lst), tiny_synthetic.root, progress=False)
    assert main(argv) == 0
    assert (tmp_path / "run" / "checkpoint-last.pth").exists()


def _labelled(videos, n):
    return [IndexedVideo(v.path, v.rel, v.frames, v.fps, v.codec, v.width, v.height, label=k % 6)
            for k, v in enumerate(videos[:n])]


def test_val_and_test_views_equal_the_cpu_path(videos):
    """DALI's val mode (one centred view) and test mode (S x C views from one decode) follow the
    same frame and crop rules as the PyAV datasets (`clip_sampling`): same frames, same places,
    up to the decoders' colour conversion and crop-then-resize vs resize-then-crop."""
    from vmae2_fast.data.pyav.classify import VideoClsDataset, VideoTestDataset
    labelled = _labelled(videos, 5)
    items = [(v.path, v.label) for v in labelled]
    val = list(loader(labelled, mode="val", batch_size=2, num_views=1)(0))
    cpu_val = VideoClsDataset(items, False, num_frames=T, sampling_rate=R, input_size=S, short_side_size=S)
    test = list(loader(labelled, mode="test", batch_size=2, num_views=3, test_segments=2)(0))
    cpu_test = VideoTestDataset(items, T, R, S, S, segments=2, crops=3)
    for batches, cpu, views in ((val, cpu_val, 1), (test, cpu_test, 6)):
        assert [p for b in batches for p in b.paths] == [v.path for v in labelled]    # every video once
        assert torch.cat([b.labels for b in batches]).tolist() == [v.label for v in labelled]
        got = normalize_on_device(torch.cat([b.video for b in batches]))
        ref = normalize_on_device(torch.cat([cpu[i][0] for i in range(len(items))]))
        assert got.shape == ref.shape == (len(items) * views, 3, T, S, S)
        diff = (got - ref).abs().mean()
        assert diff < 0.08, diff
        # the views are not interchangeable: a wrong segment or crop order is far off
        if views > 1:
            shifted = torch.roll(ref.view(len(items), views, 3, T, S, S), 1, dims=1).view_as(ref)
            assert (got - shifted).abs().mean() > 3 * diff


def test_eval_modes_drop_unreadable_videos_instead_of_replacing_them(videos, tmp_path):
    labelled = _labelled(videos, 4)
    data = open(labelled[0].path, "rb").read()
    (tmp_path / "trunc.webm").write_bytes(data[: len(data) // 3])
    bad = IndexedVideo(str(tmp_path / "trunc.webm"), "trunc.webm", 24, 12.0, "vp9", 48, 48, label=5)
    order = labelled[:1] + [bad] + labelled[1:]
    dl = loader(order, mode="test", batch_size=2, num_views=1, test_segments=1)
    batches = list(dl(0))
    paths = [p for b in batches for p in b.paths]
    assert paths == [v.path for v in labelled]                 # the bad file is left out, no stand-in
    assert [s[0] for b in batches for s in b.skipped] == [bad.path] and dl.skipped_total == 1
    assert dl.bad == {bad.path}
    again = list(dl(0))                                        # known bad: dropped without decoding
    assert [p for b in again for p in b.paths] == paths and dl.skipped_total == 2
