"""Labelled sentences for text classification (SST-2 TSV, the UCI sentiment-labelled sentences), a PTB-style
word tokenizer, a word vocabulary, and a dataset that pads each batch only to its own longest sequence."""
from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .store import DataError, DataNotFoundError, data_root, read_utf8

SST2, UCI = "sst2", "sentiment_labelled_sentences"
UCI_FILES = ("amazon_cells_labelled.txt", "imdb_labelled.txt", "yelp_labelled.txt")
PAD, UNK = "<pad>", "<unk>"  # ids 0 and 1 of every WordVocab

# SST-2 is lower-cased Penn-Treebank tokenisation ("does n't", "it 's", "-lrb-"); user text is split the same way.
_CONTRACTION = re.compile(r"(?i)(\w)(n't)\b|(\w)('s|'re|'ve|'ll|'d|'m)\b")
_TOKEN = re.compile(r"n't|'(?:s|re|ve|ll|d|m|em)\b|\d+(?:[,.]\d+)+|\w+(?:[-'./]\w+)*|\.\.\.|--|``|''|\S")


def tokenize(text: str) -> list[str]:
    """Lower-cased PTB-style words: "Doesn't it (really)?" -> does n't it ( really ) ?

    Punctuation is split off and contractions become their own tokens (n't, 's, 're, ...); SST-2's own
    tokenisation is reproduced for 99% of its sentences. A hand-written
    regex rather than a library pre-tokenizer, since those split "n't" into three pieces.
    """
    text = _CONTRACTION.sub(lambda m: f"{m[1]} {m[2]}" if m[1] else f"{m[3]} {m[4]}", text.lower())
    return _TOKEN.findall(text)


class Labelled(NamedTuple):
    text: str
    label: int
    line: int  # in its file, for messages


def read_labelled(path: str | os.PathLike, header: bool, labels: int = 2) -> list[Labelled]:
    """Rows "TEXT<TAB>LABEL" (split on the last tab; lines on "\\n" only, as the UCI files hold U+0085).

    `header`: the first line is a header (SST-2's "sentence<TAB>label") and is skipped. Raises
    DataError naming the file and line of a row without a tab, with an empty text, or with a label
    that is not an integer in 0..labels-1, and for a file without rows.
    """
    path = Path(path)
    lines = read_utf8(path, "labelled-sentence file").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    rows = []
    for number, line in enumerate(lines, 1):
        if header and number == 1:
            continue
        text, tab, label = line.rstrip("\r").rpartition("\t")
        where = f"{path}: line {number}"
        if not tab:
            raise DataError(f"{where} has no label (expected TEXT<TAB>LABEL): {line!r:.80}")
        if not text.strip():
            raise DataError(f"{where} has an empty text")
        if not label.strip().isdigit() or not 0 <= int(label) < labels:
            raise DataError(f"{where}: label {label!r} is not one of 0..{labels - 1}")
        rows.append(Labelled(text.strip(), int(label), number))
    if not rows:
        raise DataError(f"{path} holds no labelled rows")
    return rows


def read_sst2(split: str, root: str | os.PathLike | None = None) -> list[Labelled]:
    """SST-2 "train" (67,349 phrases and sentences) or "dev" (872 sentences) from the data directory."""
    if split not in ("train", "dev"):
        raise ValueError(f"SST-2 split must be 'train' or 'dev' (test has no labels); got {split!r}")
    return read_labelled(_need(data_root(root) / SST2, [f"{split}.tsv"])[0], header=True)


def sentence_split(phrases: list[list[str]], fraction: float, seed: int,
                   whole: list[int] | None = None) -> tuple[Tensor, Tensor]:
    """(train, validation) indices of a phrase-level corpus split by whole sentences.

    SST-2's training set holds every phrase of each training sentence ("a gorgeous , witty , seductive movie ."
    and "witty" both); a random split of phrases puts parts of the same sentence on both sides and validation
    reads high. Here the sentences are the phrases no other phrase contains (6,882 in SST-2, 19.4 words on
    average, like its dev set's 19.6); validation is `fraction` of them, training every phrase found inside a
    training sentence. Phrases found only inside validation sentences are in neither. `whole`: the
    sentences' indices, if the caller has them already (`whole_sentences(phrases)`).
    """
    whole = whole_sentences(phrases) if whole is None else whole
    n_val = round(len(whole) * fraction)
    if not 0 < n_val < len(whole):
        raise ValueError(f"a validation fraction of {fraction} of {len(whole)} sentences leaves no sentence on one side")
    order = torch.randperm(len(whole), generator=torch.Generator().manual_seed(seed)).tolist()
    val = sorted(whole[k] for k in order[:n_val])
    kept = sorted(whole[k] for k in order[n_val:])
    inside = _Containment(phrases, kept)
    train = [i for i in range(len(phrases)) if i in inside.among or inside.within(i)]
    return torch.tensor(train), torch.tensor(val)


def whole_sentences(phrases: list[list[str]]) -> list[int]:
    """Indices of the phrases no other phrase contains (the first of equal phrases counts as containing
    the others): SST-2's sentences among its phrases."""
    inside = _Containment(phrases, range(len(phrases)))
    return [i for i in range(len(phrases)) if not inside.within(i)]


class _Containment:
    """Whether a phrase lies inside one of the phrases `among` (a word index finds the candidates)."""

    def __init__(self, phrases: list[list[str]], among):
        self.phrases, self.among = phrases, set(among)
        self.keys = [" " + " ".join(words) + " " for words in phrases]
        self.index = defaultdict(list)  # word -> those of the phrases `among` that hold it
        for i in sorted(self.among):
            for word in set(phrases[i]):
                self.index[word].append(i)

    def within(self, i: int) -> bool:
        rarest = min((self.index.get(w, ()) for w in set(self.phrases[i])), key=len, default=())
        key, keys = self.keys[i], self.keys  # a duplicate counts as inside its first occurrence
        return any(j != i and (len(keys[j]) > len(key) or j < i) and key in keys[j] for j in rarest)


def read_uci(root: str | os.PathLike | None = None) -> list[Labelled]:
    """The 3,000 UCI sentiment-labelled sentences (Amazon, IMDb, Yelp; 1,000 each)."""
    return [row for path in _need(data_root(root) / UCI, UCI_FILES) for row in read_labelled(path, header=False)]


def read_text_files(paths: str) -> list[list[str]]:
    """The tokenised non-blank lines of comma-separated text files (UTF-8; .gz files are decompressed)."""
    sentences = []
    for name in filter(None, (p.strip() for p in paths.split(","))):
        text = read_utf8(Path(name), "text file")
        sentences += [words for line in text.splitlines() if (words := tokenize(line))]
    return sentences


def _need(directory: Path, names) -> list[Path]:
    paths = [directory / name for name in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataNotFoundError(f"missing {', '.join(missing)}: put the data set's files in {directory} "
                                f"(see its README), or pass --data-dir")
    return paths


class WordVocab:
    """Words <-> ids; id 0 is padding and id 1 stands for every word not in the vocabulary."""

    def __init__(self, words: list[str]):
        if list(words[:2]) != [PAD, UNK] or len(set(words)) != len(words):
            raise ValueError(f"a word list must start with {PAD!r}, {UNK!r} and hold each word once; "
                             f"got {words[:4]!r}... ({len(words)} words)")
        self.words = list(words)
        self.ids = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, counts: Counter, min_count: int = 1) -> "WordVocab":
        """The words seen at least `min_count` times, most frequent first (ties in sorted order)."""
        kept = sorted((w for w, n in counts.items() if n >= min_count and w not in (PAD, UNK)),
                      key=lambda w: (-counts[w], w))
        return cls([PAD, UNK, *kept])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, words: list[str]) -> Tensor:
        return torch.tensor([self.ids.get(w, 1) for w in words], dtype=torch.long)


class Examples(Dataset):
    """Examples of any form, batched by `collate(list of examples)`: the DataLoader gets whole batches
    from `__getitems__`, so each batch is padded only to its own longest sequence."""

    def __init__(self, items: list, collate: Callable):
        self.items, self.collate = items, collate

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def __getitems__(self, indices: list[int]):
        return self.collate([self.items[i] for i in indices])

    def subset(self, index: Tensor) -> "Examples":
        return Examples([self.items[i] for i in index.tolist()], self.collate)


def pad(sequences: list[Tensor], value: int = 0) -> tuple[Tensor, Tensor]:
    """1-D tensors -> (padded (B, T) with `value` after each end, lengths (B,))."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    return torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True, padding_value=value), lengths
