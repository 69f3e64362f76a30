"""Stage 1: self-supervised pre-training with dual masking.

    python -m vmae2_fast.pretrain --model vit_g --data train.csv --data-root /videos
    torchrun --nproc-per-node 8 -m vmae2_fast.pretrain --model vit_b --data train.csv
    python -m vmae2_fast.pretrain --model vit_s --preset cpu_demo      # embedded dataset, CPU

Without --data the embedded synthetic dataset is generated (once) and used. Flags override the
preset, which defaults to the paper's Table 10 recipe for --model.
"""
import sys

from .cli import main_for


def main(argv=None) -> int:
    return main_for("pretrain", argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
