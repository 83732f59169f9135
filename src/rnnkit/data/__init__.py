"""Data sets: where they live (`data_root`), sha256-verified downloads, and the registry of downloadable sets."""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from . import mnist, tinyshakespeare, vectors
from .store import DataError, DataNotFoundError, data_root, download

# name -> `download(root, mirrors=None, log=print) -> Path`
DATASETS = {"mnist": mnist.download, "tinyshakespeare": tinyshakespeare.download,
            vectors.GLOVE_6B_100D: partial(vectors.fetch, vectors.GLOVE_6B_100D)}


def download_dataset(name: str, root: str | os.PathLike | None = None, mirrors: list[str] | None = None,
                     log=print) -> Path:
    """Download the data set `name` into the data directory (see `data_root`); returns where its files are."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](root, mirrors=mirrors, log=log)


__all__ = ["DATASETS", "DataError", "DataNotFoundError", "data_root", "download", "download_dataset"]
