"""Stage-1 loop end to end on the tiny synthetic dataset: CLI errors, kill-and-resume, DDP."""
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from cli_runs import micro_flags, train_records
from vmae2_fast.cli import config_for
from vmae2_fast.pretrain import main
from vmae2_fast.stages.pretrain import run
from vmae2_fast.models.weights import read_checkpoint as load_checkpoint
from vmae2_fast.train.loop import Trainer


def make_config(argv):
    return config_for("pretrain", argv)


def final_weights(out):
    return load_checkpoint(Path(out) / "checkpoint-last.pth")["model"]


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=atol), k


def test_cli_runs_and_writes_everything(tiny_synthetic, tmp_path):
    out = tmp_path / "run"
    summary = run(make_config(micro_flags(tiny_synthetic, out, no_progress=True, preview_every=1,
                                          epochs=1)))
    assert summary["global_step"] == 3          # 12 videos / batch 4
    assert {"checkpoint-0.pth", "checkpoint-last.pth", "config.json", "log.txt", "metrics.jsonl",
            "preview-epoch0.png"} <= {p.name for p in out.iterdir()}
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in lines if "loss" in r] == [1, 2, 3]
    ckpt = load_checkpoint(out / "checkpoint-0.pth")   # our checkpoints load without pickled code
    assert {"model", "optimizer", "epoch", "global_step", "rng_per_rank", "stage"} <= set(ckpt)
    assert not any("pos_embed" in k for k in ckpt["model"])


def test_warmup_starts_at_warmup_lr(tiny_synthetic, tmp_path):
    out = tmp_path / "run"
    run(make_config(micro_flags(tiny_synthetic, out, no_progress=True, epochs=2, warmup_epochs=1,
                                lr=0.256, warmup_lr=0.0256, min_lr=0.00256)))
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    # lr is per 256 videos: total batch 4 -> 4/256 of the base values
    assert recs[0]["lr"] == pytest.approx(0.0256 * 4 / 256)
    assert recs[2]["lr"] == pytest.approx(0.256 * 4 / 256)
    assert recs[-1]["lr"] > 0.00256 * 4 / 256


def test_resume_after_a_stop_is_exact(tiny_synthetic, tmp_path):
    run(make_config(micro_flags(tiny_synthetic, tmp_path / "a", no_progress=True)))
    run(make_config(micro_flags(tiny_synthetic, tmp_path / "b", no_progress=True, max_steps=4)))
    assert load_checkpoint(tmp_path / "b" / "checkpoint-last.pth")["global_step"] == 4
    run(make_config(micro_flags(tiny_synthetic, tmp_path / "b", no_progress=True)))   # --resume auto
    assert_same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"))


# Runs the stage-1 CLI, but holds it (prints "paused", then sleeps) just before optimiser step
# STOP + 1, so that the parent's SIGKILL lands mid-run at a known step, never after the end.
_HELD_RUN = """
import sys, time
from vmae2_fast.train.loop import Trainer
from vmae2_fast.pretrain import main
stop = int(sys.argv[1])
original = Trainer.train_step
def held(self, batches):
    if self.global_step == stop:
        print("paused", flush=True)
        time.sleep(600)
    return original(self, batches)
Trainer.train_step = held
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_kill_and_resume(tiny_synthetic, tmp_path, monkeypatch):
    """SIGKILL a real run mid-epoch; `--resume auto` must do only the remaining steps and finish
    with the uninterrupted run's weights."""
    total, stop = 9, 4                       # 3 epochs x 3 steps; killed after epoch 1's first step
    run(make_config(micro_flags(tiny_synthetic, tmp_path / "a", no_progress=True, epochs=3)))
    out = tmp_path / "b"
    argv = micro_flags(tiny_synthetic, out, no_progress=True, epochs=3, save_every_steps=1)
    proc = subprocess.Popen([sys.executable, "-c", _HELD_RUN, str(stop), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(120, proc.kill)          # a child that never pauses fails, not hangs
    timer.start()
    try:
        line = proc.stdout.readline()
        while line and "paused" not in line:
            line = proc.stdout.readline()
        paused = "paused" in line
        if paused:
            proc.send_signal(signal.SIGKILL)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert paused, f"the run never reached step {stop}: {err[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(out / "checkpoint-last.pth")["global_step"] == stop < total
    assert not list(out.glob("*.tmp"))                # killed between writes: nothing half-written

    steps = []
    original = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, b: (steps.append(self.global_step),
                                                                  original(self, b))[1])
    assert run(make_config(argv))["global_step"] == total
    assert steps == list(range(stop, total))          # resumed: steps 5..9 only, none redone
    assert [r["global_step"] for r in train_records(out)] == list(range(1, total + 1))
    assert_same_weights(final_weights(tmp_path / "a"), final_weights(out))


def test_bad_inputs_fail_before_compute(tiny_synthetic, tmp_path, capsys):
    base = micro_flags(tiny_synthetic, tmp_path / "x", no_progress=True)
    assert main(base + ["--data", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err
    assert main(base + ["--model", "vit_zz"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(base + ["--input-size", "40"]) == 2
    assert "not divisible by the patch" in capsys.readouterr().err
    assert main(base + ["--mask-ratio", "1.5"]) == 2
    assert main(base + ["--batch-size", "64"]) == 2
    assert "fewer than one global batch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--no-such-flag", "1"])


def test_preset_and_flag_precedence():
    cfg = make_config(["--model", "vit_g"])
    assert (cfg.lr, cfg.clip_grad, cfg.activation_checkpointing, cfg.num_sample) == (6e-4, 0.02, "auto", 4)
    assert cfg.betas == (0.9, 0.95) and cfg.mask_ratio == 0.9 and cfg.decoder_mask_ratio == 0.5
    cfg = make_config(["--model", "vit_g", "--lr", "1e-4", "--betas", "0.9", "0.99"])
    assert cfg.lr == 1e-4 and cfg.betas == (0.9, 0.99)
    assert make_config(["--model", "vit_b"]).clip_grad is None


@pytest.mark.slow
def test_ddp_two_processes_match_one(tiny_synthetic, tmp_path):
    """torchrun with 2 CPU processes (gloo), 2 videos each == 1 process with 4 videos."""
    one = tmp_path / "one"
    run(make_config(micro_flags(tiny_synthetic, one, no_progress=True, max_steps=3)))
    two = tmp_path / "two"
    argv = micro_flags(tiny_synthetic, two, no_progress=True, max_steps=3, batch_size=2)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "-m", "vmae2_fast.pretrain", *argv],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    r1, r2 = train_records(one), train_records(two)
    assert len(r1) == len(r2) == 3
    assert [r["loss"] for r in r1] == pytest.approx([r["loss"] for r in r2], rel=1e-5)
    # AdamW's first steps are close to lr * sign(g) and would hide a wrong gradient scale in the
    # weights; the gradient norm of every step would not (test_ddp_gradients.py compares the
    # gradients themselves).
    assert [r["grad_norm"] for r in r1] == pytest.approx([r["grad_norm"] for r in r2], rel=1e-5)
    assert_same_weights(final_weights(one), final_weights(two), atol=1e-5)


def test_resume_into_a_different_model_is_refused_clearly(tiny_synthetic, tmp_path, capsys):
    out = tmp_path / "run"
    run(make_config(micro_flags(tiny_synthetic, out, no_progress=True, max_steps=1)))
    argv = micro_flags(tiny_synthetic, out, no_progress=True, model="vit_s")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "does not fit this model" in err and "vit_micro" in err
