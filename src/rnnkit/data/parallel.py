"""Parallel text for translation: Multi30k read from the data directory, two synthetic seq2seq tasks that
train in seconds (reversing a sequence, rewriting dates), subword/word tokenizers (`tokenizers`), and a
dataset that pads each batch of (source, target) pairs to its own longest sentences."""
from __future__ import annotations

import gzip
import os
import random
import zlib
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .store import DataError, DataNotFoundError, data_root

LANGUAGES = ("de", "en", "fr")
SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIALS = (PAD, UNK, BOS, EOS)  # ids 0..3 of every tokenizer made here
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")


def read_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a UTF-8 text file, gzipped if its name ends in .gz (line ends stripped)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f]
    except FileNotFoundError:
        raise DataNotFoundError(f"parallel-text file {path} does not exist") from None
    except (UnicodeDecodeError, OSError, EOFError, zlib.error) as e:  # zlib: a corrupt gzip stream
        raise DataError(f"{path} cannot be read as UTF-8 text: {e}") from None


def read_parallel(src_path, tgt_path) -> list[tuple[str, str]]:
    """Line i of one file is the translation of line i of the other; their line counts must match."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(f"parallel files differ in line count: {src_path} has {len(src)} lines, "
                        f"{tgt_path} has {len(tgt)}")
    return list(zip(src, tgt))


def read_multi30k(split: str, src: str, tgt: str, root=None) -> list[tuple[str, str]]:
    """(source, target) sentence pairs of Multi30k's train, val or test (test_2016_flickr) split."""
    for name, lang in (("--src", src), ("--tgt", tgt)):
        if lang not in LANGUAGES:
            raise ValueError(f"{name} must be one of {', '.join(LANGUAGES)}; got {lang!r}")
    if src == tgt:
        raise ValueError(f"--src and --tgt must differ; got {src!r} for both")
    directory = Path(data_root(root)) / "multi30k"
    stem = SPLITS[split]
    return read_parallel(directory / f"{stem}.{src}.gz", directory / f"{stem}.{tgt}.gz")


def reverse_pairs(n: int, seed: int, vocab: int = 12, min_len: int = 3, max_len: int = 10):
    """n pairs "w3 w7 w1" -> "w1 w7 w3": random word sequences and their reversal."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        words = [f"w{rng.randrange(vocab)}" for _ in range(rng.randint(min_len, max_len))]
        pairs.append((" ".join(words), " ".join(reversed(words))))
    return pairs


def date_pairs(n: int, seed: int):
    """n pairs of a date written one of three ways ("5 march 1999", "march 5 , 1999", "05 / 03 / 1999")
    -> "1999 03 05" (year, month, day)."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        year, month, day = rng.randrange(1950, 2050), rng.randrange(1, 13), rng.randrange(1, 29)
        source = rng.choice((f"{day} {MONTHS[month - 1]} {year}", f"{MONTHS[month - 1]} {day} , {year}",
                             f"{day:02d} / {month:02d} / {year}"))
        pairs.append((source, f"{year} {month:02d} {day:02d}"))
    return pairs


def train_tokenizer(lines: list[str], kind: str, vocab_size: int = 8000):
    """A `tokenizers.Tokenizer` trained on `lines`, with <pad> <unk> <s> </s> as ids 0..3.

    kind "bpe": lower-cased byte-pair encoding with a Metaspace pre-tokenizer, so that decoding restores
    the spaces exactly (the detokenised text BLEU needs); "word": whitespace-separated words (the
    synthetic tasks, whose words are their symbols).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), min_frequency=2,
                                      show_progress=False)
    elif kind == "word":
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIALS), show_progress=False)
    else:
        raise ValueError(f"tokenizer kind must be 'bpe' or 'word'; got {kind!r}")
    tokenizer.train_from_iterator(lines, trainer)
    return tokenizer


def load_tokenizer(json_text: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json_text)


def encode(tokenizer, lines: list[str], max_tokens: int = 0) -> list[Tensor]:
    """Token ids of each line followed by </s> (cut to max_tokens ids before it when > 0)."""
    out = []
    for enc in tokenizer.encode_batch(lines, add_special_tokens=False):
        ids = enc.ids[:max_tokens] if max_tokens else enc.ids
        out.append(torch.tensor(ids + [EOS_ID], dtype=torch.long))
    return out


def decode(tokenizer, ids) -> str:
    """Detokenised text of ids, stopping at the first </s> (specials dropped)."""
    ids = list(ids)
    if EOS_ID in ids:
        ids = ids[:ids.index(EOS_ID)]
    text = tokenizer.decode([i for i in ids if i >= len(SPECIALS)], skip_special_tokens=True)
    return text.strip()


def pad(sequences: list[Tensor]) -> tuple[Tensor, Tensor]:
    """(B, T) ids padded with <pad> to the longest, and the lengths (B,)."""
    lengths = torch.tensor([len(s) for s in sequences])
    return torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True, padding_value=PAD_ID), lengths


class PairBatches(Dataset):
    """(source ids, target ids) pairs, each ending in </s>. A batch is ((src (B, S), src_lengths (B,)),
    tgt (B, T)): each side padded to its own longest sentence in the batch."""

    def __init__(self, sources: list[Tensor], targets: list[Tensor]):
        if len(sources) != len(targets):
            raise ValueError(f"sources and targets differ in count: {len(sources)} vs {len(targets)}")
        self.sources, self.targets = sources, targets

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i):
        return self.__getitems__([i])

    def __getitems__(self, indices: list[int]):
        src, lengths = pad([self.sources[i] for i in indices])
        tgt, _ = pad([self.targets[i] for i in indices])
        return (src, lengths), tgt
