"""Fuzzing every data parser: on random bytes and on real files with bytes flipped, cut or inserted,
a parser returns or raises a ValueError (rnnkit's DataError is one) that names the file; it never
fails with another exception and never hangs."""
import gzip
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnkit.data import mnist, parallel, sentences, text, timeseries, treebank

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
SECONDS = 10  # per call: a parser that takes longer on a few kilobytes is taken to hang


def _labels_sample() -> bytes:
    """A real IDX file, kept small: the MNIST test labels, gzipped (4.5 kB)."""
    return (DATA / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()


def _images_sample() -> bytes:
    """A valid IDX image file of 3 real digits (the header rewritten to say so), gzipped."""
    raw = gzip.decompress((DATA / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes())
    return gzip.compress(raw[:4] + (3).to_bytes(4, "big") + raw[8:16] + raw[16:16 + 3 * 784])


def _text_sample() -> bytes:
    return (DATA / "tinyshakespeare" / "input.txt").read_bytes()[:3000]


def _head(relative: str, lines: int, gz: bool = False):
    """The first lines of a shared data file, as bytes (gzipped again if the file is)."""
    def sample() -> bytes:
        raw = (DATA / relative).read_bytes()
        plain = gzip.decompress(raw) if gz else raw
        head = b"".join(plain.splitlines(keepends=True)[:lines])
        return gzip.compress(head) if gz else head
    return sample


# name -> (parse(path), the suffix its files have, a valid sample's bytes). Every parser of rnnkit.data.
PARSERS = {
    "mnist idx labels": (mnist.read_idx, ".gz", _labels_sample),
    "mnist idx images": (mnist.read_idx, ".gz", _images_sample),
    "text file": (text.read_text_file, ".txt", _text_sample),
    "conllu": (treebank.read_conllu, ".conllu", _head("ud_english_ewt/en_ewt-ud-dev.conllu", 120)),
    "labelled sentences": (lambda p: sentences.read_labelled(p, header=True), ".tsv", _head("sst2/dev.tsv", 40)),
    "parallel text": (parallel.read_lines, ".gz", _head("multi30k/val.de.gz", 40, gz=True)),
    "time-series csv": (lambda p: timeseries.read_csv(p, ["Passengers"], "Month"), ".csv",
                        _head("airline_passengers/airline-passengers.csv", 40)),
}


def _call(parse, path):
    """parse(path) in a thread, failing the test if it runs longer than SECONDS."""
    outcome = {}

    def target():
        try:
            outcome["value"] = parse(path)
        except BaseException as e:  # noqa: B036 - handed back to the test below
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(SECONDS)
    assert not thread.is_alive(), f"the parser still runs after {SECONDS} s on {path.stat().st_size} bytes"
    error = outcome.get("error")
    if error is not None:
        assert isinstance(error, ValueError), f"the parser raised {type(error).__name__}: {error}"
        assert str(path.name) in str(error), f"the error does not name the file: {error}"


@st.composite
def mutations(draw, sample: bytes):
    """A valid sample with a few random edits: flipped bytes, a cut, an insertion."""
    data = bytearray(sample)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:]
    return bytes(data)


needs_data = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"data not found in {DATA}")


@needs_data
@pytest.mark.parametrize("name", PARSERS)
def test_the_unmutated_sample_parses(name, tmp_path):
    parse, suffix, sample = PARSERS[name]
    path = tmp_path / f"sample{suffix}"
    path.write_bytes(sample())
    parse(path)


@needs_data
@pytest.mark.parametrize("name", PARSERS)
def test_random_bytes_are_rejected_cleanly(name, tmp_path):
    parse, suffix, _ = PARSERS[name]

    @SETTINGS
    @given(st.binary(max_size=2048))
    def check(data):
        path = tmp_path / f"random{suffix}"
        path.write_bytes(data)
        _call(parse, path)

    check()


@needs_data
@pytest.mark.parametrize("name", PARSERS)
def test_mutated_files_are_parsed_or_rejected_cleanly(name, tmp_path):
    parse, suffix, sample = PARSERS[name]
    valid = sample()

    @SETTINGS
    @given(mutations(valid))
    def check(data):
        path = tmp_path / f"mutated{suffix}"
        path.write_bytes(data)
        _call(parse, path)

    check()
