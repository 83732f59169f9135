"""Labelled sentences: the tokenizer against hand-tokenised text, the TSV reader's errors by file and line,
the vocabulary and padding, and the real SST-2 / UCI files against their README's figures."""
import random
from pathlib import Path

import pytest
import torch

from rnnkit.data.sentences import (Examples, WordVocab, pad, read_labelled, read_sst2, read_uci, sentence_split,
                                   tokenize)
from rnnkit.data.store import DataError, DataNotFoundError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.parametrize("text, tokens", [
    ("A gorgeous, witty, seductive movie.", "a gorgeous , witty , seductive movie ."),
    ("It doesn't work; I'm sure they've tried (twice)!", "it does n't work ; i 'm sure they 've tried ( twice ) !"),
    ("10,000 times... 3.5 stars -- well-made `` yes ''", "10,000 times ... 3.5 stars -- well-made `` yes ''"),
    ("it 's a charming and often affecting journey . ", "it 's a charming and often affecting journey ."),
])
def test_tokenizer_splits_like_the_penn_treebank(text, tokens):
    assert tokenize(text) == tokens.split()


def test_reader_splits_on_the_last_tab_and_on_newlines_only(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text("a\tb c  \t1\nnext\u0085line\t0\n", encoding="utf-8")
    rows = read_labelled(path, header=False)
    assert [(r.text, r.label, r.line) for r in rows] == [("a\tb c", 1, 1), ("next\u0085line", 0, 2)]


@pytest.mark.parametrize("content, message", [
    ("sentence\tlabel\ngood film \t1\nno label here\n", "line 3 has no label"),
    ("sentence\tlabel\ngood film \t1\nbad film\tx\n", "line 3: label 'x' is not one of 0..1"),
    ("sentence\tlabel\ngood film \t2\n", "line 2: label '2' is not one of 0..1"),
    ("sentence\tlabel\n  \t1\n", "line 2 has an empty text"),
    ("sentence\tlabel\n", "holds no labelled rows"),
])
def test_bad_rows_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(DataError, match="bad.tsv") as error:
        read_labelled(path, header=True)
    assert message in str(error.value)


def test_missing_files_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(DataNotFoundError, match="sst2"):
        read_sst2("train", tmp_path)
    with pytest.raises(ValueError, match="test has no labels"):
        read_sst2("test", tmp_path)


def test_vocabulary_orders_by_count_and_maps_unknown_words():
    vocab = WordVocab.build({"b": 2, "a": 2, "c": 5, "rare": 1}, min_count=2)
    assert vocab.words == ["<pad>", "<unk>", "c", "a", "b"]
    assert vocab.encode(["a", "zebra", "c"]).tolist() == [3, 1, 2]
    with pytest.raises(ValueError, match="must start with '<pad>', '<unk>'"):
        WordVocab(["a", "b"])


def test_batches_are_padded_to_their_own_longest_sequence():
    padded, lengths = pad([torch.tensor([5, 6, 7]), torch.tensor([8])], value=-1)
    assert padded.tolist() == [[5, 6, 7], [8, -1, -1]] and lengths.tolist() == [3, 1]
    data = Examples([torch.tensor([1] * n) for n in (2, 9, 4)], lambda items: pad(items)[0])
    assert data.__getitems__([0, 2]).shape == (2, 4) and len(data.subset(torch.tensor([1]))) == 1


def _inside(part: list, whole: list) -> bool:
    return any(whole[k:k + len(part)] == part for k in range(len(whole) - len(part) + 1))


@pytest.mark.parametrize("seed", range(6))
def test_sentence_split_keeps_each_sentence_and_its_phrases_on_one_side(seed):
    """Against a brute-force reading of the rule on random phrase banks with duplicates and shared phrases."""
    rng = random.Random(seed)
    sentences = [[rng.choice("abcdefgh") for _ in range(rng.randint(1, 9))] for _ in range(40)]
    phrases = [s[:] for s in sentences]
    for s in sentences:
        for _ in range(rng.randint(0, 5)):
            start = rng.randrange(len(s))
            phrases.append(s[start:rng.randint(start + 1, len(s))])
    rng.shuffle(phrases)
    whole = [i for i, p in enumerate(phrases)
             if not any(j != i and (len(q) > len(p) or (q == p and j < i)) and _inside(p, q) for j, q in enumerate(phrases))]
    train, val = sentence_split(phrases, 0.25, seed)
    val = val.tolist()
    assert set(val) <= set(whole) and len(val) == round(len(whole) * 0.25) and val == sorted(set(val))
    kept = [i for i in whole if i not in val]
    assert train.tolist() == [i for i, p in enumerate(phrases) if any(_inside(p, phrases[k]) for k in kept)]
    assert train.tolist() != list(range(len(phrases)))  # some phrases belong to validation sentences only


def test_sentence_split_refuses_a_fraction_that_empties_a_side():
    with pytest.raises(ValueError, match="fraction of 0.01 of 3 sentences"):
        sentence_split([["a"], ["b"], ["c"]], 0.01, 0)


@pytest.mark.skipif(not (DATA / "sst2").is_dir(), reason=f"SST-2 not found in {DATA}")
def test_sst2_sentence_split_holds_out_whole_sentences():
    rows = read_sst2("train", DATA)
    words = [tokenize(r.text) for r in rows]
    train, val = sentence_split(words, 0.1, 0)
    assert len(val) == 688 and 60000 < len(train) < 67349 - 688
    held = {" ".join(words[i]) for i in val.tolist()}
    assert 17 < sum(len(words[i]) for i in val.tolist()) / len(val) < 22  # sentences like dev's (19.6 words)
    assert not held & {" ".join(words[i]) for i in train.tolist()}


@pytest.mark.skipif(not (DATA / "sst2").is_dir(), reason=f"SST-2 not found in {DATA}")
def test_sst2_matches_the_readme():
    train, dev = read_sst2("train", DATA), read_sst2("dev", DATA)
    assert len(train) == 67349 and sum(r.label for r in train) == 37569
    assert len(dev) == 872 and sum(r.label for r in dev) == 444
    assert not any(r.text.endswith(" ") for r in dev)  # the trailing space before the tab is stripped


@pytest.mark.skipif(not (DATA / "sentiment_labelled_sentences").is_dir(), reason=f"UCI sentences not found in {DATA}")
def test_uci_sentences_match_the_readme():
    rows = read_uci(DATA)
    assert len(rows) == 3000 and sum(r.label for r in rows) == 1500
