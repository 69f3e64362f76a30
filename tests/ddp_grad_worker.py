"""One rank of the two-process gradient check (run by tests/test_ddp_gradients.py under torchrun,
gloo on the CPU). Not a test module: pytest does not collect it.

Each rank builds the same model and the engine's stage, computes the stage loss on ITS slice of
one global batch through DistributedDataParallel (which averages gradients over the ranks, as in
training), saves loss and gradients, takes one plain SGD step (momentum 0, no weight decay: the
update is exactly -lr * g, so a wrong gradient scale shows in the weights) and saves the weights.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddp_grad_cases import SGD_LR, build_case  # noqa: E402
from vmae2_fast.data.batches import map_tensors  # noqa: E402
from vmae2_fast.train.distributed import cleanup, init_distributed  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cases", nargs="+", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    dist = init_distributed("cpu")
    assert dist.world_size == 2, "run under torchrun --nproc-per-node 2"
    try:
        for case in args.cases:
            model, stage, batch = build_case(case, dist)
            b = batch.video.shape[0] // dist.world_size
            local = map_tensors(batch, lambda x: x[dist.rank * b:(dist.rank + 1) * b])
            wrapped = DistributedDataParallel(model)   # kept alive: its hooks average the grads
            loss, _ = stage.compute_loss(wrapped, local)
            loss.backward()
            grads = {n: q.grad.detach().clone() for n, q in model.named_parameters()}
            torch.optim.SGD(model.parameters(), lr=SGD_LR, momentum=0.0).step()
            torch.save({"loss": loss.detach(), "grads": grads,
                        "weights": {n: q.detach().clone() for n, q in model.named_parameters()}},
                       Path(args.out) / f"{case}-rank{dist.rank}.pt")
    finally:
        cleanup(dist)


if __name__ == "__main__":
    main()
