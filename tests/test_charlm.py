"""The character-level language model: carried state == one long run, truncated BPTT stops gradients at
the window edge, streaming generation == re-running the prefix, and the commands end to end."""
import json
import math

import pytest
import torch

from clirun import rnnkit
from rnnkit.tasks.base import load_checkpoint
from rnnkit.data.text import Vocabulary
from rnnkit.models import make_rnn
from rnnkit.models.language import CharLM, generate
from rnnkit.tasks import get_task
from rnnkit.tasks.charlm import CharLMConfig
from rnnkit.training import run
from rnnkit.training.module import TaskModule


def lm(cell="lstm", layers=2, vocab=7):
    return CharLM(make_rnn(CharLMConfig(cell=cell, hidden=12, layers=layers), 5), vocab, 5).eval()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_carried_state_equals_one_long_run(cell):
    model, ids = lm(cell), torch.randint(0, 7, (3, 20))
    (whole, _), _ = model(ids)
    (first, state), _ = model((ids[:, :8], None))
    (second, _), _ = model((ids[:, 8:], state))
    assert torch.allclose(torch.cat([first, second], 1), whole, atol=1e-6)


def test_truncated_bptt_carries_the_state_detached(monkeypatch):
    task = get_task("charlm")
    cfg = CharLMConfig(hidden=8, layers=1, embedding=4, dropout=0.0)
    module = TaskModule(task, cfg, task.build_model(cfg, {"vocab": list("abcdef")}), {"vocab": list("abcdef")})
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    x, y = torch.randint(0, 6, (2, 5)), torch.randint(0, 6, (2, 5))
    module.training_step((x, y), 0)
    h, c = module._carried["train"]
    assert h.shape == (1, 2, 8) and not h.requires_grad and not c.requires_grad
    (_, expected), _ = module.model((x, None))
    assert torch.allclose(h, expected[0])
    loss = module.training_step((x, y), 1)  # starts from the carried state
    (_, _), from_carried = module.model((x, (h, c)), y)
    assert torch.allclose(loss, from_carried)
    module.on_train_epoch_start()
    assert "train" not in module._carried  # each epoch starts from h_0 = 0


def test_streaming_generation_equals_rerunning_the_prefix():
    model = lm()
    prime = torch.tensor([1, 4, 2])
    streamed = list(generate(model, prime, 12, temperature=0))
    seq = prime.tolist()
    for _ in range(12):
        (logits, _), _ = model(torch.tensor([seq]))
        seq.append(int(logits[0, -1].argmax()))
    assert streamed == seq[3:]


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    model, prime = lm(), torch.tensor([3])
    draw = lambda seed, **kw: list(generate(model, prime, 30, generator=torch.Generator().manual_seed(seed), **kw))
    assert draw(1) == draw(1) and draw(1) != draw(2)
    assert draw(5, top_k=1) == list(generate(model, prime, 30, temperature=0))
    assert set(draw(3, top_k=2, temperature=5.0)) <= set(range(7))


def test_bidirectional_is_refused():
    with pytest.raises(ValueError, match="autoregressive"):
        CharLMConfig(bidirectional=True).validate()
    with pytest.raises(ValueError, match="bidirectional layer would read the answer"):
        CharLM(make_rnn(CharLMConfig(hidden=4, bidirectional=True), 3), 5, 3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small LSTM learns a text with a short period until it predicts it almost surely."""
    root = tmp_path_factory.mktemp("charlm")
    (root / "text.txt").write_text("the cat sat on the mat. " * 400)
    code, out, err = rnnkit("train", "charlm", "--text", root / "text.txt", "--out", root / "run", "--hidden", "32",
                            "--layers", "1", "--embedding", "8", "--bptt", "24", "--batch-size", "8", "--lr", "0.02",
                            "--max-epochs", "12", "--patience", "0", "--lr-schedule", "none", "--sample-length", "40",
                            "--no-progress", "--dropout", "0")
    run.os.environ.pop(run.RUN_DIR_ENV, None)
    assert code == 0, err
    return root / "run", out


def test_training_learns_and_reports_nats_and_bits(trained):
    out_dir, printed = trained
    result = json.loads((out_dir / "metrics.json").read_text())
    assert result["val"]["val_nats"] < 0.2 < math.log(11)  # 11 distinct characters: ln 11 = 2.4 when guessing
    assert result["val"]["val_bpc"] == pytest.approx(result["val"]["val_nats"] / math.log(2), rel=1e-4)
    assert "--- sample before training ---" in printed and "--- sample after epoch 11 ---" in printed
    assert (out_dir / "samples.txt").is_file() and "samples.txt" in result["artifacts"]


def test_sample_command_streams_the_learned_text(trained):
    out_dir, _ = trained
    code, out, _ = rnnkit("sample", out_dir / "checkpoints/best.ckpt", "--prime", "the cat", "--length", "40",
                          "--temperature", "0")
    assert code == 0
    assert out.startswith("the cat sat on the mat. the cat sat on the")


def test_eval_scores_the_held_out_text(trained):
    out_dir, _ = trained
    code, out, err = rnnkit("eval", out_dir / "checkpoints/best.ckpt", "--json")
    assert code == 0, err
    metrics = json.loads(out)["metrics"]
    assert json.loads(out)["split"] == "validation"  # the held-out last part of the text
    best = json.loads((out_dir / "metrics.json").read_text())["val"]
    assert metrics["val_nats"] == pytest.approx(best["val_nats"], rel=1e-5)


@pytest.mark.parametrize("argv, code, message", [
    (["--prime", "dog"], 1, "the prime has characters the model never saw in training: 'd', 'g'"),
    (["--length", "0"], 2, "--length must be >= 1; got 0"),
    (["--temperature", "-1"], 2, "--temperature must be a finite number >= 0"),
    (["--top-k", "-2"], 2, "--top-k must be >= 0"),
    (["--top-k", "500"], 2, "--top-k must be at most the vocabulary size, 11; got 500"),
    (["--prime", ""], 2, "--prime must hold at least one character"),
])
def test_sample_bad_input(trained, argv, code, message):
    out_dir, _ = trained
    got, _, err = rnnkit("sample", out_dir / "checkpoints/best.ckpt", *argv)
    assert got == code and message in err and "Traceback" not in err


def test_train_refuses_bidirectional_and_bad_text(tmp_path):
    code, _, err = rnnkit("train", "charlm", "--bidirectional", "--out", tmp_path / "a")
    assert code == 2 and "autoregressive" in err
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 au lait")
    code, _, err = rnnkit("train", "charlm", "--text", tmp_path / "bad.txt", "--out", tmp_path / "b")
    assert code == 1 and "bad.txt is not valid UTF-8: byte 0xe9 at offset 3" in err
    assert not (tmp_path / "b" / "metrics.json").exists()


def test_vocabulary_is_saved_with_the_checkpoint(trained):
    out_dir, _ = trained
    loaded = load_checkpoint(out_dir / "checkpoints/best.ckpt", {"charlm": get_task("charlm")})
    assert Vocabulary.from_list(loaded.extra["vocab"]).chars == sorted(set("the cat sat on the mat. "))


def test_python_api_yields_characters(trained):
    from rnnkit.tasks import load
    from rnnkit.tasks.charlm import generate_text

    chars = list(generate_text(load(trained[0] / "checkpoints/best.ckpt"), "the", 20, temperature=0))
    assert chars[0] == "the" and all(len(c) == 1 for c in chars[1:]) and "".join(chars).startswith("the cat sat")


def test_data_parallel_training_gives_each_process_its_own_streams(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "text.txt").write_text("the cat sat on the mat. " * 200)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(run.RUN_DIR_ENV, None)
    proc = subprocess.run([sys.executable, "-m", "rnnkit", "train", "charlm", "--text", str(tmp_path / "text.txt"),
                           "--out", str(tmp_path / "ddp"), "--devices", "2", "--accelerator", "cpu", "--hidden", "8",
                           "--layers", "1", "--batch-size", "4", "--bptt", "50", "--max-epochs", "1",
                           "--sample-length", "5", "--no-progress"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    # 4320 training characters in 4 streams of 1080: 22 windows of 50, read by both processes in step
    assert result["steps"] == 22 and result["config"]["devices"] == 2


def test_commands_refuse_a_checkpoint_of_another_task(trained):
    out_dir, _ = trained
    code, _, err = rnnkit("predict", out_dir / "checkpoints/best.ckpt", "digit.png")
    assert code == 2 and "task 'charlm' has no predict command" in err


def test_inverse_cdf_draw_follows_the_probabilities():
    from rnnkit.models.language import _draw

    probs = torch.tensor([0.5, 0.0, 0.3, 0.2])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(20000):
        counts[_draw(probs.tolist(), torch.rand((), generator=g).item())] += 1
    assert counts[1] == 0 and torch.allclose(counts / 20000, probs, atol=0.015)
    assert _draw([0.0, 1.0], 0.999999) == 1 and _draw([1.0, 0.0], 0.0) == 0
