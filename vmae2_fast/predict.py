r"""The top-k classes of your videos, from a fine-tuned checkpoint:

    python -m vmae2_fast.predict --checkpoint runs/ft/checkpoint-best.pth clip.mp4 more_videos/
    python -m vmae2_fast.predict --checkpoint C --views 5x3 --top-k 3 --json val.csv > preds.jsonl
    python -m vmae2_fast.predict --onnx model.onnx clip.mp4       # ONNX Runtime (onnx_export)

INPUTs: video files, folders (searched for videos and frame folders) and list files in any
official format (.txt .csv .lst .list; --data-root for their relative paths). Class names come
from the checkpoint (ours record them) or --classes FILE. --views TxS: the official test views of
`evaluate` (T clips x S crops, softmax averaged: the same probabilities as `evaluate
--num-segments T --num-crops S`); the default 1x1 is the centred clip and crop.

Output on stdout: a table, or with --json one JSON object per video and line: path, labels,
indices, probs (top-k, best first), views, timing (seconds per video: waiting for decoding, the
model), and label when a list gave one. Unreadable videos are reported on stderr and skipped; a
missing input, a bad checkpoint or a class list that does not fit the head ends with `error:`
and exit code 2.
"""
import sys

from .cli import main_for


def main(argv=None) -> int:
    return main_for("predict", argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
