"""ONNX: a classifier (or its encoder as a feature extractor) written as an ONNX graph, and an
exported file run by ONNX Runtime like the PyTorch module.

The graph (`export_onnx`): input ``video``, float32 ``(batch, 3, T, H, W)``, the batch dynamic and
the clip ``T x H x W`` fixed by the model; RGB pixels scaled to 0..1 then ImageNet-normalised
(`PREPROCESSING`), exactly the tensor the PyTorch model takes. Output ``logits`` ``(batch,
classes)`` (no softmax: several views are fused by averaging their softmaxes, as `evaluate`
does), or ``features`` ``(batch, width)``: the pooled clip feature (``forward_features``, what
extract_features saves). The file carries JSON metadata under ``vmae2_fast`` (`METADATA_KEY`):
the clip settings, the class names and the preprocessing, so that ``predict --onnx FILE`` needs
nothing else.

Exporter: torch's ``torch.export``-based one (``dynamo=True``, which needs onnxscript), the default
since torch 2.9; the TorchScript exporter also writes this model but is deprecated. Opset 18 is
the lowest it writes natively: the downgrade to 17 fails on this model (ReduceMean's axes). A
model whose weights pass 2 GB (ViT-g in fp32) keeps them in ``FILE.data`` beside the graph, which
must travel with it (protobuf cannot hold more than 2 GB).

Packages: ``pip install 'vmae2_fast[onnx]'`` (onnx, onnxscript, onnxruntime) to export,
``pip install 'vmae2_fast[onnxruntime]'`` to run (``onnxruntime-gpu`` for the CUDA provider).
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import warnings
from pathlib import Path

import torch

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..errors import CheckpointError, MissingFileError, MissingPackageError

__all__ = ["OPSET", "METADATA_KEY", "PREPROCESSING", "import_extra",
           "FeatureExtractor", "export_onnx", "OnnxModel"]

log = logging.getLogger("vmae2_fast")
OPSET = 18
METADATA_KEY = "vmae2_fast"
PREPROCESSING = {
    "input": "video", "dtype": "float32", "layout": "(batch, 3 RGB channels, frames, height, width)",
    "pixels": "RGB / 255, then (x - mean) / std per channel", "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD)}
# weights past this many bytes go to an external data file (protobuf's hard limit is 2 GiB)
_INLINE_LIMIT = 1_800_000_000
# which extra brings each package (the exporter imports onnxscript itself)
_EXTRAS = {"onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "onnxruntime"}


def import_extra(name: str, what: str):
    """Import ``name`` (onnx, onnxscript, onnxruntime), or raise `MissingPackageError` saying
    that ``what`` needs it and which extra installs it."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        extra = _EXTRAS[name]
        raise MissingPackageError(f"{what} needs {name}, which is not installed: pip install "
                                f"'vmae2_fast[{extra}]' (from a clone: pip install -e '.[{extra}]')"
                                + ("; onnxruntime-gpu for the CUDA provider" if extra == "onnxruntime"
                                   else "")) from None


class FeatureExtractor(torch.nn.Module):
    """The classifier's encoder as a module whose output is its pooled clip feature."""

    def __init__(self, classifier: torch.nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, video):
        return self.classifier.forward_features(video)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's notes that are not about this model (torchvision's ops it skips, each step
    of onnxscript's graph optimiser, torch's own deprecations) stay out of the command's output;
    its warnings and errors do not."""
    quiet = {"torch.onnx._internal.exporter._registration": logging.ERROR,
             "onnxscript": logging.WARNING, "onnx_ir": logging.WARNING}
    levels = {name: logging.getLogger(name).level for name in quiet}
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path, *, output_name: str,
                metadata: dict, opset: int = OPSET) -> Path:
    """Write ``module`` (eval mode, on the CPU) to ``path`` for inputs shaped like ``example``
    with any batch size, ``metadata`` stored as JSON under `METADATA_KEY`, then validate the
    file with ``onnx.checker`` (full check: types and shapes). Returns the path."""
    onnx = import_extra("onnx", "the ONNX export")
    import_extra("onnxscript", "the ONNX export")
    path = Path(path)
    module = module.eval()
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            module, (example,), None, input_names=["video"], output_names=[output_name],
            opset_version=opset, dynamo=True, verbose=False,
            dynamic_shapes=({0: torch.export.Dim("batch")},))
    program.model.metadata_props[METADATA_KEY] = json.dumps(metadata)
    program.model.doc_string = (f"vmae2_fast {metadata.get('kind', '')}: input video {PREPROCESSING['layout']}, "
                                f"{PREPROCESSING['pixels']}; metadata key {METADATA_KEY!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=size > _INLINE_LIMIT)
    onnx.checker.check_model(str(path), full_check=True)       # by path: external data too
    return path


class OnnxModel:
    """An exported file in ONNX Runtime, called like the PyTorch module: a float tensor batch in,
    the output as a float32 CPU tensor. The CUDA provider is used when ONNX Runtime has it
    (onnxruntime-gpu) and ``device`` is not the CPU; otherwise the CPU provider."""

    def __init__(self, path, device: torch.device | str = "cpu"):
        ort = import_extra("onnxruntime", "predict --onnx")
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"ONNX file not found: {path}")
        cuda = "CUDAExecutionProvider" in ort.get_available_providers() and torch.device(device).type != "cpu"
        providers = (["CUDAExecutionProvider"] if cuda else []) + ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # ORT raises its own types for a damaged or foreign file
            raise CheckpointError(f"{path} is not a model ONNX Runtime can load "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})") from None
        self.path, self.provider = path, self.session.get_providers()[0]
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_shape, self.output_shape = list(inp.shape), list(out.shape)
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.metadata = json.loads(raw) if raw else None

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        x = video.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run([self.output_name], {self.input_name: x})[0])
