"""Two processes with half the batch each give the gradients of one process with the whole batch.

The README promises it ("the same loss and gradients"): the masks are drawn for the global batch
and sliced, and the masked-MSE denominator is the global token count. Comparing weights after
AdamW steps cannot show it (AdamW's first updates are about lr * sign(g), whatever the scale of
g), so this compares the gradients themselves, at float64, and the weights after one plain SGD
step, whose update is exactly -lr * g.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddp_grad_cases import CASES, GLOBAL_BATCH, SGD_LR, build_case
from vmae2_fast import ops
from vmae2_fast.train.distributed import DistInfo

# pretrain: float64 end to end; classify: the stage takes the cross-entropy in float32
TOL = {"pretrain": 1e-9, "classify": 1e-6}


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def one_process(case):
    """The truth: one process, the global batch, no process group."""
    model, stage, batch = build_case(case, DistInfo())
    loss, n = stage.compute_loss(model, batch)
    assert n == GLOBAL_BATCH
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    torch.optim.SGD(model.parameters(), lr=SGD_LR, momentum=0.0).step()
    return loss.detach(), grads, {k: p.detach().clone() for k, p in model.named_parameters()}, stage


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_grads")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    worker = Path(__file__).with_name("ddp_grad_worker.py")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", str(worker), "--cases", *CASES, "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return {(case, r): torch.load(out / f"{case}-rank{r}.pt", weights_only=True)
            for case in CASES for r in (0, 1)}


def test_the_pretrain_batch_can_show_a_per_process_denominator():
    """Guard of the guard: if both halves had the same number of loss tokens, a per-process
    denominator would give the right gradients by chance and the check below would prove nothing."""
    _, stage, batch = build_case("pretrain", DistInfo())
    vis, dec = stage.masking(GLOBAL_BATCH, torch.Generator().manual_seed(stage.cfg.seed))
    half = GLOBAL_BATCH // 2
    counts = [int(ops.loss_token_count(vis[i:i + half], dec[i:i + half], stage.model.num_tokens))
              for i in (0, half)]
    assert counts[0] != counts[1], counts


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_two_processes_give_the_one_process_gradients(two_processes, case):
    loss, grads, weights, _ = one_process(case)
    ranks = [two_processes[(case, r)] for r in (0, 1)]
    # each rank's loss is its share: their mean is the global-batch loss
    assert abs((ranks[0]["loss"] + ranks[1]["loss"]).item() / 2 - loss.item()) <= TOL[case] * abs(loss.item())
    for r, got in enumerate(ranks):
        assert got["grads"].keys() == grads.keys()
        bad = {k: rel(got["grads"][k], g) for k, g in grads.items() if not rel(got["grads"][k], g) < TOL[case]}
        assert not bad, f"rank {r}: gradients differ from one process (relative error): {bad}"
        bad = {k: rel(got["weights"][k], w) for k, w in weights.items() if not rel(got["weights"][k], w) < TOL[case]}
        assert not bad, f"rank {r}: weights after one SGD step differ: {bad}"
