"""torch.compile compiles each transformer block as a region: one graph per distinct block shape,
whatever the parallelism, the drop-path rate out of Dynamo's guards; a compiled run logs the
losses of the same run uncompiled. And `--tf32` / `--no-tf32`: the one switch for float32 matmuls
on CUDA, torch's and the fused ops' Triton dots alike.

The graph count's truth is the model's structure: its encoder blocks share one shape and its
decoder blocks another (`compile_case.BLOCK_KINDS`); the numbers' truth is the same model
uncompiled (aot_eager keeps eager's arithmetic, so they agree to the last bit or nearly)."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._inductor.config

import compile_case
from cli_runs import micro_flags, train_records
from vmae2_fast.cli import config_for
from vmae2_fast.models.vit import DropPath, make_blocks
from vmae2_fast.models.weights import read_checkpoint
from vmae2_fast.train.distributed import DistInfo
from vmae2_fast.train.parallelize import compile_blocks


# ------------------------------------------------------------------------------------ drop path
def test_drop_path_drops_whole_samples_and_keeps_the_expectation():
    torch.manual_seed(0)
    dp = DropPath(0.25).train()
    y = dp(torch.ones(20000, 3, 2)).flatten(1)
    kept = y[:, 0] != 0
    assert torch.equal(y[~kept], torch.zeros_like(y[~kept]))
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))
    assert abs(kept.float().mean().item() - 0.75) < 0.015        # binomial sd 0.003


def test_drop_path_is_the_identity_when_off_or_evaluating():
    x = torch.randn(4, 3, 5)
    assert DropPath(0.0).train()(x) is x
    assert DropPath(0.3).eval()(x) is x
    # on with rate 0 (the first block of a stack with drop path): a mask of ones, x exactly
    assert torch.equal(DropPath(0.0, on=True).train()(x), x)


def test_drop_path_rates_rise_in_every_block_of_a_stack_and_stay_out_of_the_state_dict():
    blocks = make_blocks(4, 8, 2, 4.0, True, 0.3, 1e-6)
    assert [round(float(b.drop_path.p), 6) for b in blocks] == [0.0, 0.1, 0.2, 0.3]
    assert all(b.drop_path.on for b in blocks)
    assert not any("drop_path" in k for k in blocks.state_dict())
    assert not any(b.drop_path.on for b in make_blocks(2, 8, 2, 4.0, True, 0.0, 1e-6))


# ------------------------------------------------------------------------------ graphs per block
def assert_one_graph_per_block_kind(report):
    assert report["graph_breaks"] == {}, report["graph_breaks"]
    assert report["graphs"] == compile_case.BLOCK_KINDS, report["graphs"]
    assert report["losses"] == pytest.approx(report["eager_losses"], rel=1e-6)
    assert report["grad_norms"] == pytest.approx(report["eager_grad_norms"], rel=1e-6)
    assert report["state_dict_keys"] == report["eager_state_dict_keys"]
    assert not any("_orig_mod" in k for k in report["state_dict_keys"])


def test_one_process_compiles_one_graph_per_block_kind():
    """12 encoder blocks with rising drop-path rates and checkpointing on every second one, then 4
    decoder blocks: two graphs, no recompile-limit hit (it raises here), eager's numbers."""
    assert_one_graph_per_block_kind(compile_case.run_case("ddp", DistInfo()))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile_counts")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    worker = Path(__file__).with_name("compile_case.py")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                          "2", str(worker), "--parallelisms", "ddp", "fsdp", "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_two_processes_compile_one_graph_per_block_kind(two_processes, parallelism):
    for rank in (0, 1):
        assert_one_graph_per_block_kind(json.loads((two_processes / f"{parallelism}-rank{rank}.json").read_text()))


def test_compiling_twice_changes_nothing_and_a_copy_computes_with_its_own_weights():
    blocks = make_blocks(2, 8, 2, 4.0, True, 0.0, 1e-6)
    assert compile_blocks(blocks, backend="eager") == 2
    assert compile_blocks(blocks, backend="eager") == 0
    twin = copy.deepcopy(blocks)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    x = torch.randn(2, 3, 8)
    eager = make_blocks(2, 8, 2, 4.0, True, 0.0, 1e-6)
    eager.load_state_dict(twin.state_dict())
    assert torch.allclose(twin[0](x), eager[0](x), atol=1e-6)     # the copy's weights, not the original's


# ------------------------------------------------------------------------- through the Trainer
@pytest.mark.slow
def test_a_compiled_run_logs_the_losses_of_the_same_run_uncompiled(tiny_synthetic, tmp_path):
    """The pre-training CLI's stage, fp32, 3 steps, drop path and checkpointing on every second
    block, inductor (the default compiler) drawing its random numbers as eager does."""
    from vmae2_fast.stages.pretrain import run
    runs = {}
    for compiled in (False, True):
        out = tmp_path / ("compiled" if compiled else "eager")
        with torch._inductor.config.patch(fallback_random=True):
            run(config_for("pretrain", micro_flags(tiny_synthetic, out, max_steps=3, drop_path=0.1,
                                                   activation_checkpointing="2", precision="fp32", threads=1,
                                                   no_progress=True, compile=compiled)))
        runs[compiled] = (train_records(out), read_checkpoint(out / "checkpoint-last.pth")["model"])
    (eager, eager_weights), (compiled, compiled_weights) = runs[False], runs[True]
    assert len(eager) == len(compiled) == 3
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in compiled] == pytest.approx([r[key] for r in eager], rel=1e-5)
    assert compiled_weights.keys() == eager_weights.keys()
    assert not any("_orig_mod" in k for k in compiled_weights)
