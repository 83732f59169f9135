"""The copy task: the data as specified, the many-to-many model against torch.nn, and the recipe end to end."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from clirun import rnnkit
from rnnkit.data.synthetic import BLANK, copy_baseline, copy_task
from rnnkit.tasks import get_task
from rnnkit.training import run


def test_copy_task_layout_symbols_blanks_delimiter_then_recall():
    T, K, A = 7, 4, 5
    x, y = copy_task(300, T, seed=2, symbols=K, alphabet=A)
    assert x.shape == y.shape == (300, T + 2 * K) and x.dtype == torch.long
    symbols = x[:, :K]
    assert int(symbols.min()) == 1 and int(symbols.max()) == A                  # every symbol of 1..A, never blank
    assert torch.equal(x[:, K:K + T - 1], torch.full((300, T - 1), BLANK))
    assert torch.equal(x[:, K + T - 1], torch.full((300,), A + 1))              # the delimiter, one step before recall
    assert torch.equal(x[:, K + T:], torch.full((300, K), BLANK))
    assert torch.equal(y[:, :K + T], torch.full((300, K + T), BLANK))
    assert torch.equal(y[:, K + T:], symbols)
    assert torch.equal(copy_task(300, T, 2, K, A)[0], x) and not torch.equal(copy_task(300, T, 3, K, A)[0], x)
    with pytest.raises(ValueError, match="delay T of at least 1; got 0"):
        copy_task(3, 0, seed=0)
    with pytest.raises(ValueError, match="A >= 2; got K=3, A=1"):
        copy_task(3, 5, seed=0, symbols=3, alphabet=1)


def test_baseline_is_the_cross_entropy_of_blanks_then_uniform_guesses():
    T, K, A = 6, 3, 8
    x, y = copy_task(50, T, seed=0, symbols=K, alphabet=A)
    logits = torch.full((50, T + 2 * K, A + 2), -1e4)
    logits[:, :T + K, BLANK] = 0.0                 # certain of the blanks
    logits[:, T + K:, 1:A + 1] = 0.0               # uniform over the alphabet in the recall
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    assert loss.item() == pytest.approx(copy_baseline(T, K, A), rel=1e-6)
    assert copy_baseline(100, 10, 8) == pytest.approx(10 * math.log(8) / 120)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_model_equals_torch_nn_with_copied_weights(cell):
    torch.manual_seed(0)
    task = get_task("copy")
    cfg = task.config_class(cell=cell, hidden=6, length=5, symbols=3, alphabet=4)
    model = task.build_model(cfg, {})
    V = cfg.alphabet + 2
    ref = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](V, 6, batch_first=True)
    ref.load_state_dict(model.rnn.state_dict())
    x, y = copy_task(4, cfg.length, 1, cfg.symbols, cfg.alphabet)
    (logits, _), loss = model(x, y)
    expected = model.head(ref(model.embed(x))[0])                              # (B, T+2K, V)
    assert torch.allclose(logits, expected, atol=1e-6)
    assert torch.allclose(loss, F.cross_entropy(expected.flatten(0, 1), y.flatten()), atol=1e-6)


def test_recall_accuracy_counts_only_the_recall_steps():
    task = get_task("copy")
    cfg = task.config_class(length=4, symbols=3, alphabet=4)
    x, y = copy_task(10, cfg.length, 0, cfg.symbols, cfg.alphabet)
    logits = F.one_hot(y, 6).float()                  # right everywhere ...
    logits[:, -3:] = F.one_hot(y[:, -3:] % 4 + 1, 6).float()  # ... except the recall: always a wrong symbol
    logits[:2, -1] = F.one_hot(y[:2, -1], 6).float()  # two right recall steps of 30
    metrics = task.metrics(cfg, {})
    task.update_metrics(metrics, (logits, None), y)
    assert metrics.compute()["recall_acc"].item() == pytest.approx(2 / 30)


def test_copy_recipe_trains_end_to_end(tmp_path, monkeypatch):
    monkeypatch.delenv(run.RUN_DIR_ENV, raising=False)
    code, out, err = rnnkit("train", "copy", "--out", tmp_path / "r", "--length", "3", "--symbols", "2",
                            "--train-size", "300", "--test-size", "50", "--hidden", "8", "--max-epochs", "1",
                            "--no-progress")
    run.os.environ.pop(run.RUN_DIR_ENV, None)
    assert code == 0, err
    assert f"baseline {copy_baseline(3, 2, 8):.4f} nats/step" in out
    result = json.loads((tmp_path / "r/metrics.json").read_text())
    assert set(result["test"]) == {"test_loss", "test_recall_acc"} and 0 <= result["test"]["test_recall_acc"] <= 1
    code, _, err = rnnkit("train", "copy", "--alphabet", "1", "--out", tmp_path / "s")
    assert code == 2 and "--alphabet must be >= 2; got 1" in err
