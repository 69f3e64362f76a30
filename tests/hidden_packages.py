"""Run a subprocess as if a package were not installed (the GPU machines have no PyAV)."""
from pathlib import Path


def hide(folder: Path, package: str = "av") -> str:
    """A PYTHONPATH entry under which `import <package>` fails with ModuleNotFoundError, as when
    it is not installed."""
    (folder / package).mkdir(parents=True)
    (folder / package / "__init__.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{package}'\", name='{package}')\n")
    return str(folder)
