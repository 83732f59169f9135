"""save_pretrained / from_pretrained and `rnnkit export --format safetensors`: the same model back,
loaded with torch and safetensors alone, never overwriting anything."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clirun import rnnkit
from rnnkit.pretrained import from_pretrained, save_pretrained
from rnnkit.tasks import load
from rnnkit.tasks.charlm import generate_text

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY = ["--hidden", "12", "--max-epochs", "1", "--limit-train-batches", "3", "--limit-eval-batches", "1",
        "--no-progress"]
TRAINING_LIBRARIES = ["lightning", "torchmetrics", "matplotlib", "tensorboard", "PIL", "sacrebleu", "conllu"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    runs = {"charlm": ["charlm", "--max-chars", "5000", "--bptt", "20", "--batch-size", "4", "--sample-length", "0"]}
    if (DATA / "mnist").is_dir():
        runs["mnist"] = ["mnist", "--data-dir", str(DATA), "--batch-size", "16", "--bidirectional"]
    for name, flags in runs.items():
        code, _, err = rnnkit("train", *flags, *TINY, "--out", str(root / name))
        assert code == 0, err
    return {name: root / name / "checkpoints" / "best.ckpt" for name in runs}


def _inputs(loaded):
    if loaded.task.name == "mnist":
        return torch.randn(5, 28, 28)
    return (torch.randint(len(loaded.extra["vocab"]), (2, 9)), None)


@pytest.mark.parametrize("task", ["mnist", "charlm"])
def test_export_and_load_give_the_same_model(task, checkpoints, tmp_path):
    if task not in checkpoints:
        pytest.skip(f"MNIST not found in {DATA}")
    code, out, err = rnnkit("export", str(checkpoints[task]), "--out", str(tmp_path / "m"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "extra.json", "model.safetensors"]
    original, again = load(checkpoints[task]), from_pretrained(tmp_path / "m")
    where_trained = {"out", "data_dir", "resume", "devices", "accelerator", "num_workers", "progress"}
    assert again.task.name == task
    assert {k: v for k, v in dataclasses.asdict(again.cfg).items() if k not in where_trained} == {
        k: v for k, v in dataclasses.asdict(original.cfg).items() if k not in where_trained}
    assert not again.model.training
    x = _inputs(original)
    a, b = original.model(x)[0], again.model(x)[0]
    for u, v in zip(torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)):
        assert torch.equal(u, v)


def test_a_saved_language_model_writes_the_same_text(checkpoints, tmp_path):
    save_pretrained(load(checkpoints["charlm"]), tmp_path / "lm")
    again = from_pretrained(tmp_path / "lm")
    assert "".join(generate_text(again, length=60, seed=1)) == "".join(
        generate_text(load(checkpoints["charlm"]), length=60, seed=1))


def test_loading_needs_neither_the_training_libraries_nor_pickle(checkpoints, tmp_path):
    save_pretrained(load(checkpoints["charlm"]), tmp_path / "lm")
    script = f"""
import sys, pickle
for name in {TRAINING_LIBRARIES!r}:
    sys.modules[name] = None  # importing any of them now fails
pickle.loads = pickle.load = None  # and nothing may unpickle
import torch
from rnnkit.pretrained import from_pretrained
m = from_pretrained({str(tmp_path / 'lm')!r})
x = torch.arange(12).view(2, 6) % len(m.extra["vocab"])
print(m.model((x, None))[0][0].sum().item())
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    m = from_pretrained(tmp_path / "lm")
    x = torch.arange(12).view(2, 6) % len(m.extra["vocab"])
    assert float(proc.stdout) == m.model((x, None))[0][0].sum().item()


def test_nothing_is_overwritten_and_bad_bundles_are_named(checkpoints, tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    code, _, err = rnnkit("export", str(checkpoints["charlm"]), "--out", str(kept))
    assert code == 2 and "already exists and is not an empty directory" in err and "Traceback" not in err
    assert [p.name for p in kept.iterdir()] == ["notes.txt"] and (kept / "notes.txt").read_text() == "mine"

    bundle = save_pretrained(load(checkpoints["charlm"]), tmp_path / "b")
    (bundle / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        from_pretrained(bundle)
    (bundle / "config.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(ValueError, match="format 99; this rnnkit reads format 1"):
        from_pretrained(bundle)
    (bundle / "extra.json").unlink()
    with pytest.raises(FileNotFoundError, match="extra.json is missing"):
        from_pretrained(bundle)
