r"""Export a fine-tuned classifier (or, with --features, its encoder as a feature extractor) to
ONNX, then check the file in ONNX Runtime against PyTorch:

    python -m vmae2_fast.onnx_export --checkpoint runs/ft/checkpoint-best.pth --out model.onnx
    python -m vmae2_fast.onnx_export --checkpoint C --out features.onnx --features
    python -m vmae2_fast.predict --onnx model.onnx clip.mp4

The graph: input `video`, float32 (batch, 3, T, H, W), any batch, the clip fixed by the
checkpoint; RGB / 255, then ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225)
per channel. Output `logits` (batch, classes), or `features` (batch, width): the pooled clip
feature. Opset 18 (--opset). The clip settings and class names travel in the file's metadata
(key `vmae2_fast`). Needs `pip install 'vmae2_fast[onnx]'`.
"""
import sys

from .cli import main_for


def main(argv=None) -> int:
    return main_for("onnx_export", argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
