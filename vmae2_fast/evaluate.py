r"""Multi-view testing: S temporal clips x C spatial crops per video, each video decoded ONCE,
softmax per view then the mean over views (the official 'prob' fusion); top-1, top-5 and mean
class accuracy, and a per-video predictions file. Any S and C work, 1 x 1 included (the official
code divides by zero there). Kinetics: 5 x 3; SSv2: 2 x 3 with --sparse-sample.

    python -m vmae2_fast.evaluate --checkpoint runs/ft/checkpoint-best.pth --model vit_b \
        --data /data/k400 --data-root /data/videos --num-segments 5 --num-crops 3

Views (official `final_test`): the video is read at stride --sampling-rate (padded to at least
--num-frames), the short side resized to --short-side-size; clip s starts at
int(s * (T - num_frames) / (S - 1)) (S = 1: the centred clip), crop c at int(c * (L - size) /
(C - 1)) along the long side (C = 1: centred). --sparse-sample: one frame per segment, at offset
(s + 0.5) / S inside it. Under torchrun the videos are split over the processes.
"""
import sys

from .cli import main_for


def main(argv=None) -> int:
    return main_for("evaluate", argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
