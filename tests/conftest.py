"""Shared pytest fixtures."""
import pytest


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A tiny synthetic video dataset (6 classes x (2 train + 1 val) VP9 videos, 24 frames, 48x48).

    The parameters are also exposed as attributes so tests can re-render the raw frames.
    """
    from vmae2_fast.data.synthetic import ensure_synthetic_dataset
    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    ds = ensure_synthetic_dataset(str(root), videos_per_class_train=2, videos_per_class_val=1,
                                  num_frames=24, size=48, fps=12, seed=0, progress=False)
    ds.params = dict(videos_per_class_train=2, videos_per_class_val=1, num_frames=24, size=48,
                     seed=0)
    return ds


def pytest_collection_modifyitems(config, items):
    """GPU tests skip cleanly, with a reason, where no CUDA device exists."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
