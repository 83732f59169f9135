"""Build the API reference from the docstrings, offline: `python docs/build_api.py [OUT_DIR]` writes
HTML pages for every module of rnnkit (default: docs/api/; open docs/api/index.html).
Needs `pip install -e ".[train,docs]"` (the task modules import the training libraries)."""
from __future__ import annotations

import pkgutil
import sys
import warnings
from pathlib import Path

import pdoc

import rnnkit


def modules() -> list[str]:
    """Every module of the package, sorted; `__main__` (the command's entry) has nothing to document."""
    names = ["rnnkit"] + [m.name for m in pkgutil.walk_packages(rnnkit.__path__, "rnnkit.")]
    return sorted(name for name in names if not name.endswith("__main__"))


def build(out: Path) -> Path:
    pdoc.render.configure(docformat="google", footer_text=f"rnnkit {rnnkit.__version__}", search=True)
    with warnings.catch_warnings():  # pdoc also reaches submodules through their packages: no harm
        warnings.filterwarnings("ignore", message="The module specification")
        pdoc.pdoc(*modules(), output_directory=out)
    return out / "index.html"


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "api"
    print(f"API reference: {build(out)}")
