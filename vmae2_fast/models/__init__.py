"""Models: the pre-training autoencoder, the classifier, the zoo and official-config builders."""
from .classifier import VisionTransformer
from .official import from_official_config
from .pretrain import PretrainVisionTransformer
from .vit import count_parameters, sinusoid_table
from .zoo import MODEL_SPECS, build_classifier, build_pretrain_model, model_spec

__all__ = ["VisionTransformer", "PretrainVisionTransformer", "from_official_config", "count_parameters",
           "sinusoid_table", "MODEL_SPECS", "build_classifier", "build_pretrain_model", "model_spec"]
