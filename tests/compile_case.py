"""The model, batch and steps of the compile-count check (tests/test_compile.py), in one process
or, run as a script under torchrun (gloo on the CPU), in each of two. Not a test module.

The case is what made per-block compilation recompile: a 12-block encoder (and a 4-block decoder)
whose drop-path rates rise linearly (linspace(0, 0.3)), every second block checkpointed. Each
process compiles its blocks through `parallelize` (aot_eager: Dynamo's graphs without inductor's
code generation), runs two training steps, and reports how many graphs Dynamo made, its graph
breaks, and the losses and gradient norm of the compiled model beside those of the same model
uncompiled (same weights, same drop-path draws).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vmae2_fast.models.pretrain import PretrainVisionTransformer  # noqa: E402
from vmae2_fast.train.parallelize import full_tensor, parallelize  # noqa: E402

ENCODER_DEPTH, DECODER_DEPTH, DROP_PATH = 12, 4, 0.3
GLOBAL_BATCH, STEPS = 4, 2
# encoder blocks (B, 3 visible tokens, 32 channels) and decoder blocks (B, 4 decoded, 16): two
# block shapes, so at most two graphs
BLOCK_KINDS = 2


def build_model() -> PretrainVisionTransformer:
    torch.manual_seed(0)
    return PretrainVisionTransformer(
        img_size=32, patch_size=16, num_frames=4, tubelet_size=2, encoder_embed_dim=32,
        encoder_depth=ENCODER_DEPTH, encoder_num_heads=2, decoder_embed_dim=16,
        decoder_depth=DECODER_DEPTH, decoder_num_heads=2, drop_path_rate=DROP_PATH,
        activation_checkpointing="2")


def batch(rank: int, world_size: int):
    """This process's share of one global batch: video, visible and decoded token indices."""
    video = torch.randn(GLOBAL_BATCH, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    vis = torch.tensor([[0, 3, 5], [1, 2, 6], [4, 5, 7], [0, 1, 2]])
    dec = torch.tensor([[1, 2, 4, 7], [0, 3, 4, 5], [0, 1, 2, 6], [3, 4, 6, 7]])
    share = GLOBAL_BATCH // world_size
    return [t[rank * share:(rank + 1) * share] for t in (video, vis, dec)]


def train(model, wrapped, video, vis, dec) -> tuple[list, list]:
    """STEPS forward and backward passes (no optimiser: each step sees the same weights, with
    its own drop-path draws); the losses and the global gradient norm after each."""
    losses, norms = [], []
    for step in range(STEPS):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(100 + step)          # the same drop-path draws for both models
        loss = model.loss(wrapped(video, vis, dec), video, vis, dec)
        loss.backward()
        # under FSDP a gradient is a shard: its norm is completed over the processes
        norms.append(float(torch.linalg.vector_norm(torch.stack(
            [full_tensor(torch.linalg.vector_norm(p.grad)) for p in model.parameters()]))))
        losses.append(float(loss.detach()))
    return losses, norms


def run_case(parallelism: str, dist) -> dict:
    """Compiled and uncompiled, in this process; what Dynamo made of the compiled one."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    device = torch.device("cpu")
    video, vis, dec = batch(dist.rank, dist.world_size)
    eager = build_model()
    eager_wrapped = parallelize(eager, device, dist, parallelism=parallelism)
    eager_losses, eager_norms = train(eager, eager_wrapped, video, vis, dec)
    model = build_model()
    wrapped = parallelize(model, device, dist, compile="aot_eager", parallelism=parallelism)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):   # a hit raises
        losses, norms = train(model, wrapped, video, vis, dec)
    return {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": dict(counters["graph_break"]),
            "losses": losses, "eager_losses": eager_losses, "grad_norms": norms,
            "eager_grad_norms": eager_norms, "state_dict_keys": sorted(model.state_dict()),
            "eager_state_dict_keys": sorted(eager.state_dict())}


def main() -> None:
    from vmae2_fast.train.distributed import cleanup, init_distributed
    p = argparse.ArgumentParser()
    p.add_argument("--parallelisms", nargs="+", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    dist = init_distributed("cpu")
    assert dist.world_size == 2, "run under torchrun --nproc-per-node 2"
    try:
        for parallelism in args.parallelisms:
            report = run_case(parallelism, dist)
            (Path(args.out) / f"{parallelism}-rank{dist.rank}.json").write_text(json.dumps(report))
    finally:
        cleanup(dist)


if __name__ == "__main__":
    main()
