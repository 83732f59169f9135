"""`rnnkit train ... --resume`: the original command repeated with --resume is accepted (its options have
the saved values); an option that would change the saved run is refused, naming the old and new values."""
import json
import os
from pathlib import Path

import pytest

from clirun import rnnkit
from rnnkit.training import run

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"MNIST not found in {DATA}")
ORIGINAL = ["--data-dir", str(DATA), "--hidden", "8", "--limit-train-batches", "2", "--limit-eval-batches", "1",
            "--batch-size", "16", "--seed", "3", "--no-progress", "--patience", "0"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(run.RUN_DIR_ENV, raising=False)


def trained(out: Path, epochs: int) -> Path:
    """`out` after the original command ran for `epochs` epochs (the run-directory variable it set cleared)."""
    code, _, err = rnnkit("train", "mnist", "--out", out, *ORIGINAL, "--max-epochs", str(epochs))
    assert code == 0, err
    os.environ.pop(run.RUN_DIR_ENV, None)
    return out


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    return trained(tmp_path_factory.mktemp("resume") / "run", 1)


def test_the_original_command_repeated_with_resume_continues_the_run(tmp_path):
    out = trained(tmp_path / "run", 1)
    last = out / "checkpoints" / "last.ckpt"
    code, _, err = rnnkit("train", "mnist", "--out", out, *ORIGINAL, "--max-epochs", "2", "--resume")
    assert code == 0, err
    assert run.read_checkpoint(last)["global_step"] == 4  # two epochs of two batches: it went on


@pytest.mark.parametrize("flags, named", [
    (["--seed", "4"], "--seed 4 (the run has 3)"),
    (["--hidden", "16"], "--hidden 16 (the run has 8)"),
    (["--limit-train-batches", "3"], "--limit-train-batches 3.0 (the run has 2.0)"),
    (["--cell", "gru"], "--cell 'gru' (the run has 'lstm')"),
])
def test_resume_refuses_a_changed_option_naming_old_and_new(one_epoch, flags, named):
    last = one_epoch / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    code, _, err = rnnkit("train", "mnist", "--out", one_epoch, *ORIGINAL, *flags, "--resume")
    assert code == 2 and named in err and "Traceback" not in err, err
    assert "may change" in err and err.strip().count("\n") == 0
    assert last.read_bytes() == before


def test_resume_with_fewer_epochs_than_already_trained_is_refused_in_one_line(tmp_path):
    out = trained(tmp_path / "run", 3)
    last = out / "checkpoints" / "last.ckpt"
    assert run.epochs_done(run.read_checkpoint(last)) == 2  # the third is finished on resume (Lightning's count)
    before = last.read_bytes()
    code, _, err = rnnkit("train", "mnist", "--out", out, *ORIGINAL, "--max-epochs", "1", "--resume")
    assert code == 2 and "Traceback" not in err and err.strip().count("\n") == 0, err
    assert "has already trained 2 epochs, more than --max-epochs 1" in err
    assert last.read_bytes() == before


def test_a_run_moved_to_another_directory_resumes_with_its_checkpoints_where_they_are_now(tmp_path):
    first = trained(tmp_path / "first", 1)
    moved = tmp_path / "moved"
    first.rename(moved)
    code, _, err = rnnkit("train", "mnist", "--out", moved, *ORIGINAL, "--max-epochs", "2", "--resume")
    assert code == 0 and "dirpath has changed" not in err, err
    metrics = json.loads((moved / "metrics.json").read_text())
    assert (moved / metrics["best_checkpoint"]).is_file() and not first.exists()
    state = next(v for k, v in run.read_checkpoint(moved / "checkpoints" / "last.ckpt")["callbacks"].items()
                 if k.startswith("_FiniteBest"))
    assert Path(state["best_model_path"]).parent == moved / "checkpoints"
    assert all(Path(p).parent == moved / "checkpoints" for p in state["best_k_models"])
