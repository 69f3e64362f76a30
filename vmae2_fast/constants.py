"""Constants the engine uses in more than one layer (data transforms, losses, DALI pipelines)."""

# ImageNet statistics: clips are normalised with them, and the pre-training targets undo them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
