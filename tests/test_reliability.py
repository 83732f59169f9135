"""Crash safety: a run killed with SIGKILL in the middle of an epoch resumes to exactly the run it would
have been; checkpoints are replaced atomically; a non-finite model never becomes the best checkpoint."""
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rnnkit.training import run

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COMMON = ["--hidden", "16", "--no-progress", "--accelerator", "cpu", "--seed", "3"]
MNIST = ["mnist", "--data-dir", str(DATA), "--batch-size", "32", "--limit-train-batches", "12",
         "--limit-eval-batches", "2", "--max-epochs", "2", "--dropout", "0.2", "--layers", "2", *COMMON]
CHARLM = ["charlm", "--max-chars", "12000", "--bptt", "25", "--batch-size", "4", "--embedding", "8",
          "--sample-length", "0", "--max-epochs", "2", "--dropout", "0.2", *COMMON]

# Runs `rnnkit train` in a fresh process that SIGKILLs itself right after training step KILL_AT: no
# handler, no cleanup, like a machine losing power or the OOM killer.
KILLER = textwrap.dedent("""
    import os, signal, sys
    from lightning.pytorch.callbacks import Callback
    from rnnkit import cli
    from rnnkit.training import run

    class Kill(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == int(os.environ["KILL_AT"]):
                os.kill(os.getpid(), signal.SIGKILL)

    build = run.build_trainer
    def build_and_arm(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.callbacks.append(Kill())
        return trainer
    run.build_trainer = build_and_arm
    sys.exit(cli.main(sys.argv[1:]))
""")


def _rnnkit(*argv, kill_at=None, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    env.pop(run.RUN_DIR_ENV, None)
    if kill_at is None:
        return subprocess.run([sys.executable, "-m", "rnnkit", *argv], env=env, cwd=cwd, capture_output=True, text=True)
    env["KILL_AT"] = str(kill_at)
    return subprocess.run([sys.executable, "-c", KILLER, *argv], env=env, cwd=cwd, capture_output=True, text=True)


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _step_rows(out: Path) -> list[tuple]:
    with open(out / "metrics.csv", newline="") as f:
        return [(r["step"], r["train_loss_step"], r["grad_norm"]) for r in csv.DictReader(f) if r["train_loss_step"]]


@pytest.mark.parametrize("task, every, kill_at, steps_per_epoch", [
    pytest.param(MNIST, 5, 17, 12, id="mnist"),
    pytest.param(CHARLM, 4, 6, None, id="charlm"),
])
def test_sigkill_mid_epoch_then_resume_ends_exactly_like_an_uninterrupted_run(tmp_path, task, every, kill_at,
                                                                               steps_per_epoch):
    if task is MNIST and not (DATA / "mnist").is_dir():
        pytest.skip(f"MNIST not found in {DATA}")
    flags = [*task, "--checkpoint-every", str(every)]
    full = _rnnkit("train", *flags, "--out", str(tmp_path / "full"), cwd=tmp_path)
    assert full.returncode == 0, full.stderr

    killed = _rnnkit("train", *flags, "--out", str(tmp_path / "part"), kill_at=kill_at, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    saved = _state(tmp_path / "part/checkpoints/last.ckpt")
    assert saved["global_step"] == kill_at - kill_at % every  # the last step checkpoint before the kill
    epoch_steps = steps_per_epoch or _state(tmp_path / "full/checkpoints/last.ckpt")["global_step"] // 2
    assert saved["global_step"] % epoch_steps != 0, "the kill must land in the middle of an epoch"

    resumed = _rnnkit("train", task[0], "--out", str(tmp_path / "part"), "--resume", "--no-progress",
                      cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a, b = _state(tmp_path / "full/checkpoints/last.ckpt"), _state(tmp_path / "part/checkpoints/last.ckpt")
    assert a["global_step"] == b["global_step"]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    for name in ("best.ckpt",):
        a, b = _state(tmp_path / "full/checkpoints" / name), _state(tmp_path / "part/checkpoints" / name)
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("full", "part"))
    assert (ma["val"], ma["test"], ma["steps"], ma["epochs"]) == (mb["val"], mb["test"], mb["steps"], mb["epochs"])
    # The log of the resumed run has every step once, with the values of the uninterrupted run.
    assert _step_rows(tmp_path / "part") == _step_rows(tmp_path / "full")


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    io, path = run.AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"weights": torch.ones(3)}, path)
    before = path.read_bytes()

    def dies_halfway(obj, f):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"weights": torch.zeros(3)}, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.ckpt"]  # no temporary file left


@pytest.mark.parametrize("score, weight, expected", [
    (0.5, 1.0, True), (float("nan"), 1.0, False), (float("inf"), 1.0, False), (0.5, float("nan"), False)])
def test_the_best_checkpoint_is_never_a_non_finite_model(tmp_path, score, weight, expected):
    best = run._FiniteBest(dirpath=tmp_path, filename="best", monitor="val_loss", save_top_k=1)
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = weight
    trainer = SimpleNamespace(lightning_module=model)
    assert best.check_monitor_top_k(trainer, torch.tensor(score)) is expected


@pytest.mark.filterwarnings("ignore:.*exists and is not empty")  # the run's own directory, on purpose
def test_a_resumed_log_drops_the_rows_logged_after_the_checkpoint(tmp_path):
    rows = [["epoch", "step", "train_loss_step"]] + [["0", str(s), str(s / 10)] for s in range(8)]
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    logger = run._AppendingCSVLogger(tmp_path, name="", version="", resumed_step=5)
    logger.log_metrics({"train_loss_step": 9.0, "epoch": 0}, step=5)
    logger.save()
    with open(tmp_path / "metrics.csv", newline="") as f:
        steps = [r["step"] for r in csv.DictReader(f)]
    assert steps == ["0", "1", "2", "3", "4", "5"]
