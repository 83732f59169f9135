"""One-to-many digit generation: the generator against torch.nn (teacher forcing and the fed-back loop), and
the recipe end to end (train, sample to text and PNG, recognition by an MNIST classifier)."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clirun import rnnkit
from rnnkit.models import make_rnn
from rnnkit.models.generator import RowGenerator
from rnnkit.training import run
from rnnkit.training.config import RNNConfig

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_mnist = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="MNIST not in ../shared/data")


def tiny(cell="lstm", classes=3, rows=5, width=4):
    torch.manual_seed(0)
    model = RowGenerator(make_rnn(RNNConfig(cell=cell, hidden=6), width + classes), classes, rows, width)
    ref = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](width + classes, 6, batch_first=True)
    ref.load_state_dict(model.rnn.state_dict())
    return model, ref


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_teacher_forcing_reads_the_true_previous_row_and_the_label(cell):
    model, ref = tiny(cell)
    labels, images = torch.tensor([0, 2, 1]), torch.rand(3, 5, 4)
    logits, loss = model(labels, images)
    previous = torch.cat([torch.zeros(3, 1, 4), images[:, :-1]], dim=1)           # row t-1, zeros first
    x = torch.cat([previous, F.one_hot(labels, 3).float().unsqueeze(1).expand(3, 5, 3)], dim=2)
    expected = model.head(ref(x)[0])
    assert torch.allclose(logits, expected, atol=1e-6)
    assert torch.allclose(loss, F.binary_cross_entropy(torch.sigmoid(expected), images), atol=1e-5)


def test_generation_feeds_back_the_mean_row_as_a_hand_run_loop_does():
    model, ref = tiny()
    labels = torch.tensor([1, 0])
    images, logits = model.generate(labels, temperature=0.0)
    rows = torch.zeros(2, 0, 4)
    with torch.no_grad():
        for t in range(5):                       # rerun the whole prefix each step: no carried state to trust
            previous = torch.cat([torch.zeros(2, 1, 4), rows], dim=1)             # (2, t+1, 4)
            x = torch.cat([previous, F.one_hot(labels, 3).float().unsqueeze(1).expand(2, t + 1, 3)], dim=2)
            rows = torch.cat([rows, torch.sigmoid(model.head(ref(x)[0][:, -1:]))], dim=1)
    assert torch.allclose(images, rows, atol=1e-5) and torch.allclose(torch.sigmoid(logits), rows, atol=1e-5)
    assert torch.allclose(model(labels)[0], logits)                               # forward without targets generates


def test_sampled_rows_are_binary_seeded_and_fed_back():
    model, _ = tiny()
    labels = torch.tensor([0, 1, 2, 2])
    a, logits = model.generate(labels, 1.0, torch.Generator().manual_seed(5))
    b, _ = model.generate(labels, 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}
    teacher_forced, _ = model(labels, a)                  # the drawn rows were the inputs of the next steps
    assert torch.allclose(teacher_forced, logits, atol=1e-5)
    with pytest.raises(ValueError, match=r"classes in \[0, 3\).*\[5\]"):
        model.generate(torch.tensor([5]))
    with pytest.raises(ValueError, match="bidirectional"):
        RowGenerator(make_rnn(RNNConfig(bidirectional=True, hidden=4), 7), 3, 5, 4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    common = ("--data-dir", DATA, "--max-epochs", "1", "--limit-train-batches", "3", "--limit-eval-batches", "1",
              "--no-progress")
    run.os.environ.pop(run.RUN_DIR_ENV, None)
    code, _, err = rnnkit("train", "digits", "--out", root / "g", "--hidden", "16", *common)
    assert code == 0, err
    code, _, err = rnnkit("train", "mnist", "--out", root / "c", "--hidden", "8", *common)
    run.os.environ.pop(run.RUN_DIR_ENV, None)
    assert code == 0, err
    return root


@needs_mnist
def test_recipe_reports_a_grid_and_samples_digits(trained):
    assert (trained / "g/samples.png").stat().st_size > 0 and (trained / "g/mean_digits.png").is_file()
    ckpt, classifier = trained / "g/checkpoints/best.ckpt", trained / "c/checkpoints/best.ckpt"
    code, out, err = rnnkit("sample", ckpt, "--digit", "7", "--count", "2", "--temperature", "0")
    assert code == 0, err
    assert len(out.strip("\n").split("\n\n")) == 2 and all(len(d.split("\n")) == 28 for d in out.strip().split("\n\n"))
    code, out, err = rnnkit("sample", ckpt, "--digit", "3", "--count", "4", "--out", trained / "grid.png",
                            "--classifier", classifier)
    assert code == 0, err
    assert (trained / "grid.png").stat().st_size > 0
    assert "recognised as 3 by the classifier:" in out and "of 4" in out


@needs_mnist
@pytest.mark.parametrize("argv, message", [
    (["--digit", "10"], "--digit must be a class in 0..9; got 10"),
    (["--count", "0"], "--count must be >= 1; got 0"),
    (["--out", "EXISTING"], "exists; choose a new file"),
    (["--classifier", "SELF"], "must be an `rnnkit train mnist` checkpoint"),
])
def test_sample_bad_input(trained, argv, message):
    ckpt = trained / "g/checkpoints/best.ckpt"
    existing = trained / "existing.png"
    existing.write_bytes(b"mine")
    argv = [{"EXISTING": existing, "SELF": ckpt}.get(a, a) for a in argv]
    code, _, err = rnnkit("sample", ckpt, *argv)
    assert code in (1, 2) and message in err and "Traceback" not in err
    assert existing.read_bytes() == b"mine"


def test_binarised_targets_are_ink_or_not():
    from rnnkit.tasks.digits import to_targets

    images = torch.tensor([[[0, 127, 128, 255]]], dtype=torch.uint8)
    assert torch.equal(to_targets(images), images.float() / 255)
    assert to_targets(images, binarize=True).tolist() == [[[0.0, 0.0, 1.0, 1.0]]]
