"""Records that match the run: after a crash and a resume, metrics.jsonl and log.txt continue from
the checkpoint's step (nothing doubled, nothing lost: the truth is an uninterrupted run); bad
videos anywhere in the list (the first line too) are skipped, counted per distinct file per epoch
and listed once in skipped.jsonl; too many bad videos, or none readable, stop with the counts."""
import json
from pathlib import Path

import pytest

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
