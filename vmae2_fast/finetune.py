r"""Stage 3: specific fine-tuning (paper Table 9): --preset k400 | k600 | ssv2 | ucf101 | hmdb51
(or cpu_demo). Kinetics from a K710 checkpoint: --head-map label_710to400.json reuses its head.

    python -m vmae2_fast.finetune --preset k400 --model vit_g --init runs/k710/checkpoint-best.pth \
        --head-map label_710to400.json --data /data/k400 --data-root /data/videos
"""
import sys

from .cli import main_for


def main(argv=None) -> int:
    return main_for("finetune", argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
