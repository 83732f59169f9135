"""Parallel text: line counts checked, Multi30k read from the data directory, tokenizers that detokenise
exactly, synthetic pairs that are what they claim, and batches padded per batch."""
import gzip
from pathlib import Path

import pytest
import torch

from rnnkit.data import parallel
from rnnkit.data.store import DataError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_gz(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


def test_mismatched_line_counts_name_the_files_and_counts(tmp_path):
    src = write_gz(tmp_path / "a.de.gz", ["eins", "zwei", "drei"])
    tgt = write_gz(tmp_path / "a.en.gz", ["one", "two"])
    with pytest.raises(DataError, match=r"a\.de\.gz has 3 lines.*a\.en\.gz has 2"):
        parallel.read_parallel(src, tgt)
    assert parallel.read_parallel(src, write_gz(tmp_path / "b.gz", ["1", "2", "3"]))[2] == ("drei", "3")


def test_missing_file_and_bad_language_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.gz"):
        parallel.read_lines(tmp_path / "nothing.gz")
    with pytest.raises(ValueError, match="--src must be one of de, en, fr; got 'xx'"):
        parallel.read_multi30k("train", "xx", "en", tmp_path)


@pytest.mark.skipif(not (DATA / "multi30k").is_dir(), reason="Multi30k is not in ../shared/data")
def test_multi30k_splits_are_aligned():
    sizes = {split: len(parallel.read_multi30k(split, "de", "en", DATA)) for split in ("train", "val", "test")}
    assert sizes == {"train": 29000, "val": 1014, "test": 1000}
    de, en = parallel.read_multi30k("test", "de", "en", DATA)[0]
    assert de.startswith("Ein Mann mit einem orangefarbenen Hut") and en.startswith("A man in an orange hat")


def test_bpe_detokenises_exactly_to_the_lowercased_text():
    lines = ["A man in an orange hat, starring at something.", "Zwei Hunde spielen im Schnee !",
             "two dogs play in the snow."] * 20
    tok = parallel.train_tokenizer(lines, "bpe", 200)
    assert [tok.id_to_token(i) for i in range(4)] == list(parallel.SPECIALS)
    for line in lines[:3]:
        ids = parallel.encode(tok, [line])[0]
        assert ids[-1] == parallel.EOS_ID
        assert parallel.decode(tok, ids.tolist() + [5, 6]) == line.lower()  # stops at </s>


def test_synthetic_pairs_are_reversals_and_rewritten_dates():
    for source, target in parallel.reverse_pairs(50, seed=1):
        assert target.split() == source.split()[::-1]
    months = {m: i + 1 for i, m in enumerate(parallel.MONTHS)}
    for source, target in parallel.date_pairs(200, seed=1):
        words = source.replace(",", " ").replace("/", " ").split()
        year, month, day = map(int, target.split())
        if words[0] in months:
            assert (months[words[0]], int(words[1]), int(words[2])) == (month, day, year)
        elif words[1] in months:
            assert (int(words[0]), months[words[1]], int(words[2])) == (day, month, year)
        else:
            assert list(map(int, words)) == [day, month, year]
    assert parallel.date_pairs(5, seed=3) == parallel.date_pairs(5, seed=3)


def test_batches_are_padded_to_their_own_longest_sentence():
    data = parallel.PairBatches([torch.tensor([5, 3]), torch.tensor([6, 7, 8, 3]), torch.tensor([3])],
                                [torch.tensor([9, 3]), torch.tensor([3]), torch.tensor([4, 4, 4, 4, 3])])
    (src, lengths), tgt = data.__getitems__([0, 2])
    assert src.tolist() == [[5, 3], [3, 0]] and lengths.tolist() == [2, 1]
    assert tgt.tolist() == [[9, 3, 0, 0, 0], [4, 4, 4, 4, 3]]
