"""Text for character-level language models: corpora, strict UTF-8 reading, a vocabulary, truncated-BPTT windows."""
from __future__ import annotations

import operator
import os
import sysconfig
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from . import tinyshakespeare
from .store import DataError, DataNotFoundError

CORPORA = ("stdlib", "tinyshakespeare")
STDLIB_MAX_CHARS = 2_000_000  # the whole standard library is tens of MB; this is plenty for a char model
STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__",
                              "test", "tests", "idlelib", "lib2to3"})  # test suites hold deliberately odd files
SEPARATOR = "\n# file: {}\n"  # put before each standard-library file, with its path relative to the stdlib
LISTED = 5  # unknown characters named in an encode error


# corpora -------------------------------------------------------------------------------------------------------

def read_text_file(path: str | os.PathLike) -> str:
    """The text of a strict UTF-8 file, with "\\r\\n" turned into "\\n" and a leading byte-order mark dropped.

    Raises FileNotFoundError if it is missing, and DataError naming the file if it is not valid UTF-8
    (with the offset and value of the first bad byte), is empty, or holds only whitespace.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"text file {path} does not exist") from None
    text = _decode(raw, path)
    if not text.strip():
        raise DataError(f"{path} is empty" if not text else f"{path} holds only whitespace ({len(text)} characters)")
    return text


def _decode(raw: bytes, name) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{name} is not valid UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start} "
                        f"(line {line}: {e.reason})") from None
    # Windows editors write a BOM and CRLF line ends; neither should become a character of the vocabulary.
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


class StdlibCorpus(NamedTuple):
    text: str
    files: int  # files included
    skipped: int  # files left out as not valid UTF-8, among those read before the cap was reached


def stdlib_corpus(max_chars: int | None = STDLIB_MAX_CHARS) -> StdlibCorpus:
    """The running Python's standard library sources (`.py`), concatenated; nothing is downloaded.

    Files are taken whole, in sorted order of their path relative to the stdlib directory, each after a
    line "# file: PATH"; taking stops before the first file that would pass `max_chars` (None: no cap),
    so the result is deterministic for a given Python. Third-party packages (site-packages), test suites
    (test, tests, idlelib, lib2to3), empty files and files that are not valid UTF-8 are left out.
    """
    max_chars = _check_max_chars(max_chars)
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DataNotFoundError(f"the standard library directory {root} does not exist (an embedded or zipped "
                                f"Python?); use the tinyshakespeare corpus or a text file instead")
    names = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if d not in STDLIB_SKIP_DIRS]
        names += [Path(directory, f).relative_to(root).as_posix() for f in files if f.endswith(".py")]
    parts, size, skipped = [], 0, 0
    for name in sorted(names):
        try:
            source = _decode((root / name).read_bytes(), name)
        except DataError:
            skipped += 1
            continue
        if not source.strip():
            continue
        part = SEPARATOR.format(name) + source
        if max_chars is not None and size + len(part) > max_chars:
            if not parts:
                raise ValueError(f"max_chars must be at least the size of the first file, {name} ({len(part)} "
                                 f"characters with its header line); got {max_chars}")
            break
        parts.append(part)
        size += len(part)
    return StdlibCorpus("".join(parts), len(parts), skipped)


def load_corpus(name: str, root: str | os.PathLike | None = None, max_chars: int | None = None) -> str:
    """The text of corpus `name`: "tinyshakespeare" (from the data directory `root`, see `data_root`) or "stdlib".

    max_chars caps the length: for stdlib, whole files (None: STDLIB_MAX_CHARS); for tinyshakespeare,
    the first max_chars characters (None: all of it).
    """
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
    max_chars = _check_max_chars(max_chars)
    if name == "stdlib":
        return stdlib_corpus(STDLIB_MAX_CHARS if max_chars is None else max_chars).text
    return read_text_file(tinyshakespeare.path(root))[:max_chars]


def _check_max_chars(max_chars):
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1):
        raise ValueError(f"max_chars must be a positive integer or None, got {max_chars!r}")
    return max_chars


# vocabulary ----------------------------------------------------------------------------------------------------

class Vocabulary:
    """Characters <-> ids: character `chars[i]` has id i. `from_text` sorts a training text's distinct characters."""

    def __init__(self, chars: list[str]):
        if isinstance(chars, str) or not isinstance(chars, (list, tuple)):
            raise ValueError(f"chars must be a list of single characters, got {type(chars).__name__} {chars!r:.80}")
        if not chars:
            raise ValueError("chars must hold at least one character, got an empty list")
        for i, ch in enumerate(chars):
            if not isinstance(ch, str) or len(ch) != 1:
                raise ValueError(f"chars[{i}] must be a single character, got {ch!r}")
        self._chars = tuple(chars)
        self._ids = {ch: i for i, ch in enumerate(self._chars)}
        if len(self._ids) != len(self._chars):
            twice = next(ch for i, ch in enumerate(self._chars) if self._ids[ch] != i)  # _ids keeps the last
            raise ValueError(f"chars must not repeat a character; {twice!r} appears more than once")
        # code points sorted, with their ids: encode looks a whole text up at once with searchsorted
        codes = np.array([ord(ch) for ch in self._chars], dtype=np.int64)
        order = np.argsort(codes)
        self._codes, self._code_ids = codes[order], order.astype(np.int64)

    @classmethod
    def from_text(cls, text: str) -> "Vocabulary":
        if not isinstance(text, str) or not text:
            raise ValueError(f"text must be a non-empty str, got {text!r:.80}")
        return cls(sorted(set(text)))

    @classmethod
    def from_list(cls, chars: list[str]) -> "Vocabulary":
        """The inverse of `to_list` (e.g. from a checkpoint); ValueError unless single, distinct characters."""
        return cls(chars)

    def to_list(self) -> list[str]:
        return list(self._chars)

    @property
    def chars(self) -> list[str]:
        return list(self._chars)

    def __len__(self) -> int:
        return len(self._chars)

    def __contains__(self, ch) -> bool:
        return ch in self._ids

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} characters: {''.join(self._chars)!r:.60})"

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of `text` not in the vocabulary, in order of first appearance."""
        return list(dict.fromkeys(ch for ch in text if ch not in self._ids))

    def encode(self, text: str) -> Tensor:
        """`text` -> int64 ids (len(text),); ValueError naming characters that are not in the vocabulary."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        # surrogatepass: lone surrogates (from surrogateescape'd bytes) still get a code point, so an error names them
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
        at = np.searchsorted(self._codes, codes).clip(max=len(self._codes) - 1)
        known = self._codes[at] == codes
        if not known.all():
            raise ValueError(self._unknown_message(text, np.flatnonzero(~known)))
        return torch.from_numpy(self._code_ids[at])

    def _unknown_message(self, text: str, positions: np.ndarray) -> str:
        first = {}
        for p in positions.tolist():
            first.setdefault(text[p], p)
        named = ", ".join(f"{ch!r} (first at {p})" for ch, p in list(first.items())[:LISTED])
        more = f" and {len(first) - LISTED} more" if len(first) > LISTED else ""
        return (f"text has {len(first)} distinct character(s) not in the vocabulary of {len(self)}, "
                f"{len(positions)} occurrence(s) in all: {named}{more}")

    def decode(self, ids) -> str:
        """Ids (a 1-D tensor or a sequence of ints) -> the text; ValueError for an id outside 0..len-1."""
        if isinstance(ids, Tensor):
            if ids.dim() != 1:
                raise ValueError(f"ids must be 1-D, got a tensor of shape {tuple(ids.shape)}")
            ids = ids.tolist()
        chars = []
        for position, i in enumerate(ids):
            i = operator.index(i)  # refuses floats rather than truncating them
            if not 0 <= i < len(self._chars):  # a negative id would otherwise index from the end
                raise ValueError(f"id {i} at position {position} is out of range 0..{len(self._chars) - 1}")
            chars.append(self._chars[i])
        return "".join(chars)


# splitting and truncated-BPTT batches ------------------------------------------------------------------------

def split_text(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """(train, val): the last `val_fraction` of the characters is validation, so no window straddles both."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    n_val = round(len(text) * val_fraction)
    n_train = len(text) - n_val
    if n_train < 2 or n_val < 2:
        raise ValueError(f"a text of {len(text)} characters with val_fraction={val_fraction} splits into "
                         f"{n_train} training and {n_val} validation characters; each part needs at least 2")
    return text[:n_train], text[n_train:]


def streams(ids: Tensor, num_streams: int) -> Tensor:
    """Cut 1-D `ids` into `num_streams` contiguous streams of equal length N = len // num_streams -> (B, N).

    Stream b is ids[b*N : (b+1)*N]; the last len % num_streams ids are dropped.
    """
    if not isinstance(ids, Tensor) or ids.dim() != 1:
        shape = tuple(getattr(ids, "shape", ()))
        raise ValueError(f"ids must be a 1-D tensor, got {type(ids).__name__} of shape {shape}")
    if isinstance(num_streams, bool) or not isinstance(num_streams, int) or num_streams < 1:
        raise ValueError(f"num_streams must be a positive integer, got {num_streams!r}")
    n = len(ids) // num_streams
    if n < 2:  # a stream needs at least one (input, next character) pair
        raise ValueError(f"{len(ids)} ids cannot make {num_streams} streams of at least 2 ids each "
                         f"(len // num_streams = {n}); use fewer streams or more text")
    return ids[:n * num_streams].view(num_streams, n)  # (B, N)


class Windows(Dataset):
    """Truncated-BPTT windows over (B, N) streams: item k is (inputs, targets), each (B, L), a whole batch.

    inputs = streams[:, k*bptt : k*bptt + L] and targets are the same positions shifted by one (the next
    character). L = bptt except for a shorter last window, so the N - 1 transitions are each covered
    exactly once. Read the items in order with DataLoader(batch_size=None): the hidden state is carried
    from window k to k + 1.
    """

    def __init__(self, streams: Tensor, bptt: int):
        if not isinstance(streams, Tensor) or streams.dim() != 2 or streams.shape[0] < 1 or streams.shape[1] < 2:
            shape = tuple(getattr(streams, "shape", ()))
            raise ValueError(f"streams must be a (B, N) tensor with B >= 1 and N >= 2, got shape {shape}")
        if isinstance(bptt, bool) or not isinstance(bptt, int) or bptt < 1:
            raise ValueError(f"bptt must be a positive integer, got {bptt!r}")
        self.streams, self.bptt = streams, bptt

    def __len__(self) -> int:
        return -(-(self.streams.shape[1] - 1) // self.bptt)  # ceil((N - 1) / bptt)

    def __getitem__(self, k: int) -> tuple[Tensor, Tensor]:
        k = operator.index(k)
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(f"window {k} is out of range for {len(self)} windows")
        start = k * self.bptt
        length = min(self.bptt, self.streams.shape[1] - 1 - start)
        inputs = self.streams[:, start:start + length]  # (B, L)
        targets = self.streams[:, start + 1:start + 1 + length]  # (B, L)
        return inputs, targets

    def shard(self, rank: int, world: int) -> "Windows":
        """The streams of process `rank` of `world` (b = rank, rank + world, ...), for distributed training.

        Every shard has the same windows in time; shards differ by at most one stream when B is not a
        multiple of world.
        """
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in 0..world-1 = 0..{world - 1}, got {rank}")
        if world > self.streams.shape[0]:
            raise ValueError(f"{self.streams.shape[0]} streams cannot be shared among {world} processes; "
                             f"use a batch size of at least {world}")
        return Windows(self.streams[rank::world], self.bptt)
