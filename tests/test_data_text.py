"""rnnkit.data.text and .tinyshakespeare: the real corpus through a local mirror, the stdlib corpus, strict reading,
the vocabulary, and truncated-BPTT streams and windows checked against plain slicing."""
from pathlib import Path

import pytest
import torch
from httpserver import serve

from rnnkit.data import DATASETS, DataError, DataNotFoundError, download_dataset, text, tinyshakespeare
from rnnkit.data.store import sha256_of

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED = SHARED_DATA / "tinyshakespeare"
SPEC = tinyshakespeare.FILES["input.txt"]
# From shared/data/tinyshakespeare/README.md.
VOCAB = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
START = "First Citizen:\nBefore we proceed any further, hear me speak."
quiet = {"log": lambda m: None}

needs_shakespeare = pytest.mark.skipif(not (SHARED / "input.txt").is_file(),
                                       reason=f"input.txt is not in {SHARED}")


@pytest.fixture(scope="module")
def shakespeare():
    if not (SHARED / "input.txt").is_file():
        pytest.skip(f"input.txt is not in {SHARED}")
    return text.load_corpus("tinyshakespeare", SHARED_DATA)


# tinyshakespeare: download and lookup ------------------------------------------------------------------------

@needs_shakespeare
def test_download_fetches_the_verified_file_from_the_first_working_mirror(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with serve(empty) as (missing, _), serve(SHARED) as (good, requests):
        directory = download_dataset("tinyshakespeare", tmp_path / "root", mirrors=[missing, good.rstrip("/")],
                                     **quiet)
    assert requests == ["/input.txt"]
    assert directory == tmp_path / "root" / "tinyshakespeare"
    assert [p.name for p in directory.iterdir()] == ["input.txt"]
    assert sha256_of(directory / "input.txt") == SPEC.sha256
    assert (directory / "input.txt").stat().st_size == SPEC.size
    with serve(SHARED) as (good, requests):  # a verified copy is kept without a request
        assert tinyshakespeare.download(tmp_path / "root", mirrors=[good], **quiet) == directory
    assert requests == []


@needs_shakespeare
def test_download_refuses_a_corrupt_copy_and_leaves_nothing(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    data = (SHARED / "input.txt").read_bytes()
    (bad / "input.txt").write_bytes(data[:1000] + b"X" + data[1001:])
    with serve(bad) as (url, _), pytest.raises(DataError, match="sha256 mismatch"):
        tinyshakespeare.download(tmp_path / "root", mirrors=[url], **quiet)
    assert list((tmp_path / "root" / "tinyshakespeare").iterdir()) == []


def test_download_rejects_a_string_of_mirrors(tmp_path):
    with pytest.raises(ValueError, match="mirrors must be a list.*'http://x/'"):
        tinyshakespeare.download(tmp_path, mirrors="http://x/", **quiet)


def test_registered_with_real_mirror_bases():
    assert DATASETS["tinyshakespeare"] is tinyshakespeare.download
    assert all(url.startswith("https://") and url.endswith("/tinyshakespeare/") for url in tinyshakespeare.MIRRORS)


@needs_shakespeare
def test_load_from_the_data_dir_or_its_folder(shakespeare):
    assert text.load_corpus("tinyshakespeare", SHARED) == shakespeare
    assert len(shakespeare) == SPEC.size and shakespeare.startswith(START)  # all ASCII: a byte is a character
    assert shakespeare.count("\n") == 40000
    assert text.load_corpus("tinyshakespeare", SHARED, max_chars=len(START)) == START


def test_load_finds_rnnkit_data_and_says_where_it_looked(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError) as info:
        text.load_corpus("tinyshakespeare", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "tinyshakespeare" / "input.txt") in message and str(tmp_path / "input.txt") in message
    assert "rnnkit data download tinyshakespeare" in message
    (tmp_path / "input.txt").write_bytes(b"To be,\r\nor not.\r\n")
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path))
    assert text.load_corpus("tinyshakespeare") == "To be,\nor not.\n"


def test_load_corpus_rejects_unknown_names_and_bad_caps():
    with pytest.raises(ValueError, match="unknown corpus 'ptb'; known: stdlib, tinyshakespeare"):
        text.load_corpus("ptb")
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match=f"max_chars must be a positive integer or None, got {bad!r}"):
            text.load_corpus("stdlib", max_chars=bad)


# the stdlib corpus -------------------------------------------------------------------------------------------

def test_stdlib_corpus_is_deterministic_python_source_within_the_cap():
    a = text.load_corpus("stdlib", max_chars=1_000_000)
    assert a == text.load_corpus("stdlib", max_chars=1_000_000)
    assert 0 < len(a) <= 1_000_000 and "def " in a and "\n# file: " in a
    assert "site-packages" not in "".join(line for line in a.splitlines() if line.startswith("# file: "))
    smaller = text.load_corpus("stdlib", max_chars=100_000)
    assert len(smaller) < len(a) and a.startswith(smaller)  # whole files in the same order: a prefix
    assert a[len(smaller):].startswith("\n# file: ")
    assert len(text.load_corpus("stdlib")) <= text.STDLIB_MAX_CHARS


def fake_stdlib(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "lib"
    files = {"b.py": "B = 2\r\n", "a.py": "A = 1\n", "pkg/__init__.py": "", "pkg/m.py": "def m(): pass\n",
             "notes.txt": "not python", "site-packages/x.py": "X", "test/t.py": "T", "pkg/tests/t.py": "T",
             "idlelib/i.py": "I", "lib2to3/l.py": "L"}
    for name, body in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(body, newline="")
    (root / "latin.py").write_bytes(b"# -*- coding: latin-1 -*-\nS = '\xe9'\n")
    monkeypatch.setattr(text.sysconfig, "get_paths", lambda: {"stdlib": str(root)})
    return root


def test_stdlib_corpus_takes_whole_sorted_files_and_counts_undecodable_ones(tmp_path, monkeypatch):
    fake_stdlib(tmp_path, monkeypatch)
    full = "\n# file: a.py\nA = 1\n" "\n# file: b.py\nB = 2\n" "\n# file: pkg/m.py\ndef m(): pass\n"
    assert text.stdlib_corpus(None) == (full, 3, 1)
    assert text.stdlib_corpus(len(full) - 1) == (full[:full.index("\n# file: pkg")], 2, 1)
    with pytest.raises(ValueError, match=r"max_chars must be at least the size of the first file, a\.py \(20 "):
        text.stdlib_corpus(19)


# read_text_file ----------------------------------------------------------------------------------------------

def test_read_text_file_normalises_line_ends_and_drops_a_bom(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes("\ufeffé\r\nb\rc\n".encode())
    assert text.read_text_file(path) == "é\nb\rc\n"  # a lone \r is kept: it is not a Windows line end


def test_read_text_file_names_the_first_bad_byte(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(b"ab\ncd\xffef\xfe")
    with pytest.raises(DataError, match=rf"^{path} is not valid UTF-8: byte 0xff at offset 5 \(line 2"):
        text.read_text_file(path)
    path.write_bytes("é".encode()[:1] + b"z")  # a truncated two-byte sequence
    with pytest.raises(DataError, match=r"byte 0xc3 at offset 0"):
        text.read_text_file(path)


def test_read_text_file_rejects_empty_blank_and_missing_files(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=rf"^{path} is empty$"):
        text.read_text_file(path)
    path.write_bytes(b" \r\n\t\n")
    with pytest.raises(DataError, match=rf"^{path} holds only whitespace \(4 characters\)$"):
        text.read_text_file(path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing.txt")):
        text.read_text_file(tmp_path / "missing.txt")


# Vocabulary --------------------------------------------------------------------------------------------------

@needs_shakespeare
def test_vocabulary_round_trips_shakespeare(shakespeare):
    vocab = text.Vocabulary.from_text(shakespeare)
    assert len(vocab) == 65 and "".join(vocab.chars) == VOCAB
    ids = vocab.encode(shakespeare)
    assert ids.dtype == torch.int64 and ids.shape == (len(shakespeare),)
    assert ids[:5].tolist() == [vocab.chars.index(ch) for ch in "First"]
    assert vocab.decode(ids) == shakespeare
    assert text.Vocabulary.from_list(vocab.to_list()).encode(shakespeare).equal(ids)


def test_vocabulary_ids_follow_the_given_order():
    vocab = text.Vocabulary.from_list(["z", "é", "a", "\U0001f600"])
    assert vocab.encode("aé\U0001f600z").tolist() == [2, 1, 3, 0]
    assert vocab.decode(torch.tensor([3, 0])) == "\U0001f600z" and vocab.decode([]) == ""
    assert vocab.encode("").shape == (0,) and "é" in vocab and "b" not in vocab and "za" not in vocab
    assert text.Vocabulary.from_text("banana").chars == ["a", "b", "n"]


def test_encode_names_the_unknown_characters():
    vocab = text.Vocabulary.from_text("abc")
    assert vocab.unknown("xaxyb\n") == ["x", "y", "\n"]
    with pytest.raises(ValueError) as info:
        vocab.encode("abxcxy\n")
    assert str(info.value) == ("text has 3 distinct character(s) not in the vocabulary of 3, 4 occurrence(s) in "
                               "all: 'x' (first at 2), 'y' (first at 5), '\\n' (first at 6)")
    with pytest.raises(ValueError, match=r"7 distinct.*'h' \(first at 4\) and 2 more$"):
        vocab.encode("defghij")


def test_decode_rejects_ids_out_of_range():
    vocab = text.Vocabulary.from_text("abc")
    for bad in ([0, 3], [-1]):
        with pytest.raises(ValueError, match=rf"id {bad[-1]} at position {len(bad) - 1} is out of range 0..2"):
            vocab.decode(bad)
    with pytest.raises(ValueError, match=r"ids must be 1-D, got a tensor of shape \(1, 2\)"):
        vocab.decode(torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(TypeError):
        vocab.decode([1.0])


@pytest.mark.parametrize("chars, problem", [
    (["a", "bc"], r"chars\[1\] must be a single character, got 'bc'"),
    (["a", ""], r"chars\[1\] must be a single character, got ''"),
    (["a", 1], r"chars\[1\] must be a single character, got 1"),
    (["a", "b", "a"], r"must not repeat a character; 'a' appears more than once"),
    ([], r"at least one character"),
    ("abc", r"chars must be a list of single characters, got str 'abc'"),
])
def test_from_list_validates(chars, problem):
    with pytest.raises(ValueError, match=problem):
        text.Vocabulary.from_list(chars)


# split_text, streams, Windows --------------------------------------------------------------------------------

def test_split_text_keeps_the_last_fraction_for_validation():
    assert text.split_text("abcdefghij", 0.2) == ("abcdefgh", "ij")
    train, val = text.split_text("x" * 95 + "y" * 5 + "z" * 900)
    assert train == "x" * 95 + "y" * 5 + "z" * 800 and val == "z" * 100
    with pytest.raises(ValueError, match="10 characters with val_fraction=0.1 splits into 9 training and 1 "):
        text.split_text("abcdefghij")
    with pytest.raises(ValueError, match="3 training and 1 validation"):
        text.split_text("abcd", 0.25)
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match=f"val_fraction must be in \\(0, 1\\), got {bad}"):
            text.split_text("abcdefghij", bad)


def test_streams_are_contiguous_slices_and_drop_the_tail():
    ids = torch.arange(23)
    s = text.streams(ids, 4)
    assert s.shape == (4, 5)
    for b in range(4):
        assert s[b].equal(ids[b * 5:(b + 1) * 5])
    assert text.streams(ids, 11).shape == (11, 2) and text.streams(ids, 1).equal(ids.view(1, 23))


def test_streams_errors():
    with pytest.raises(ValueError, match=r"23 ids cannot make 12 streams of at least 2 ids each \(len // "):
        text.streams(torch.arange(23), 12)
    with pytest.raises(ValueError, match="num_streams must be a positive integer, got 0"):
        text.streams(torch.arange(23), 0)
    with pytest.raises(ValueError, match=r"ids must be a 1-D tensor, got Tensor of shape \(2, 3\)"):
        text.streams(torch.zeros(2, 3), 1)


@pytest.mark.parametrize("n, bptt, lengths", [(11, 5, [5, 5]), (12, 5, [5, 5, 1]), (2, 3, [1]), (7, 1, [1] * 6)])
def test_windows_cover_every_transition_once(n, bptt, lengths):
    s = torch.randint(0, 50, (3, n))
    windows = text.Windows(s, bptt)
    assert len(windows) == len(lengths)
    items = list(windows)  # iterates through __getitem__ until IndexError
    assert [x.shape for x, _ in items] == [(3, length) for length in lengths]
    assert torch.cat([x for x, _ in items], dim=1).equal(s[:, :-1])
    assert torch.cat([y for _, y in items], dim=1).equal(s[:, 1:])
    loader = torch.utils.data.DataLoader(windows, batch_size=None)
    assert all(x.equal(a) and y.equal(b) for (x, y), (a, b) in zip(loader, items, strict=True))
    assert windows[-1][0].equal(items[-1][0])


def test_windows_shard_by_stream():
    s = torch.arange(5 * 9).view(5, 9)
    shards = [text.Windows(s, 4).shard(rank, 2) for rank in range(2)]
    assert shards[0].streams.equal(s[0::2]) and shards[1].streams.equal(s[1::2])
    assert len(shards[0]) == len(shards[1]) == 2
    with pytest.raises(ValueError, match="5 streams cannot be shared among 6 processes"):
        text.Windows(s, 4).shard(0, 6)
    with pytest.raises(ValueError, match="rank must be in 0..world-1 = 0..1, got 2"):
        text.Windows(s, 4).shard(2, 2)


def test_windows_errors():
    with pytest.raises(ValueError, match=r"streams must be a \(B, N\) tensor with B >= 1 and N >= 2, got shape \(3, 1"):
        text.Windows(torch.zeros(3, 1, dtype=torch.long), 5)
    with pytest.raises(ValueError, match=r"got shape \(10,\)"):
        text.Windows(torch.arange(10), 5)
    with pytest.raises(ValueError, match="bptt must be a positive integer, got 0"):
        text.Windows(torch.zeros(3, 4, dtype=torch.long), 0)
    with pytest.raises(IndexError, match="window 2 is out of range for 2 windows"):
        text.Windows(torch.zeros(3, 4, dtype=torch.long), 2)[2]
