"""The official pre-training data pipeline, read from a user's checkout of OpenGVLab/VideoMAEv2, for
`bench/decode.py` to time beside ours. Nothing of the official code lives here: `OfficialLoader`
imports the checkout's ``dataset/pretrain_datasets.py`` at run time and builds its dataset with the
arguments of its ``build_pretraining_dataset``.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def importable(module: str) -> str | None:
    """None when ``module`` imports, else why not (one line)."""
    try:
        importlib.import_module(module)
        return None
    except Exception as exc:  # noqa: BLE001 - a broken wheel raises OSError / RuntimeError
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def _torchvision_stand_in():
    """``torchvision.transforms.Compose`` (what the official pre-training transform uses of
    torchvision) for a machine where no torchvision matches the installed torch: it applies
    its transforms in order, as torchvision's does. The official module also imports
    ``torchvision.transforms.functional``, used only by transforms pre-training does not run."""
    tv = types.ModuleType("torchvision")
    tr = types.ModuleType("torchvision.transforms")
    fn = types.ModuleType("torchvision.transforms.functional")

    class Compose:
        def __init__(self, transforms):
            self.transforms = transforms

        def __call__(self, x):
            for t in self.transforms:
                x = t(x)
            return x

    tr.Compose, tr.functional, tv.transforms = Compose, fn, tr
    return {"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn}


class OfficialLoader:
    """The official pre-training dataset over a list of our files; ``item(i)`` is its
    ``__getitem__``. Its ``dataset`` package is imported without its ``__init__`` (which imports
    the fine-tuning datasets and their dependencies)."""

    def __init__(self, repo: Path, paths: list, args: argparse.Namespace, list_file: Path):
        self.torchvision = "installed"
        saved = {}
        if importable("torchvision") is not None:
            self.torchvision = "stand-in for transforms.Compose (no torchvision matches this torch)"
            for name, mod in _torchvision_stand_in().items():
                saved[name] = sys.modules.get(name)
                sys.modules[name] = mod
        try:
            pkg = types.ModuleType("official_dataset")
            pkg.__path__ = [str(repo / "dataset")]
            pkg.__spec__ = importlib.util.spec_from_loader("official_dataset", loader=None, is_package=True)
            sys.modules["official_dataset"] = pkg
            pd = importlib.import_module("official_dataset.pretrain_datasets")
        finally:
            for name, mod in saved.items():
                if mod is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = mod
        list_file.write_text("".join(f"{Path(p).name} 0 -1\n" for p in paths))
        a = argparse.Namespace(input_size=args.size, mask_type="tube", window_size=(args.frames // 2, args.size // 16,
                               args.size // 16), mask_ratio=0.9, decoder_mask_type="run_cell",
                               decoder_mask_ratio=0.5)
        transform = pd.DataAugmentationForVideoMAEv2(a)
        # the arguments of build_pretraining_dataset (dataset/build.py)
        self.dataset = pd.HybridVideoMAE(
            root=str(Path(paths[0]).parent), setting=str(list_file), train=True, test_mode=False,
            name_pattern="img_{:05}.jpg", video_ext="mp4", is_color=True, modality="rgb",
            num_segments=1, num_crop=1, new_length=args.frames, new_step=args.rate, transform=transform,
            temporal_jitter=False, lazy_init=False, num_sample=args.views)
        self.batches = []       # the frame indices of each get_batch call (for the decoded count)
        loader = self.dataset.video_loader

        def recording_loader(path):
            vr = loader(path)
            return _RecordingReader(vr, self.batches)
        self.dataset.video_loader = recording_loader

    def item(self, i: int) -> int:
        views, _, _ = self.dataset[i]
        return len(views)


class _RecordingReader:
    def __init__(self, vr, log):
        self.vr, self.log = vr, log

    def __len__(self):
        return len(self.vr)

    def get_batch(self, indices):
        self.log.append(list(indices))
        return self.vr.get_batch(indices)


def find_official(arg: str | None) -> tuple:
    """(checkout, None) or (None, why not)."""
    repo = Path(arg).expanduser() if arg else ROOT / ".official" / "VideoMAEv2"
    if not (repo / "dataset" / "pretrain_datasets.py").is_file():
        return None, (f"no official checkout at {repo} (git clone https://github.com/OpenGVLab/VideoMAEv2 "
                      "and pass --official-repo)")
    for mod, pip in (("decord", "decord"), ("cv2", "opencv-python-headless")):
        why = importable(mod)
        if why is not None:
            return None, f"the official loader needs {mod} (pip install {pip}): {why}"
    return repo, None
