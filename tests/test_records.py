"""Records that match the run: after a crash and a resume, metrics.jsonl and log.txt continue from
the checkpoint's step (nothing doubled, nothing lost: the truth is an uninterrupted run); bad
videos anywhere in the list (the first line too) are skipped, counted per distinct file per epoch
and listed once in skipped.jsonl; too many bad videos, or none readable, stop with the counts."""
import json
from pathlib import Path

import pytest
import torch

from test_pretrain_loop import micro_flags
from vmae2_fast.cli import main_for
from vmae2_fast.train import loop


def rows(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def flags(ds, out, **extra):
    return micro_flags(ds, out, no_progress=True, kernels="reference", **extra)


@pytest.mark.slow
def test_resume_after_a_crash_continues_the_records(tiny_synthetic, tmp_path, monkeypatch):
    truth, out = tmp_path / "truth", tmp_path / "run"
    argv = flags(tiny_synthetic, out, epochs=3, save_every_steps=3)
    assert main_for("pretrain", flags(tiny_synthetic, truth, epochs=3, save_every_steps=3)) == 0

    real_step = loop.Trainer.train_step

    def crash_at_step_5(self, batches):
        if self.global_step == 4:          # steps 1-4 logged, the last checkpoint is at step 3
            raise KeyboardInterrupt("simulated crash")
        return real_step(self, batches)

    monkeypatch.setattr(loop.Trainer, "train_step", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        main_for("pretrain", argv)
    assert [r["global_step"] for r in rows(out)] == [1, 2, 3, 4]
    monkeypatch.setattr(loop.Trainer, "train_step", real_step)
    assert main_for("pretrain", argv) == 0                      # --resume auto
    got, want = rows(out), rows(truth)
    assert [r["global_step"] for r in got] == [r["global_step"] for r in want] == list(range(1, 10))
    assert [r["loss"] for r in got] == [r["loss"] for r in want]
    log = (out / "log.txt").read_text()
    for step in range(1, 4):                                    # each step's line once
        assert log.count(f"epoch {(step - 1) // 3} step {(step - 1) % 3 + 1}/3 loss") == 1, log
    assert "dropped what was logged after it: 1 lines of metrics.jsonl, 1 lines of log.txt" in log
    assert log.index("resumed from") > log.rindex("epoch 0 step 3/3")   # the killed tail is cut


def bad_corpus(ds, tmp_path, n_good=27):
    """A list of 30 videos, 10 % of them bad: a missing file on the FIRST line, random bytes, a
    file cut to its header. Good videos repeat to make up the count."""
    good = [line.split()[0] for line in Path(ds.pretrain_list).read_text().splitlines()]
    junk = tmp_path / "junk.webm"
    junk.write_bytes(bytes(range(256)) * 20)
    cut = tmp_path / "cut.webm"
    cut.write_bytes((Path(ds.root) / good[0]).read_bytes()[:300])
    bad = [str(tmp_path / "missing.webm"), str(junk), str(cut)]
    lines = [bad[0]] + [str(Path(ds.root) / good[i % len(good)]) for i in range(n_good)]
    lines.insert(10, bad[1])
    lines.insert(20, bad[2])
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"{p} 0 -1\n" for p in lines))
    return path, bad


@pytest.mark.slow
def test_a_corpus_with_ten_percent_bad_videos_trains_to_the_end(tiny_synthetic, tmp_path):
    corpus, bad = bad_corpus(tiny_synthetic, tmp_path)
    out = tmp_path / "run"
    argv = flags(tiny_synthetic, out, data=corpus, data_root="", epochs=4, num_workers=2)
    assert main_for("pretrain", argv) == 0
    train = [r for r in rows(out) if "loss" in r]
    assert train[-1]["global_step"] == 4 * (30 // 4)           # to the end
    listed = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in listed) == sorted(bad)    # every bad file, once
    assert all(r["reason"] for r in listed)
    log = (out / "log.txt").read_text()
    for path in bad:
        assert log.count(f"skipping unreadable video {path}") == 1
    per_epoch = {}
    for r in train:                                             # distinct files per epoch
        per_epoch[r["epoch"]] = max(per_epoch.get(r["epoch"], 0), r["skipped_videos"])
    assert all(0 <= n <= 3 for n in per_epoch.values()) and max(per_epoch.values()) >= 1
    assert train[-1]["skipped_videos_run"] == 3


def test_too_many_bad_videos_stop_with_the_counts(tiny_synthetic, tmp_path, capsys):
    corpus, bad = bad_corpus(tiny_synthetic, tmp_path, n_good=3)    # 3 bad of 6
    out = tmp_path / "run"
    argv = flags(tiny_synthetic, out, data=corpus, data_root="", epochs=2, batch_size=2,
                 max_bad_fraction=0.3)
    assert main_for("pretrain", argv) == 2
    err = capsys.readouterr().err
    assert "of the 6 videos of the list could not be read in epoch 0" in err
    assert "--max-bad-fraction 0.3" in err and "skipped.jsonl" in err


def test_no_readable_video_stops_cleanly(tiny_synthetic, tmp_path, capsys):
    junk = []
    for i in range(4):
        junk.append(tmp_path / f"junk{i}.webm")
        junk[-1].write_bytes(b"\x1aE\xdf\xa3" + bytes(400))
    corpus = tmp_path / "junk.txt"
    corpus.write_text("".join(f"{p} 0 -1\n" for p in junk))
    argv = flags(tiny_synthetic, tmp_path / "run", data=corpus, data_root="", batch_size=2,
                 max_bad_fraction=1.0)
    assert main_for("pretrain", argv) == 2
    err = capsys.readouterr().err
    assert "no readable video found" in err and "Traceback" not in err


def issue_corpus(ds, tmp_path):
    """The list of the report: 16 lines, 4 bad (a missing FIRST line, an empty file, a file cut
    to its header, a text file named .mp4), the good videos repeated to make up the count."""
    good = [str(Path(ds.root) / line.split()[0]) for line in Path(ds.pretrain_list).read_text().splitlines()]
    empty, cut, text = tmp_path / "empty.webm", tmp_path / "cut.webm", tmp_path / "notes.mp4"
    empty.write_bytes(b"")
    cut.write_bytes(Path(good[0]).read_bytes()[:300])
    text.write_text("these are notes, not a video\n" * 20)
    bad = [str(tmp_path / "missing.webm"), str(empty), str(cut), str(text)]
    lines = [bad[0]] + [good[i % len(good)] for i in range(12)]
    for at, path in zip((4, 9, 13), bad[1:]):
        lines.insert(at, path)
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"{p} 0 -1\n" for p in lines))
    return path, bad, lines


def test_a_list_whose_first_video_is_missing_ends_with_a_preview_of_a_readable_one(tiny_synthetic, tmp_path):
    """The first line is missing: training skips it, and the end-of-epoch preview must show the
    first READABLE video of the list (it used to decode line 1 alone, get None and crash)."""
    import numpy as np
    from PIL import Image
    from vmae2_fast.data.lists import read_list
    from vmae2_fast.data.pyav.pretrain import PretrainVideoDataset
    corpus, bad, lines = issue_corpus(tiny_synthetic, tmp_path)
    out = tmp_path / "run"
    argv = flags(tiny_synthetic, out, data=corpus, data_root="", epochs=1, batch_size=4, preview_every=1)
    assert main_for("pretrain", argv) == 0
    png = out / "preview-epoch0.png"
    assert png.exists()
    listed = {json.loads(x)["path"] for x in (out / "skipped.jsonl").read_text().splitlines()}
    assert bad[0] in listed                                    # the first line was a bad file
    # The preview's top row is its input clip: line 2 of the list (the first readable one),
    # decoded with the run's sampling at its index in the list.
    entries = read_list(str(corpus), "")
    clip, _ = PretrainVideoDataset(entries, num_frames=4, sampling_rate=2, input_size=32, seed=3,
                                   max_retries=0)[1]
    assert entries[1].path == lines[1] and lines[1] not in bad
    img = np.asarray(Image.open(png).convert("RGB")).astype(np.int64)
    first_frame = clip[0, :, 0].permute(1, 2, 0).numpy().astype(np.int64)       # (S, S, 3) 0..255
    assert np.abs(img[:32, :32] - first_frame).max() <= 1


def test_the_preview_passes_over_unreadable_lines_and_says_when_none_is_readable(tiny_synthetic, tmp_path):
    from vmae2_fast.config import PretrainConfig
    from vmae2_fast.data.lists import read_list
    from vmae2_fast.stages.pretrain import PreviewClip
    corpus, bad, lines = issue_corpus(tiny_synthetic, tmp_path)
    entries = read_list(str(corpus), "")
    cfg = PretrainConfig(model="vit_micro", input_size=32, num_frames=4, sampling_rate=2, seed=3)
    src = PreviewClip(entries, cfg)
    clips = src()
    assert clips is not None and clips.shape[-3:] == (4, 32, 32) and src.found == 1
    assert torch.equal(src(), clips)                           # the same video every epoch
    only_bad = [e for e in entries if e.path in bad]
    none = PreviewClip(only_bad, cfg)
    assert none() is None and f"none of the first {len(only_bad)} videos" in none.why_none
