"""Export a classifier to the Hugging Face transformers VideoMAE format (config.json +
model.safetensors), loadable with ``VideoMAEForVideoClassification.from_pretrained(folder)``.

    python -m vmae2_fast.hf_export --checkpoint runs/ft/checkpoint-best.pth --model vit_b --out hf/

The export itself (and why its settings are what they are): `vmae2_fast.integrations.hf_export`.
"""
import sys

from .cli import main_for


def main(argv=None) -> int:
    return main_for("hf_export", argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
