"""CoNLL-U treebanks (Universal Dependencies) for tagging: sentences of (words, tags), with multiword-token
ranges (`3-4`) and empty nodes (`8.1`) skipped, read with the `conllu` library after a line-by-line check
that names the file and line of any malformed row."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple


from .store import DataError, DataNotFoundError, data_root, read_utf8

TAGSETS = ("upos", "xpos")
COLUMNS = 10  # ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC
WORD_ID, RANGE_ID, EMPTY_ID = re.compile(r"[1-9]\d*"), re.compile(r"[1-9]\d*-[1-9]\d*"), re.compile(r"\d+\.[1-9]\d*")
EWT = "ud_english_ewt"
EWT_FILES = {"train": "en_ewt-ud-train.conllu", "dev": "en_ewt-ud-dev.conllu", "test": "en_ewt-ud-test.conllu"}


class Sentence(NamedTuple):
    words: list[str]
    tags: list[str]
    line: int  # the line of its first token in the file, for messages


def read_conllu(path: str | os.PathLike, tagset: str = "upos") -> list[Sentence]:
    """The sentences of a CoNLL-U file as (words, tags): syntactic words only, in order.

    Raises FileNotFoundError if the file is missing and DataError naming the file and line for a row
    that does not have 10 tab-separated columns, an ID that is not a word (1, 2, ...), a range (3-4)
    or an empty node (8.1), word IDs that do not run 1, 2, 3, ... within a sentence, a word without
    its tag ("_"), text that is not UTF-8, or a file without sentences.
    """
    if tagset not in TAGSETS:
        raise ValueError(f"tagset must be one of {', '.join(TAGSETS)}; got {tagset!r}")
    path = Path(path)
    text = read_utf8(path, "CoNLL-U file")
    sentences, block, start = [], [], 0
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if line.strip():
            if not block:
                start = number
            block.append(line)
        elif block:
            sentences.append(_sentence(block, start, path, tagset))
            block = []
    if block:
        sentences.append(_sentence(block, start, path, tagset))
    sentences = [s for s in sentences if s.words]
    if not sentences:
        raise DataError(f"{path} holds no sentences (no word lines)")
    return sentences


def _sentence(lines: list[str], start: int, path: Path, tagset: str) -> Sentence:
    """Check each token line of one sentence block, then parse it with `conllu`."""
    import conllu  # a training dependency: a saved tagger loads without it (rnnkit.pretrained)

    column = 3 if tagset == "upos" else 4
    expected, first = 1, None
    for offset, line in enumerate(lines):
        if line.startswith("#"):
            continue
        where = f"{path}: line {start + offset}"
        fields = line.split("\t")
        if len(fields) != COLUMNS:
            raise DataError(f"{where} has {len(fields)} tab-separated columns; CoNLL-U has {COLUMNS}: {line!r:.80}")
        token_id = fields[0]
        if RANGE_ID.fullmatch(token_id) or EMPTY_ID.fullmatch(token_id):
            continue
        if not WORD_ID.fullmatch(token_id):
            raise DataError(f"{where}: bad ID {token_id!r}; expected a word (1, 2, ...), a multiword range "
                            f"(3-4) or an empty node (8.1)")
        if int(token_id) != expected:
            raise DataError(f"{where}: word ID {token_id} out of order; expected {expected}")
        if fields[column] == "_":
            raise DataError(f"{where}: word {fields[1]!r} has no {tagset.upper()} tag ('_')")
        expected += 1
        first = first or start + offset
    try:
        tokens = conllu.parse_token_and_metadata("\n".join(lines))
    except conllu.exceptions.ParseException as e:
        raise DataError(f"{path}: sentence at line {start}: {e}") from None
    words = [t for t in tokens if isinstance(t["id"], int)]  # ranges and empty nodes have tuple IDs
    return Sentence([t["form"] for t in words], [t[tagset] for t in words], first or start)


def ewt_paths(root: str | os.PathLike | None = None) -> dict[str, Path]:
    """The train/dev/test files of UD English EWT in the data directory (see `data_root`)."""
    directory = data_root(root) / EWT
    paths = {split: directory / name for split, name in EWT_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataNotFoundError(f"UD English EWT not found: missing {', '.join(missing)}. Put the treebank's "
                                f".conllu files in {directory} (github.com/UniversalDependencies/UD_English-EWT), "
                                f"or pass CoNLL-U files with --train/--dev/--test")
    return paths
