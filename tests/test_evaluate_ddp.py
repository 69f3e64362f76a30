"""Multi-view evaluation split over two processes (torchrun, gloo) gives exactly the predictions
and metrics of one process: every video once, none twice."""
import json
import os
import subprocess
import sys

import pytest
import torch

from vmae2_fast.models import build_classifier
from vmae2_fast.train.checkpoint import save_checkpoint


@pytest.mark.slow
def test_two_process_evaluation_equals_one(tiny_synthetic, tmp_path):
    torch.manual_seed(0)
    model = build_classifier("vit_micro", 6, img_size=32, num_frames=4, init_scale=1.0)
    ckpt = tmp_path / "cls.pth"
    save_checkpoint(ckpt, {"model": model.state_dict()})
    args = ["-m", "vmae2_fast.evaluate", "--checkpoint", ckpt, "--model", "vit_micro", "--data", tiny_synthetic.root,
            "--data-root", tiny_synthetic.root, "--num-segments", 2, "--num-crops", 2, "--input-size", 32,
            "--num-frames", 4, "--sampling-rate", 2, "--short-side-size", 32]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    outs = {}
    for name, launcher in (("one", []), ("two", ["-m", "torch.distributed.run", "--standalone",
                                                  "--nproc-per-node", "2"])):
        out = tmp_path / name
        cmd = [sys.executable, *launcher, *map(str, args), "--output-dir", str(out)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
        outs[name] = (json.loads((out / "metrics.json").read_text()), {r["video"]: r for r in preds})
    (m1, p1), (m2, p2) = outs["one"], outs["two"]
    assert m1["videos"] == m2["videos"] == 6
    assert m1["top1"] == m2["top1"] and m1["top5"] == m2["top5"]
    assert p1.keys() == p2.keys() and len(p1) == 6             # every video exactly once
    for video, a in p1.items():
        b = p2[video]
        assert (a["label"], a["pred"], a["top5"]) == (b["label"], b["pred"], b["top5"])
        assert a["probs"] == pytest.approx(b["probs"], abs=1e-6)
