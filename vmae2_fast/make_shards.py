"""Pack a list's videos into WebDataset shards for streaming (`data.tools.shards`, an offline tool).

    python -m vmae2_fast.make_shards train.csv --data-root /videos --out s3://bucket/k400/train
    python -m vmae2_fast.pretrain --model vit_b --data s3://bucket/k400/train
"""
import sys

if __name__ == "__main__":
    from .data.tools.shards import main
    sys.exit(main())
