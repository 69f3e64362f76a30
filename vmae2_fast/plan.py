"""The memory of a training run per GPU, before it starts: parameters, gradients, AdamW state,
activations (traced exactly, on fake tensors), the largest transient and the peak; the largest
batch under each activation-checkpointing policy for a GPU, and what `auto` picks.

    python -m vmae2_fast.plan --model vit_g --batch-size 32 --gpu H100
    python -m vmae2_fast.plan --model vit_h --parallelism fsdp --num-gpus 8 --gpu A100-80GB --json
    python -m vmae2_fast.plan --model vit_b --num-classes 400 --memory-gib 24

Flags are named as pretrain / finetune name them. Times are estimates (FLOP model at an assumed
MFU); the memory is the eager step's, traced.
"""
import sys

from .cli import main_for


def main(argv=None) -> int:
    return main_for("plan", argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
