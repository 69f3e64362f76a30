"""Run a user's checkout of the official VideoMAE V2 code (OpenGVLab/VideoMAEv2) inside our benchmark.

Nothing of the official code lives in this repository: `load_official_code(path)` reads the
user's own files at run time and returns what `bench/throughput.py` times as the `official`
implementation:

- the model: `models/modeling_pretrain.PretrainVisionTransformer`, built with our zoo shapes
  (`build_official_model`); our model's weights load into it unchanged (`strict=True`), since
  our parameter names are the official ones;
- the masks: `dataset/masking_generator.{TubeMaskingGenerator, RunningCellMaskingGenerator}`,
  called once per clip and stacked as the loader's collate does (`OfficialMasks`);
- the target and loss: the statements of `engine_for_pretraining.train_one_epoch` that turn a
  batch into `loss`, taken from the user's file with `ast` and executed as they are written
  (`OfficialCode.forward_loss`).

Why the loss statements are cut out of `train_one_epoch` instead of calling it: the function
also calls `torch.cuda.synchronize()` unconditionally (it fails on a CPU-only torch), reads
`loss.item()` and prints through a metric logger every step, and its module imports `utils`,
which needs tensorboardX, timm's utilities and a distributed set-up. None of that is the step's
arithmetic. The slice run here starts at `images, bool_masked_pos, decode_masked_pos = batch`
and ends with the `if loss_scaler is None:` statement that computes the loss; it is executed
with `loss_scaler = None`, i.e. the official fp32 branch. Its limits: the backward, gradient
norm and optimiser update are not the official lines (the benchmark runs `loss.backward()` and
a `torch.optim.AdamW` step, as the official `optim_factory` builds for `--opt adamw`); under
`--precision fp16/bf16` the benchmark's own autocast wraps that fp32 branch, which for fp16 is
what the official `torch.cuda.amp.autocast()` branch computes (the official code has no bf16).
If a future checkout renames those statements, loading fails with an error that says so.

The official model files import four timm helpers (`drop_path`, `to_2tuple`, `trunc_normal_`,
`register_model`) and the engine imports timm's ImageNet mean and std. timm needs torchvision,
and a torchvision wheel that matches the pinned torch is often not installable (on a CPU-only
torch 2.13 `import torchvision` fails with "operator torchvision::nms does not exist"). When
`import timm` fails, `timm_shims()` stands in for those names with the implementations below,
which behave like timm 0.4.12 (the version the official requirements pin), only while the
official files are imported; `OfficialCode.timm` says which was used.
"""
from __future__ import annotations

import ast
import builtins
import collections.abc
import contextlib
import importlib
import importlib.util
import itertools
import math
import subprocess
import sys
import types
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vmae2_fast.errors import MissingFileError, UserError
from vmae2_fast.models.zoo import model_spec

# --------------------------------------------------------------------------------------------
# timm stand-ins (used only when `import timm` fails)
# --------------------------------------------------------------------------------------------

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
MODEL_REGISTRY: dict[str, object] = {}


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability `drop_prob`,
    scale the kept ones by 1/(1 - drop_prob) so the expectation is unchanged. The identity
    (the same tensor object) when `drop_prob` is 0 or outside training.

    A sample is kept when its uniform draw is >= drop_prob: the same draws and the same
    decisions as timm 0.4.12's floor(keep + u), one `torch.rand` value per sample.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    per_sample = (x.shape[0],) + (1,) * (x.ndim - 1)
    kept = torch.rand(per_sample, dtype=x.dtype, device=x.device) >= drop_prob
    return x.div(keep_prob) * kept


def to_2tuple(x):
    """(x, x) for a scalar; an iterable (a tuple, a list) is returned unchanged, as in timm 0.4.12."""
    if isinstance(x, collections.abc.Iterable):
        return x
    return (x, x)


def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0,
                  b: float = 2.0) -> torch.Tensor:
    """Fill `tensor` in place from N(mean, std^2) truncated to [a, b] (absolute bounds, not in
    units of std) and return it.

    Inverse-CDF sampling, as timm 0.4.12 does it (same draws for the same seed): a uniform value
    between the normal CDF at a and at b, mapped back through the inverse CDF (written with
    erfinv), then clamped against rounding. (`nn.init.trunc_normal_` of recent PyTorch samples by
    rejection instead: same distribution, other draws.)
    """
    def cdf(z):
        return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))

    with torch.no_grad():
        lo, hi = cdf((a - mean) / std), cdf((b - mean) / std)
        tensor.uniform_(2 * lo - 1, 2 * hi - 1)  # erf(z / sqrt 2) = 2 * cdf(z) - 1
        tensor.erfinv_().mul_(std * math.sqrt(2.0)).add_(mean)
        return tensor.clamp_(min=a, max=b)


def register_model(fn):
    """Record a model constructor under its function name and return it unchanged. (timm also
    lists it in its module's `__all__` and a per-module index, which the official code never
    reads.)"""
    MODEL_REGISTRY[fn.__name__] = fn
    return fn


def _timm_importable() -> bool:
    try:
        importlib.import_module("timm")
        return True
    except Exception:  # noqa: BLE001 - a broken torchvision raises RuntimeError, not ImportError
        for name in [n for n in sys.modules if n == "timm" or n.startswith("timm.")]:
            del sys.modules[name]  # drop a half-imported timm so the stand-ins are what is found
        return False


@contextlib.contextmanager
def timm_shims():
    """While active, `import timm...` of the names the official code uses (the four helpers and
    the ImageNet mean and std) finds the stand-ins above (if the real timm imports, nothing
    changes). Yields "timm <version>" or "stand-ins". The stand-in modules are removed
    afterwards: modules imported meanwhile keep the names they bound, and a later `import timm`
    or `find_spec("timm")` elsewhere (transformers probes it) sees the real environment."""
    if _timm_importable():
        yield f"timm {importlib.import_module('timm').__version__}"
        return
    contents = {
        "timm": {}, "timm.models": {}, "timm.data": {},
        "timm.models.layers": {"drop_path": drop_path, "to_2tuple": to_2tuple, "trunc_normal_": trunc_normal_},
        "timm.models.registry": {"register_model": register_model},
        "timm.data.constants": {"IMAGENET_DEFAULT_MEAN": IMAGENET_DEFAULT_MEAN,
                                "IMAGENET_DEFAULT_STD": IMAGENET_DEFAULT_STD},
    }
    for name, attrs in contents.items():
        mod = types.ModuleType(name, "vmae2_fast bench stand-in for a few timm names")
        mod.__spec__ = importlib.util.spec_from_loader(name, loader=None, is_package=True)
        mod.__path__ = []
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, mod)
    try:
        yield "stand-ins"
    finally:
        for name in contents:
            sys.modules.pop(name, None)


# --------------------------------------------------------------------------------------------
# loading the user's checkout
# --------------------------------------------------------------------------------------------

REQUIRED_FILES = ("models/modeling_pretrain.py", "models/modeling_finetune.py",
                  "dataset/masking_generator.py", "engine_for_pretraining.py")
# Names the engine slice reads that the benchmark supplies (the rest must come from the
# engine module's own top-level imports).
STEP_INPUTS = ("batch", "model", "device", "patch_size", "normlize_target", "loss_scaler")
_load_count = itertools.count()


class OfficialCheckoutError(UserError):
    """The checkout cannot be run here: its step layout changed, or a dependency is missing."""


def _import_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _import_models_package(name: str, models_dir: Path):
    """Import `models/modeling_pretrain.py` as a submodule of an empty package named `name`
    whose path is the user's `models/` folder: its relative import of `.modeling_finetune`
    resolves there, `models/__init__.py` (which would also build the classifiers' registry) is
    not run, and the generic top-level names `models`, `dataset`, `utils` of the checkout never
    enter sys.path, where they could shadow or be shadowed by other packages."""
    spec = importlib.util.spec_from_loader(name, loader=None, is_package=True)
    spec.submodule_search_locations = [str(models_dir)]
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[name] = pkg
    return importlib.import_module(f"{name}.modeling_pretrain")


def _is_loss_scaler_none(test: ast.expr) -> bool:
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "loss_scaler" and len(test.ops) == 1 and isinstance(test.ops[0], ast.Is)
            and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value is None)


def engine_step_statements(source: str, filename: str = "engine_for_pretraining.py") -> list[ast.stmt]:
    """The statements of `train_one_epoch`'s loop from the batch unpacking to the loss.

    Raises OfficialCheckoutError naming what was not found when the file's layout differs.
    """
    tree = ast.parse(source, filename)
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train_one_epoch"), None)
    if fn is None:
        raise OfficialCheckoutError(f"{filename}: no top-level `def train_one_epoch`; "
                                    "is this a VideoMAEv2 checkout?")
    loop = next((n for n in ast.walk(fn) if isinstance(n, ast.For)), None)
    if loop is None:
        raise OfficialCheckoutError(f"{filename}: `train_one_epoch` has no `for ... in data_loader` loop")
    body = loop.body
    start = next((i for i, s in enumerate(body) if isinstance(s, ast.Assign)
                  and isinstance(s.value, ast.Name) and s.value.id == "batch"), None)
    if start is None:
        raise OfficialCheckoutError(f"{filename}: the loop never unpacks `... = batch`; "
                                    "the official step layout changed")
    end = next((i for i, s in enumerate(body[start:], start) if isinstance(s, ast.If)
                and _is_loss_scaler_none(s.test)), None)
    if end is None:
        raise OfficialCheckoutError(f"{filename}: no `if loss_scaler is None:` loss statement after the batch "
                                    "unpacking; the official step layout changed")
    return body[start:end + 1]


def _free_names(stmts: list[ast.stmt]) -> set[str]:
    loads, stores = set(), set()
    for node in (n for s in stmts for n in ast.walk(s)):
        if isinstance(node, ast.Name):
            (stores if isinstance(node.ctx, ast.Store) else loads).add(node.id)
    return loads - stores - set(dir(builtins)) - set(STEP_INPUTS)


def _bound_names(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.asname or a.name.split(".")[0] for a in node.names}
    return {a.asname or a.name for a in node.names}


def _step_globals(tree: ast.Module, needed: set[str], filename: str) -> dict:
    """Run only the engine module's top-level imports that bind a name the slice reads (the
    others, such as `import utils`, pull in dependencies the step does not use)."""
    ns: dict = {"__name__": "official_engine_step"}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) and _bound_names(node) & needed:
            try:
                exec(compile(ast.Module(body=[node], type_ignores=[]), filename, "exec"), ns)  # noqa: S102
            except ImportError as e:
                raise OfficialCheckoutError(f"the official engine's step needs `{ast.unparse(node)}`, "
                                            f"which failed: {e}. Install it beside vmae2_fast "
                                            "(for einops: pip install einops)") from e
    missing = needed - set(ns)
    if missing:
        raise OfficialCheckoutError(f"{filename}: the loss statements read {sorted(missing)}, which no top-level "
                                    "import of the file defines; the official step layout changed")
    return ns


@dataclass
class OfficialCode:
    """The pieces of one official checkout that the benchmark runs."""
    repo: Path
    commit: str | None
    timm: str  # "timm <version>" or "stand-ins"
    modeling_pretrain: types.ModuleType
    masking_generator: types.ModuleType
    step_code: types.CodeType
    step_globals: dict = field(repr=False)

    def forward_loss(self, model: nn.Module, batch, device: torch.device, patch_size: int,
                     normalize_target: bool = True):
        """Run the user's engine statements on `batch` = (video, encoder map, decoder map) as the
        loader yields them; returns (loss, outputs, labels)."""
        ns = dict(self.step_globals, batch=batch, model=model, device=device, patch_size=patch_size,
                  normlize_target=normalize_target, loss_scaler=None)
        exec(self.step_code, ns)  # noqa: S102 - the user's own official checkout, chosen by a flag
        return ns["loss"], ns["outputs"], ns["labels"]


def _git_commit(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def load_official_code(repo) -> OfficialCode:
    """Import the model, mask generators and engine step of an OpenGVLab/VideoMAEv2 checkout."""
    repo = Path(repo).expanduser().resolve()
    missing = [f for f in REQUIRED_FILES if not (repo / f).is_file()]
    if missing:
        raise MissingFileError(f"{repo} lacks {', '.join(missing)}: --official-repo must point at a checkout "
                                "of github.com/OpenGVLab/VideoMAEv2 (the folder holding engine_for_pretraining.py)")
    prefix = f"videomaev2_official_{next(_load_count)}"
    engine_path = repo / "engine_for_pretraining.py"
    source = engine_path.read_text()
    stmts = engine_step_statements(source, str(engine_path))
    with timm_shims() as timm_used:
        try:
            modeling_pretrain = _import_models_package(f"{prefix}_models", repo / "models")
            masking = _import_file(f"{prefix}_masking_generator", repo / "dataset" / "masking_generator.py")
        except ImportError as e:
            raise OfficialCheckoutError(f"importing the official model or mask generators from {repo} failed: {e}; "
                                        "install what it names beside vmae2_fast") from e
        step_globals = _step_globals(ast.parse(source, str(engine_path)), _free_names(stmts), str(engine_path))
    code = compile(ast.Module(body=stmts, type_ignores=[]), str(engine_path), "exec")
    return OfficialCode(repo, _git_commit(repo), timm_used, modeling_pretrain, masking, code, step_globals)


def build_official_model(code: OfficialCode, name: str, *, img_size: int = 224, num_frames: int = 16,
                         tubelet_size: int = 2, decoder_depth: int = 4, with_cp: bool = False) -> nn.Module:
    """The official `PretrainVisionTransformer` with the shapes of our zoo model `name` (the
    arguments its registered `pretrain_videomae_*` functions pass, for any size we know);
    `with_cp` is its activation checkpointing (the official `--with_checkpoint`)."""
    s = model_spec(name)
    return code.modeling_pretrain.PretrainVisionTransformer(
        img_size=img_size, patch_size=s.patch_size, encoder_embed_dim=s.embed_dim, encoder_depth=s.depth,
        encoder_num_heads=s.num_heads, encoder_num_classes=0,
        decoder_num_classes=3 * tubelet_size * s.patch_size ** 2, decoder_embed_dim=s.decoder_embed_dim,
        decoder_depth=decoder_depth, decoder_num_heads=s.decoder_num_heads, mlp_ratio=s.mlp_ratio,
        qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), tubelet_size=tubelet_size,
        all_frames=num_frames, **({"with_cp": True} if with_cp else {}))  # passed only when asked for


class OfficialMasks:
    """Per-clip masks from the official generators, batched like the loader's default collate:
    (B, T', H'W') float64 tensors, 1 = masked. Without decoder masking the decoder map is
    1 - encoder map, as the official dataset builds it. The generators draw from NumPy's global
    RNG, so `seed` seeds it."""

    def __init__(self, code: OfficialCode, grid, mask_ratio: float, decoder_mask_ratio: float, seed: int = 0):
        gen = code.masking_generator
        self.encoder = gen.TubeMaskingGenerator(tuple(grid), mask_ratio)
        self.decoder = gen.RunningCellMaskingGenerator(tuple(grid), decoder_mask_ratio) \
            if decoder_mask_ratio > 0 else None
        np.random.seed(seed)

    def __call__(self, batch: int):
        enc = [self.encoder() for _ in range(batch)]
        dec = [self.decoder() if self.decoder is not None else 1 - e for e in enc]
        return torch.as_tensor(np.stack(enc)), torch.as_tensor(np.stack(dec))
