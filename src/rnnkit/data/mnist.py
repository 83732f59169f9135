"""MNIST: the four original gzip'd IDX files, their checksums and mirrors, a strict reader, `load` and `download`."""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from . import store
from .store import DataError, DataNotFoundError, data_root


class FileSpec(NamedTuple):
    sha256: str
    size: int  # bytes of the .gz file


FILES = {
    "train-images-idx3-ubyte.gz": FileSpec("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
    "train-labels-idx1-ubyte.gz": FileSpec("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
    "t10k-images-idx3-ubyte.gz": FileSpec("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
    "t10k-labels-idx1-ubyte.gz": FileSpec("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
}
SPLITS = {  # split -> (images file, labels file)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Base URLs serving the original files, tried in order; yann.lecun.com last as it is often unavailable.
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]
MAGIC_NDIM = {2049: 1, 2051: 3}  # labels (N,), images (N, rows, cols); both of unsigned bytes (type 0x08)
SIDE, CLASSES = 28, 10


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """A gzip'd MNIST IDX file -> a uint8 array of the shape its header gives; DataError if corrupt or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"IDX file {path} does not exist")
    try:
        raw = gzip.decompress(path.read_bytes())  # whole file at once: much faster than streaming for 47 MB
    except EOFError:
        raise DataError(f"{path}: gzip data is truncated (the file ends before the end of its stream)") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: not a valid gzip file, or corrupt ({e})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes after gunzip, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in MAGIC_NDIM:
        raise DataError(f"{path}: IDX magic number {magic} (0x{magic:08x}) is not 2051 (images) or 2049 (labels)")
    ndim = MAGIC_NDIM[magic]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header needs {header} bytes, the file has {len(raw)} after gunzip")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected, actual = math.prod(dims), len(raw) - header
    if actual != expected:
        problem = "too short" if actual < expected else f"{actual - expected} trailing bytes"
        raise DataError(f"{path}: payload is {actual} bytes but dims {dims} need exactly {expected} ({problem})")
    # copy: frombuffer over bytes is read-only, and torch.from_numpy wants a writable array
    return np.frombuffer(raw, dtype=np.uint8, count=expected, offset=header).reshape(dims).copy()


def load(split: str, root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST `split` ("train" or "test") -> (images uint8 (N, 28, 28), labels int64 (N,)).

    The files are looked for in `data_root(root) / "mnist"`, then in `data_root(root)` itself.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return read_pair(*_find(SPLITS[split], root))


def read_pair(images_path: str | os.PathLike, labels_path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Gzip'd IDX files of MNIST images and their labels -> (images uint8 (N, 28, 28), labels int64 (N,));
    DataError naming the file for anything but 28x28 images and as many labels in 0..9."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{images_path} must hold images (IDX magic 2051) and {labels_path} labels (2049); "
                        f"got arrays of {images.ndim} and {labels.ndim} dims")
    if images.shape[1:] != (SIDE, SIDE):
        raise DataError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected {SIDE}x{SIDE}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if len(labels) and labels.max() >= CLASSES:
        raise DataError(f"{labels_path}: label {labels.max()} is out of range 0..{CLASSES - 1}")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def download(root: str | os.PathLike | None = None, mirrors: list[str] | None = None, log=print) -> Path:
    """Download the four files into `data_root(root) / "mnist"`, each sha256-verified; returns that directory."""
    mirrors = MIRRORS if mirrors is None else mirrors
    directory = data_root(root) / "mnist"
    for name, spec in FILES.items():
        store.download(store.mirror_urls(mirrors, name), directory / name, spec.sha256, log=log)
    return directory


def _find(names: tuple[str, ...], root) -> list[Path]:
    """The paths of `names` in the first directory searched that holds them all, else DataNotFoundError."""
    base = data_root(root)
    searched = [base / "mnist", base]  # so --data-dir may name the data directory or its mnist/ folder
    missing = {}
    for directory in searched:
        missing[directory] = [name for name in names if not (directory / name).is_file()]
        if not missing[directory]:
            return [directory / name for name in names]
    where = "; ".join(f"{d} (missing {', '.join(m)})" for d, m in missing.items())
    raise DataNotFoundError(
        f"MNIST files not found. Looked in: {where}. Get them with `rnnkit data download mnist "
        f"[--data-dir DIR]`, or pass --data-dir / set RNNKIT_DATA to a directory that holds them.")
