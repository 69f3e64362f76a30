"""vmae2_fast: a fast, official-parity training engine for VideoMAE V2."""
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"


def _source_tree_kernels() -> None:
    """Make the top-level kernels/ folder importable as `vmae2_fast.kernels` in a source tree.

    setup.py installs kernels/ as `vmae2_fast/kernels/`; a clone run with `PYTHONPATH=.` (or an
    editable install) has it beside this package instead. The folder deliberately has no
    `__init__.py`: a regular package named `kernels` at the clone's root would answer every
    `import kernels` made from there, hiding Hugging Face's `kernels` package that transformers
    imports. So it is registered here under our own name, and only when it is not installed."""
    here = Path(__file__).resolve().parent
    source = here.parent / "kernels"
    name = f"{__name__}.kernels"
    if name in sys.modules or (here / "kernels").is_dir() or not source.is_dir():
        return
    spec = importlib.util.spec_from_loader(name, loader=None, is_package=True)
    spec.submodule_search_locations = [str(source)]
    sys.modules[name] = importlib.util.module_from_spec(spec)


_source_tree_kernels()
