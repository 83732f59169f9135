"""The training stack end to end on real MNIST (tiny model, a few batches): run outputs, clipping,
reproducibility, exact resume, checkpoints that load without executing code, eval and predict."""
import csv
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnkit.tasks.base import load_checkpoint
from rnnkit import cli
from rnnkit.tasks import TASKS, get_task
from rnnkit.tasks.mnist import read_digit
from rnnkit.training import run
from rnnkit.training.module import TaskModule

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"MNIST not found in {DATA}")
QUICK = ["--data-dir", str(DATA), "--hidden", "16", "--limit-train-batches", "4", "--limit-eval-batches", "2",
         "--batch-size", "32", "--max-epochs", "2", "--no-progress"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(run.RUN_DIR_ENV, raising=False)


def train(out: Path, *flags) -> dict:
    assert cli.main(["train", "mnist", "--out", str(out), *QUICK, *flags]) == 0
    return json.loads((out / "metrics.json").read_text())


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "mnist"
    os.environ.pop(run.RUN_DIR_ENV, None)
    result = train(out, "--clip-norm", "0.05", "--bidirectional")
    os.environ.pop(run.RUN_DIR_ENV, None)
    return out, result


def test_a_run_writes_checkpoints_logs_plots_and_metrics(trained):
    out, result = trained
    for name in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.csv", "curves.png", "clipping.png",
                 "confusion.png", "misclassified.png", "metrics.json"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert set(result["val"]) == {"val_loss", "val_acc"} and set(result["test"]) == {"test_loss", "test_acc"}
    assert result["config"]["bidirectional"] is True and result["config"]["clip_norm"] == 0.05
    assert result["epochs"] == 2 and result["steps"] == 8 and result["train_seconds"] > 0
    assert sorted(result["artifacts"]) == ["clipping.png", "confusion.png", "curves.png", "misclassified.png"]


def test_every_step_logs_the_norm_before_clipping_and_k(trained):
    out, _ = trained
    rows = [r for r in csv.DictReader(open(out / "metrics.csv")) if r["grad_norm"]]
    assert [int(r["step"]) for r in rows] == list(range(8))
    for r in rows:
        assert math.isclose(float(r["clip_ratio"]), float(r["grad_norm"]) / 0.05, rel_tol=1e-5)


def test_clipping_scales_gradients_to_tau_only_when_k_exceeds_one(monkeypatch):
    task = get_task("mnist")
    cfg = task.config_class(hidden=4, clip_norm=1.0)
    module = TaskModule(task, cfg, task.build_model(cfg, {}))
    params = list(module.model.parameters())
    for scale in (10.0, 1e-3):
        for p in params:
            p.grad = torch.full_like(p, scale)
        norm = math.sqrt(sum(p.numel() for p in params)) * scale
        module.configure_gradient_clipping(None)
        after = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params])).item()
        assert math.isclose(module._steps[-1][1]["grad_norm"].item(), norm, rel_tol=1e-5)  # before clipping
        assert math.isclose(after, min(norm, 1.0), rel_tol=1e-4)  # scaled by 1/k when k > 1, else untouched


def test_same_seed_same_run(tmp_path):
    a, b = train(tmp_path / "a", "--seed", "3"), train(tmp_path / "b", "--seed", "3")
    assert a["val"] == b["val"] and a["test"] == b["test"]
    wa, wb = weights(tmp_path / "a/checkpoints/last.ckpt"), weights(tmp_path / "b/checkpoints/last.ckpt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    train(tmp_path / "c", "--seed", "4")
    assert not torch.equal(wa["model.head.weight"], weights(tmp_path / "c/checkpoints/last.ckpt")["model.head.weight"])


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    flags = ["--dropout", "0.3", "--layers", "2", "--lr-schedule", "none", "--max-epochs", "3"]
    train(tmp_path / "full", *flags)
    assert cli.main(["train", "mnist", "--out", str(tmp_path / "part"), *QUICK, *flags[:-2], "--max-epochs", "1"]) == 0
    assert cli.main(["train", "mnist", "--out", str(tmp_path / "part"), "--resume", "--max-epochs", "3",
                     "--no-progress"]) == 0
    full, part = weights(tmp_path / "full/checkpoints/last.ckpt"), weights(tmp_path / "part/checkpoints/last.ckpt")
    assert all(torch.equal(full[k], part[k]) for k in full)
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "part/metrics.csv")) if r["train_loss_step"]]
    assert steps == list(range(12))  # the log continues; nothing of the first part is lost
    resumed = json.loads((tmp_path / "part/metrics.json").read_text())
    assert resumed["steps"] == 12 and resumed["config"]["dropout"] == 0.3


def test_resume_refuses_to_change_the_model(tmp_path, trained, capsys):
    out, _ = trained
    assert cli.main(["train", "mnist", "--out", str(out), "--resume", "--hidden", "64"]) == 2
    assert "only accelerator, checkpoint_every, data_dir, devices, max_epochs" in capsys.readouterr().err
    assert cli.main(["train", "mnist", "--out", str(tmp_path / "none"), "--resume"]) == 2


def test_eval_reproduces_the_test_metrics_of_the_run(tmp_path, capsys):
    out = tmp_path / "r"
    train(out, "--limit-eval-batches", "1.0")
    result = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert cli.main(["eval", str(out / result["best_checkpoint"]), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)["metrics"]
    assert evaluated["test_acc"] == pytest.approx(result["test"]["test_acc"], abs=1e-6)
    assert evaluated["test_loss"] == pytest.approx(result["test"]["test_loss"], rel=1e-5)


def test_checkpoint_rebuilds_the_model_from_its_saved_config(trained):
    out, _ = trained
    loaded = load_checkpoint(out / "checkpoints/best.ckpt", TASKS)
    assert loaded.cfg.bidirectional and loaded.cfg.hidden == 16 and loaded.model.rnn.bidirectional
    state = weights(out / "checkpoints/best.ckpt")
    assert torch.equal(loaded.model.head.weight, state["model.head.weight"])


def test_loading_never_executes_code_from_a_checkpoint(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": {}, "rnnkit": Payload()}, f)
    torch.save({"state_dict": {}, "rnnkit": {"format": 1, "task": "weather", "config": {}}}, tmp_path / "other.ckpt")
    torch.save({"state_dict": {}, "rnnkit": {"format": 1, "task": "charlm", "config": {}}}, tmp_path / "broken.ckpt")
    with pytest.raises(ValueError, match="not a checkpoint rnnkit can load: .*never unpickles"):
        load_checkpoint(evil, TASKS)
    assert not marker.exists()
    with pytest.raises(ValueError, match="checkpoint of task 'weather', unknown"):
        load_checkpoint(tmp_path / "other.ckpt", TASKS)
    with pytest.raises(ValueError, match="its 'charlm' model cannot be rebuilt from the saved config and weights"):
        load_checkpoint(tmp_path / "broken.ckpt", TASKS)


def test_predict_reads_digits_like_the_test_set(trained, tmp_path, capsys):
    from PIL import Image

    from rnnkit.data import mnist

    out, _ = trained
    images, _ = mnist.load("test", DATA)
    Image.fromarray(images[0].numpy()).save(tmp_path / "a.png")
    Image.fromarray(255 - images[1].numpy()).save(tmp_path / "b.png")  # dark ink on white paper
    assert torch.equal(read_digit(tmp_path / "a.png"), images[0])
    assert torch.equal(read_digit(tmp_path / "b.png"), images[1])
    Image.fromarray(255 - images[2].numpy()).resize((112, 112), Image.NEAREST).convert("RGB").save(tmp_path / "c.jpg")
    big = read_digit(tmp_path / "c.jpg").float().flatten()
    assert torch.corrcoef(torch.stack([big, images[2].float().flatten()]))[0, 1] > 0.6
    loaded = load_checkpoint(out / "checkpoints/best.ckpt", TASKS)
    with torch.no_grad():
        expected = loaded.model(((images[:2].float() / 255 - 0.1307) / 0.3081))[0].softmax(-1)
    capsys.readouterr()
    assert cli.main(["predict", str(out / "checkpoints/best.ckpt"), str(tmp_path / "a.png"),
                     str(tmp_path / "b.png"), "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    for p, e in zip(predictions, expected):
        assert p["class"] == int(e.argmax())
        assert p["probabilities"] == pytest.approx(e.tolist(), abs=1e-4)


def test_data_parallel_with_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(run.RUN_DIR_ENV, None)
    proc = subprocess.run([sys.executable, "-m", "rnnkit", "train", "mnist", "--out", str(out), *QUICK,
                           "--devices", "2", "--accelerator", "cpu", "--max-epochs", "1"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "metrics.json").read_text())
    assert result["config"]["devices"] == 2
    assert result["steps"] == 4  # each process ran 4 batches of its half of the data
    assert "test_acc" in result["test"]


def test_early_stopping_ends_the_run_when_validation_stops_improving(tmp_path):
    result = train(tmp_path / "r", "--lr", "1e-12", "--lr-schedule", "none", "--patience", "1", "--max-epochs", "6")
    assert result["epochs"] == 2  # epoch 0 sets the best, epoch 1 does not beat it: patience 1 is used up


def module_for(**changes):
    task = get_task("mnist")
    cfg = task.config_class(hidden=4, **changes)
    return TaskModule(task, cfg, task.build_model(cfg, {}))


@pytest.mark.parametrize("changes, cls, expected", [
    ({}, torch.optim.Adam, {"lr": 1e-3, "weight_decay": 0.0}),
    ({"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "lr": 0.1}, torch.optim.SGD,
     {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ({"optimizer": "rmsprop", "momentum": 0.5, "weight_decay": 1e-4}, torch.optim.RMSprop,
     {"momentum": 0.5, "weight_decay": 1e-4}),
    ({"optimizer": "adagrad", "lr": 0.01}, torch.optim.Adagrad, {"lr": 0.01}),
])
def test_optimisers_from_the_notes(changes, cls, expected):
    configured = module_for(lr_schedule="none", **changes).configure_optimizers()
    assert type(configured) is cls
    assert {k: configured.defaults[k] for k in expected} == expected


def test_lr_schedules():
    cosine = module_for(lr_schedule="cosine", max_epochs=7).configure_optimizers()
    assert cosine["lr_scheduler"].T_max == 7
    plateau = module_for(lr_schedule="plateau").configure_optimizers()
    assert plateau["lr_scheduler"]["monitor"] == "val_acc" and plateau["lr_scheduler"]["scheduler"].mode == "max"


def test_l1_penalty_is_added_to_the_training_loss(monkeypatch):
    module = module_for(l1=0.01)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    x, y = torch.randn(3, 28, 28), torch.tensor([1, 2, 3])
    _, data_loss = module.model(x, y)
    penalty = sum(p.abs().sum() for n, p in module.model.named_parameters() if "weight" in n)
    assert torch.allclose(module.training_step((x, y), 0), data_loss + 0.01 * penalty)


def test_max_time_stops_the_run_and_still_leaves_a_usable_checkpoint(tmp_path):
    result = train(tmp_path / "r", "--max-time", "0.02", "--limit-train-batches", "1.0", "--max-epochs", "50")
    assert result["steps"] < 54000 // 32 and result["epochs"] <= 1  # stopped inside the first epoch
    assert (tmp_path / "r/checkpoints/last.ckpt").is_file() and "test_acc" in result["test"]


def test_default_run_directory_is_under_runs_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "mnist", *QUICK, "--max-epochs", "1"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("mnist-")
    result = json.loads((run_dir / "metrics.json").read_text())
    assert result["best_checkpoint"] == "checkpoints/best.ckpt"


@pytest.fixture
def nan_at_step_2(monkeypatch):
    """The classifier's training loss is NaN on its third training batch."""
    from rnnkit.models.classifier import SequenceClassifier

    forward, calls = SequenceClassifier.forward, {"n": 0}

    def poisoned(self, inputs, targets=None):
        output, loss = forward(self, inputs, targets)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 3:
                loss = loss * float("nan")
        return output, loss

    monkeypatch.setattr(SequenceClassifier, "forward", poisoned)


def test_a_non_finite_step_is_skipped_and_counted(tmp_path, nan_at_step_2):
    with pytest.warns(RuntimeWarning, match="training step 2: the gradient norm is nan, not finite; step skipped"):
        result = train(tmp_path / "r", "--max-epochs", "1")
    assert result["skipped_steps"] == 1 and result["steps"] == 4
    state = weights(tmp_path / "r/checkpoints/best.ckpt")
    assert all(torch.isfinite(v).all() for v in state.values())
    assert math.isfinite(result["val"]["val_loss"])


def test_a_non_finite_step_can_stop_the_run(tmp_path, nan_at_step_2, capsys):
    code = cli.main(["train", "mnist", "--out", str(tmp_path / "r"), *QUICK, "--on-nonfinite", "stop"])
    assert code == 1
    assert "training step 2: the gradient norm is nan, not finite; stopped" in capsys.readouterr().err
    assert not (tmp_path / "r/metrics.json").exists()


def test_tensorboard_events_hold_the_logged_scalars(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = trained
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    for tag in ("train_loss_step", "grad_norm", "clip_ratio", "val_loss", "val_acc", "train_loss_epoch"):
        assert tag in events.Tags()["scalars"], tag
        logged = {(int(r["step"]), round(float(r[tag]), 5)) for r in rows if r.get(tag)}
        read_back = {(e.step, round(e.value, 5)) for e in events.Scalars(tag)}
        assert read_back == logged, tag
