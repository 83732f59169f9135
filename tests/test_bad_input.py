"""The bad-input sweep: every command and loader, given broken files, wrong flags or the wrong
checkpoint, answers with one line naming the problem, exit code 2 (usage) or 1 (runtime), no
traceback, and changes nothing that was saved before."""
import gzip
import hashlib
from pathlib import Path

import pytest
import torch

from clirun import rnnkit

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MNIST_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
               "t10k-labels-idx1-ubyte.gz"]
TINY = ["--hidden", "8", "--max-epochs", "1", "--limit-train-batches", "2", "--limit-eval-batches", "1",
        "--no-progress"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """What a user has saved: checkpoints of two tasks and a notes file; no failing command may touch them."""
    root = tmp_path_factory.mktemp("saved")
    code, _, err = rnnkit("train", "charlm", "--max-chars", "4000", "--bptt", "16", "--batch-size", "4",
                          "--sample-length", "0", *TINY, "--out", root / "charlm")
    assert code == 0, err
    old = torch.load(root / "charlm/checkpoints/best.ckpt", weights_only=True)
    old["rnnkit"]["format"] = 99
    torch.save(old, root / "future.ckpt")
    (root / "notes.txt").write_text("mine")
    return root


def _snapshot(root: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _mnist_dir(tmp: Path, broken: str, content: bytes) -> Path:
    """A data directory with the real MNIST files, one of them replaced by `content`."""
    mnist = tmp / "data" / "mnist"
    mnist.mkdir(parents=True)
    for name in MNIST_FILES:
        (mnist / name).symlink_to(DATA / "mnist" / name)
    (mnist / broken).unlink()
    (mnist / broken).write_bytes(content)
    return tmp / "data"


def _labels(transform) -> bytes:
    return transform((DATA / "mnist" / "train-labels-idx1-ubyte.gz").read_bytes())


def _flip(raw: bytes) -> bytes:
    data = bytearray(raw)
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


def _magic(raw: bytes) -> bytes:
    plain = gzip.decompress(raw)
    return gzip.compress((2050).to_bytes(4, "big") + plain[4:])


def _mnist_case(broken, transform, message):
    def setup(tmp, saved):
        data = _mnist_dir(tmp, broken, _labels(transform))
        return ["train", "mnist", "--data-dir", data, *TINY, "--out", tmp / "run"], message
    return setup


def _text_case(content: bytes, message):
    def setup(tmp, saved):
        (tmp / "corpus.txt").write_bytes(content)
        return ["train", "charlm", "--text", tmp / "corpus.txt", *TINY, "--out", tmp / "run"], message
    return setup


def _argv_case(*argv, message):
    def setup(tmp, saved):
        return [str(a).format(saved=saved, tmp=tmp) for a in argv], message
    return setup


def _changed_data_case(tmp, saved):
    """A model trained on a text file, evaluated after the file changed: its vocabulary no longer fits."""
    (tmp / "corpus.txt").write_text("abcabcabd " * 300)
    code, _, err = rnnkit("train", "charlm", "--text", tmp / "corpus.txt", "--bptt", "8", "--batch-size", "4",
                          "--sample-length", "0", *TINY, "--out", tmp / "lm")
    assert code == 0, err
    (tmp / "corpus.txt").write_text("xyzxyzxyw " * 300)
    return ["eval", tmp / "lm/checkpoints/best.ckpt"], "differ from the model's training data: its vocab is not"


def _file_case(name: str, content: str, argv: list, message: str):
    """A command reading a file `name` with `content` ({tmp} in argv is the test's directory)."""
    def setup(tmp, saved):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(content)
        return [str(a).format(tmp=tmp) for a in argv], message
    return setup


def _parallel_case(tmp, saved):
    """Multi30k whose German side has one line fewer than its English side."""
    corpus = tmp / "data" / "multi30k"
    corpus.mkdir(parents=True)
    for split in ("train", "val", "test_2016_flickr"):
        (corpus / f"{split}.de.gz").write_bytes(gzip.compress(b"ein hund .\n" * 4))
        (corpus / f"{split}.en.gz").write_bytes(gzip.compress(b"a dog .\n" * 5))
    return (["train", "translate", "--data-dir", tmp / "data", *TINY, "--out", tmp / "run"],
            "parallel files differ in line count")


GOOD_CONLLU = "1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_\n2\tend\tend\tNOUN\tNN\t_\t0\troot\t_\t_\n\n"
CHARLM_CKPT = "{saved}/charlm/checkpoints/best.ckpt"

# id -> (exit code, setup(tmp, saved) -> (argv, the message the error must contain))
CASES = {
    # data files
    "mnist truncated gzip": (1, _mnist_case("train-labels-idx1-ubyte.gz", lambda r: r[: len(r) // 2],
                                            "train-labels-idx1-ubyte.gz: gzip data is truncated")),
    "mnist corrupt gzip": (1, _mnist_case("train-labels-idx1-ubyte.gz", _flip, "train-labels-idx1-ubyte.gz")),
    "mnist wrong IDX magic": (1, _mnist_case("train-labels-idx1-ubyte.gz", _magic, "IDX magic number 2050")),
    "mnist empty file": (1, _mnist_case("train-labels-idx1-ubyte.gz", lambda r: b"", "too short for an IDX header")),
    "text undecodable": (1, _text_case(b"good text\n\xff\xfe bad", "is not valid UTF-8: byte 0xff at offset 10")),
    "text empty": (1, _text_case(b"", "corpus.txt is empty")),
    "text missing": (1, _argv_case("train", "charlm", "--text", "{tmp}/none.txt", "--out", "{tmp}/run",
                                   message="none.txt does not exist")),
    "conllu wrong column count": (1, _file_case(
        "bad.conllu", "1\tThe\tthe\tDET\n", ["train", "pos", "--train-file", "{tmp}/bad.conllu", "--dev-file",
                                              "{tmp}/bad.conllu", "--test-file", "{tmp}/bad.conllu", *TINY,
                                              "--out", "{tmp}/run"], "bad.conllu: line 1")),
    "conllu bad id": (1, _file_case(
        "bad.conllu", GOOD_CONLLU.replace("2\tend", "x\tend"),
        ["train", "pos", "--train-file", "{tmp}/bad.conllu", "--dev-file", "{tmp}/bad.conllu", "--test-file",
         "{tmp}/bad.conllu", *TINY, "--out", "{tmp}/run"], "bad.conllu: line 2")),
    "tsv row without a label": (1, _file_case(
        "data/sst2/train.tsv", "sentence\tlabel\ngood film\t1\nno label here\n",
        ["train", "sentiment", "--data-dir", "{tmp}/data", *TINY, "--out", "{tmp}/run"], "train.tsv: line 3 has no label")),
    "csv non-numeric value": (1, _file_case(
        "series.csv", "t,y\n1,3\n2,4\n3,five\n", ["train", "forecast", "--csv", "{tmp}/series.csv", "--target", "y",
                                                   *TINY, "--out", "{tmp}/run"], "series.csv")),
    "parallel corpora of different lengths": (1, _parallel_case),
    "csv unknown column": (1, _file_case(
        "series.csv", "t,y\n1,3\n2,4\n", ["train", "forecast", "--csv", "{tmp}/series.csv", "--target", "sales",
                                           *TINY, "--out", "{tmp}/run"], "has no column 'sales'; its columns are: t, y")),
    # flags and values
    "unknown flag": (2, _argv_case("train", "charlm", "--warp", message="unrecognized arguments: --warp")),
    "bad value": (2, _argv_case("train", "charlm", "--bptt", "0", message="--bptt must be >= 1; got 0")),
    "bad choice": (2, _argv_case("train", "charlm", "--corpus", "wiki", message="invalid choice: 'wiki'")),
    "bad sample value": (2, _argv_case("sample", CHARLM_CKPT, "--temperature", "-1",
                                       message="--temperature must be a finite number >= 0")),
    "bad export format": (2, _argv_case("export", CHARLM_CKPT, "--format", "zip", "--out", "{tmp}/x",
                                        message="invalid choice: 'zip'")),
    # paths
    "missing checkpoint": (1, _argv_case("eval", "{tmp}/none.ckpt", message="checkpoint not found")),
    "not a checkpoint": (1, _argv_case("sample", "{saved}/notes.txt", message="is not a checkpoint rnnkit can load")),
    "unwritable output directory": (1, _argv_case("train", "charlm", "--out", "{saved}/notes.txt/run",
                                                  message="cannot write to the output directory")),
    "output directory holds a run": (2, _argv_case("train", "charlm", "--out", "{saved}/charlm",
                                                   message="is not empty (it may hold a previous run)")),
    "export over saved files": (2, _argv_case("export", CHARLM_CKPT, "--out", "{saved}",
                                              message="already exists and is not an empty directory")),
    "missing run directory": (1, _argv_case("clipping", "{tmp}/nowhere", message="is not a finished rnnkit run")),
    # checkpoints from elsewhere
    "checkpoint of another task": (2, _argv_case("predict", CHARLM_CKPT, "x.png",
                                                 message="task 'charlm' has no predict command")),
    "data changed since training": (1, _changed_data_case),
    "checkpoint of another version": (1, _argv_case("eval", "{saved}/future.ckpt",
                                                    message="has checkpoint format 99; this rnnkit reads format 1")),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_one_line_and_changes_nothing(case, saved, tmp_path):
    if "mnist" in case and not (DATA / "mnist").is_dir():
        pytest.skip(f"MNIST not found in {DATA}")
    expected_code, setup = CASES[case]
    argv, message = setup(tmp_path, saved)
    before = _snapshot(saved)
    code, out, err = rnnkit(*argv)
    assert code == expected_code, err
    assert message in err, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) <= 2 and lines[0].startswith("rnnkit") and "error: " in lines[0], err
    assert _snapshot(saved) == before
    assert not list(tmp_path.glob("run/checkpoints/*.ckpt")) and not (tmp_path / "run/metrics.json").exists()
