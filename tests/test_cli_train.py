"""The training commands as a user meets them: help, bad input (one line, exit 2 usage / 1 runtime, no
traceback, nothing saved is touched), and `rnnkit data download` against a local HTTP server."""
import shutil
from pathlib import Path

import pytest

from clirun import rnnkit
from httpserver import serve
from rnnkit.cli import main
from rnnkit.data import mnist
from rnnkit.tasks import TASKS
from rnnkit.tasks.mnist import MNISTConfig

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_mnist = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"MNIST not found in {DATA}")


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["train", "mnist", "--help"], ["eval", "--help"],
                                  ["predict", "--help"], ["data", "download", "--help"]])
def test_every_command_explains_itself(argv):
    code, out, _ = rnnkit(*argv)
    assert code == 0 and "usage: rnnkit" in out


@pytest.mark.parametrize("argv", [["train", name, "--help"] for name in TASKS]
                         + [[command.name, "--help"] for task in TASKS.values() for command in task.commands])
def test_every_task_and_task_command_explains_itself(argv):
    """Every help text goes through argparse's %-formatting (a bare '%' in one once crashed --help)."""
    code, out, err = rnnkit(*argv)
    assert code == 0 and "usage: rnnkit" in out, err


def test_train_help_lists_every_option_with_its_default():
    _, out, _ = rnnkit("train", "mnist", "--help")
    for name in ("--cell {rnn,lstm,gru}", "--bidirectional", "--peephole", "--layer-norm", "--readout",
                 "--clip-norm", "--optimizer {adam,sgd,rmsprop,adagrad}", "--nesterov", "--l1", "--patience",
                 "--devices", "--resume", "--max-time", "--limit-train-batches"):
        assert name in out, name
    assert "(default: 1.0)" in out  # clip-norm's recipe default


@pytest.fixture
def keep(tmp_path):
    """A directory holding a user's file, which no failing command may touch."""
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    return tmp_path / "kept"


@pytest.mark.parametrize("argv, code, message", [
    (["train", "charlm2"], 2, "invalid choice: 'charlm2'"),
    (["train", "mnist", "--warp"], 2, "unrecognized arguments: --warp"),
    (["train", "mnist", "--hidden", "0"], 2, "--hidden must be >= 1; got 0"),
    (["train", "mnist", "--hidden", "big"], 2, "invalid int value: 'big'"),
    (["train", "mnist", "--cell", "gru", "--peephole"], 2, "--peephole applies to --cell lstm only; got --cell gru"),
    (["train", "mnist", "--optimizer", "lion"], 2, "invalid choice: 'lion'"),
    (["train", "mnist", "--out", "{keep}"], 2, "is not empty (it may hold a previous run)"),
    (["train", "mnist", "--out", "{keep}/notes.txt/run"], 1, "cannot write to the output directory"),
    (["train", "mnist", "--data-dir", "{tmp}/empty", "--out", "{tmp}/run"], 1, "rnnkit data download mnist"),
    (["eval", "{tmp}/none.ckpt"], 1, "checkpoint not found: "),
    (["eval", "{keep}/notes.txt"], 1, "notes.txt is not a checkpoint rnnkit can load"),
    (["predict", "{keep}/notes.txt", "x.png"], 1, "notes.txt is not a checkpoint rnnkit can load"),
    (["data", "download", "cifar"], 2, "unknown data set 'cifar'; known: mnist"),
    (["data", "upload", "mnist"], 2, "invalid choice: 'upload'"),
])
def test_bad_input_one_line_error_and_nothing_saved_changes(argv, code, message, keep, tmp_path):
    argv = [a.format(keep=keep, tmp=tmp_path) for a in argv]
    (tmp_path / "empty").mkdir(exist_ok=True)
    got, _, err = rnnkit(*argv)
    assert got == code, err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()[-1]) > 10
    assert sorted(p.name for p in keep.iterdir()) == ["notes.txt"] and (keep / "notes.txt").read_text() == "mine"


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "eval", str(tmp_path / "none.ckpt")])


@needs_mnist
def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path / "cache"))
    code, _, err = rnnkit("train", "mnist", "--out", tmp_path / "run")
    assert code == 1
    assert str(tmp_path / "cache" / "mnist") in err and "rnnkit data download mnist" in err
    assert not (tmp_path / "run" / "metrics.json").exists()


@needs_mnist
def test_predict_refuses_a_file_that_is_not_an_image(tmp_path):
    code, _, _ = rnnkit("train", "mnist", "--out", tmp_path / "run", "--data-dir", DATA, "--hidden", "8",
                        "--max-epochs", "1", "--limit-train-batches", "2", "--limit-eval-batches", "1", "--no-progress")
    assert code == 0
    (tmp_path / "digit.png").write_text("not a picture")
    code, _, err = rnnkit("predict", tmp_path / "run/checkpoints/best.ckpt", tmp_path / "digit.png")
    assert code == 1 and "digit.png is not an image" in err and "Traceback" not in err


@needs_mnist
def test_data_download_from_a_mirror_verifies_every_file(tmp_path):
    with serve(DATA / "mnist") as (url, requests):
        code, out, err = rnnkit("data", "download", "mnist", "--data-dir", tmp_path, "--mirror", url)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(mnist.FILES)
    assert len(requests) == 4 and "verified" in out
    images, labels = mnist.load("test", tmp_path)
    assert images.shape == (10000, 28, 28) and labels.bincount().tolist()[0] == 980


@needs_mnist
def test_data_download_rejects_a_corrupted_mirror_and_keeps_nothing(tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(DATA / "mnist", bad)
    name = "t10k-labels-idx1-ubyte.gz"
    raw = bytearray((bad / name).read_bytes())
    raw[100] ^= 0xFF
    (bad / name).write_bytes(bytes(raw))
    with serve(bad) as (url, _):
        code, _, err = rnnkit("data", "download", "mnist", "--data-dir", tmp_path / "data", "--mirror", url)
    assert code == 1 and name in err and mnist.FILES[name].sha256 in err
    left = sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir())
    assert name not in left and not any(n.startswith(".") for n in left)


def test_config_defaults_are_the_documented_recipe():
    cfg = MNISTConfig()
    assert (cfg.cell, cfg.hidden, cfg.layers, cfg.readout, cfg.max_epochs, cfg.clip_norm) == ("lstm", 128, 1, "last", 20, 1.0)
