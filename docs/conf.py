"""Sphinx configuration of rnnkit's documentation: `python -m sphinx -b html docs docs/_build/html`.

Everything is built offline from this folder and the installed package: Markdown pages (myst-parser),
the course's tutorials (sphinx-gallery runs each script in docs/tutorials/ and renders it with its output
and pictures, downloadable as .py and .ipynb), the recipes' pictures (_ext/recipefigures.py runs each recipe's
command at a small size and shows what it drew) and the API reference (autodoc + autosummary, generated
from the package, with viewcode's [source] links). See contributing.md for why these tools.
"""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import torch

import rnnkit

# The tutorials run at small sizes, where one thread is as fast as several and a CPU shared with other
# work is not oversubscribed (two threads on two busy cores slowed their steps tenfold).
torch.set_num_threads(1)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

project = "rnnkit"
author = "the rnnkit developers"
copyright = "rnnkit developers, MIT licence"
release = version = rnnkit.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
    "plaindocstrings",  # _ext/: rnnkit's plain-text docstrings rendered safely as reST
    "recipefigures",  # _ext/: the recipes' pictures, drawn by small runs of their commands
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax from the site itself (its module's name has dashes)
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "recipes/_runs", "tutorials/*.md", "tutorials/GALLERY_HEADER.rst", "**.ipynb",
                    "**.py.md5", "**.codeobj.json", "sg_execution_times.rst"]
templates_path = ["_templates"]
suppress_warnings = []
nitpicky = True  # a reference to an object that is not documented fails the build (-W)
nitpick_ignore_regex = [
    # annotations naming other libraries' types, and typing's: not ours to document (no intersphinx: offline)
    (r"py:.*", r"(torch|numpy|np|nn|F|lightning|L|pl|torchmetrics|matplotlib|pathlib|typing|collections|"
               r"argparse|ctypes|dataclasses|enum|os|io|datetime|abc|types|tokenizers|onnx|onnxruntime|"
               r"safetensors)(\..*)?"),
    (r"py:.*", r"(Tensor|Path|PathLike|Module|Parameter|Dataset|DataLoader|Generator|Figure|Axes|Iterator|Iterable|"
               r"Callable|Sequence|Mapping|Any|Optional|Union|NamedTuple|ndarray|dtype|device|PackedSequence|"
               r"Namespace|ArgumentParser|Trainer|LightningModule|LightningDataModule|Callback|Metric|Tokenizer|"
               r"BaseException|Exception|ValueError|TypeError|RuntimeError|OSError|Enum|IntEnum|TextIO|IO|"
               r"MetricCollection|TensorDataset|Sampler|Logger|Profiler|ModelCheckpoint|EarlyStopping|"
               r"int|float|str|bool|bytes|dict|list|tuple|set|object|type|None|NoneType|callable|optional)"),
    (r"py:.*", r"(.*\.)?_[A-Za-z]\w*$"),  # a private base class: its public subclasses are documented
    (r"py:.*", r".*\.(T|t|self)$"),  # the return annotations of generic methods
    (r"py:.*", r"[A-Za-z_]+\[.*"),     # subscripted generics as strings
]

# -- Markdown ---------------------------------------------------------------------------------------
# Equations: `.. math::` in the tutorials, {math} in the Markdown pages, rendered by MathJax 3, which
# sphinx-mathjax-offline copies into the site (_static/mathjax): no page fetches anything from a network. The
# docstrings keep their plain-text equations (they are read in a terminal too).
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# -- Recipes ----------------------------------------------------------------------------------------
# The data sets the recipes' small runs read: $RNNKIT_DATA (as `--data-dir` defaults to), else ../shared/data
# beside the repository, as the tests find them.
recipe_data_dir = os.environ.get("RNNKIT_DATA") or str(HERE.parents[1] / "shared" / "data")

# -- API reference ----------------------------------------------------------------------------------
autosummary_generate = True
autosummary_ignore_module_all = True  # a module's page documents what the module defines (rnnkit's: __all__)
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True,
                           "member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False  # torch's and Lightning's docstrings are theirs to render
add_module_names = False
# `python -m rnnkit` runs the command line at import: autosummary imports every submodule it finds, so
# it gets an empty stand-in (a module whose name starts with "_" is not documented anyway).
sys.modules.setdefault("rnnkit.__main__", types.ModuleType("rnnkit.__main__"))


def _reexported() -> list[str]:
    """Where each object of rnnkit's top-level API is defined: it is documented once, as rnnkit.NAME."""
    names = []
    for name in rnnkit.__all__:
        obj = getattr(rnnkit, name)
        if hasattr(obj, "__module__") and hasattr(obj, "__qualname__"):
            names.append(f"{obj.__module__}.{obj.__qualname__}")
    return names


def _package_exports() -> dict[str, list[tuple[str, str, str]]]:
    """For each subpackage with an __all__: (name, kind, where it is defined) of what it re-exports, so that
    `rnnkit.models.SequenceClassifier` and the like resolve, pointing to the defining module's page."""
    import importlib
    import inspect
    import pkgutil

    toplevel = set(_reexported())  # rnnkit.nn's layers: documented once, as rnnkit.LSTM and the others
    exports = {}
    for info in pkgutil.walk_packages(rnnkit.__path__, "rnnkit."):
        if not info.ispkg or info.name.rsplit(".", 1)[1].startswith("_"):
            continue
        package = importlib.import_module(info.name)
        rows = []
        for name in getattr(package, "__all__", []):
            obj = getattr(package, name)
            module = getattr(obj, "__module__", None)
            if module == info.name or module is None or not hasattr(obj, "__qualname__"):
                continue
            kind = "class" if inspect.isclass(obj) else "function" if callable(obj) else None
            if kind and f"{module}.{obj.__qualname__}" not in toplevel:
                rows.append((name, kind, f"{module}.{obj.__qualname__}"))
        exports[info.name] = rows
    return exports


autosummary_context = {"reexported": _reexported(), "toplevel": list(rnnkit.__all__),
                       "package_exports": _package_exports()}

# -- Course (sphinx-gallery) ------------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "tutorials",
    "gallery_dirs": "course",
    "filename_pattern": r"/\d\d_",  # run every numbered tutorial
    "within_subsection_order": "FileNameSortKey",
    "image_scrapers": ("matplotlib", "pngfiles.scraper"),  # _ext/pngfiles.py: rnnkit's own PNG plots
    "reset_modules": ("matplotlib",),
    "doc_module": ("rnnkit",),
    "reference_url": {"rnnkit": None},  # link the names in the code to the API reference
    "backreferences_dir": None,
    "download_all_examples": True,
    "remove_config_comments": True,
    "show_memory": False,
    "abort_on_example_error": False,
    "only_warn_on_example_error": False,  # a tutorial that fails fails the build
    "capture_repr": ("_repr_html_", "__repr__"),
    "min_reported_time": 1,
    "plot_gallery": "True",
    "write_computation_times": False,
}

# -- HTML -------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"rnnkit {release}"
html_static_path = []
html_show_sourcelink = False
html_copy_source = False
