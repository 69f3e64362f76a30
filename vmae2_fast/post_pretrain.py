r"""Stage 2: supervised post-pre-training on Kinetics-710 (paper Table 11), from a stage-1
checkpoint (the encoder is kept, the decoder dropped).

    python -m vmae2_fast.post_pretrain --model vit_g --init runs/pt/checkpoint-last.pth \
        --data /data/k710 --data-root /data/videos        # folder with train.csv, val.csv
    python -m vmae2_fast.post_pretrain --model vit_s --preset cpu_demo --init runs/demo/checkpoint-last.pth
"""
import sys

from .cli import main_for


def main(argv=None) -> int:
    return main_for("post_pretrain", argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
