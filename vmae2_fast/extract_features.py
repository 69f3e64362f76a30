r"""Sliding-window clip features of a folder of videos, one ``<video name>.npy`` per video
(shape ``(num_windows, width)``, float32), for temporal action detectors such as ActionFormer.

    python -m vmae2_fast.extract_features --checkpoint vit_g_k710.pth --model vit_g \
        --videos /data/thumos14/videos --out /data/thumos14/features

THUMOS14-style defaults (the official extract_tad_feature.py): windows of 16 consecutive frames
(--window, --frame-stride 1) starting every 4 frames (--stride; FineAction uses 16), frames resized
to --input-size square without keeping the aspect ratio, the feature is the classifier's pooled
``forward_features`` (fc_norm of the token mean). Windows lie fully inside the video; a video
shorter than one window gives one window padded with its last frame. Frames are decoded once,
streaming (memory holds one window, not the video). Pixels are ImageNet-normalised, as in
training; --no-imagenet-norm reproduces the released script, which feeds [0, 1] pixels.
"""
import sys

from .cli import main_for


def main(argv=None) -> int:
    return main_for("extract_features", argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
