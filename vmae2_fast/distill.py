r"""Distillation (paper Table 16): the student minimises KL(teacher || student) over the logits;
the teacher (a classifier over the same classes) is frozen, in eval mode, run without gradients
in the training dtype. Mixup/cutmix mix the inputs both models see; labels are not used.

    python -m vmae2_fast.distill --preset k710 --model vit_b --init runs/k710_b/checkpoint-best.pth \
        --teacher runs/k710_g/checkpoint-best.pth --teacher-model vit_g --data /data/k710
"""
import sys

from .cli import main_for


def main(argv=None) -> int:
    return main_for("distill", argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
