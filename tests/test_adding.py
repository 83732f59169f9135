"""The adding problem: the data as specified, the regressor against torch.nn, and the recipe end to end."""
import json

import pytest
import torch
import torch.nn.functional as F

from clirun import rnnkit
from rnnkit.data.synthetic import adding_problem
from rnnkit.models import make_rnn
from rnnkit.models.regressor import SequenceRegressor
from rnnkit.training import run
from rnnkit.training.config import RNNConfig


def test_adding_problem_marks_one_value_in_each_half_and_sums_them():
    x, y = adding_problem(500, 30, seed=3)
    assert x.shape == (500, 30, 2) and y.shape == (500,)
    marks = x[..., 1]
    assert torch.equal(marks.sum(1), torch.full((500,), 2.0))
    assert torch.equal(marks[:, :15].sum(1), torch.ones(500))                   # one in the first half
    assert torch.allclose((x[..., 0] * marks).sum(1), y)
    assert torch.equal(adding_problem(500, 30, seed=3)[0], x) and not torch.equal(adding_problem(500, 30, 4)[0], x)
    big = adding_problem(100_000, 10, seed=0)[1]
    assert F.mse_loss(torch.ones_like(big), big).item() == pytest.approx(1 / 6, abs=0.005)
    with pytest.raises(ValueError, match="length of at least 2; got 1"):
        adding_problem(3, 1, seed=0)


def test_regressor_is_an_identity_output_on_the_last_step_with_mse():
    model = SequenceRegressor(make_rnn(RNNConfig(hidden=6), 2), 1)
    ref = torch.nn.LSTM(2, 6, batch_first=True)
    ref.load_state_dict(model.rnn.state_dict())
    x, y = torch.randn(4, 9, 2), torch.randn(4)
    predictions, loss = model(x, y)
    expected = model.head(ref(x)[0][:, -1])
    assert torch.allclose(predictions, expected, atol=1e-6)
    assert torch.allclose(loss, F.mse_loss(expected.view(-1), y))


def test_adding_recipe_trains_and_reports_test_mse(tmp_path, monkeypatch):
    monkeypatch.delenv(run.RUN_DIR_ENV, raising=False)
    code, _, err = rnnkit("train", "adding", "--out", tmp_path / "r", "--length", "20", "--train-size", "600",
                          "--test-size", "100", "--hidden", "8", "--max-epochs", "2", "--no-progress")
    run.os.environ.pop(run.RUN_DIR_ENV, None)
    assert code == 0, err
    result = json.loads((tmp_path / "r/metrics.json").read_text())
    assert set(result["test"]) == {"test_loss", "test_mse"} and result["test"]["test_mse"] > 0
    code, out, err = rnnkit("gradflow", "--checkpoint", tmp_path / "r/checkpoints/best.ckpt", "--length", "20",
                            "--json", tmp_path / "g.json")
    assert code == 0, err
    norms = json.loads((tmp_path / "g.json").read_text())["norms"]["lstm trained (adding)"]
    assert len(norms) == 20 and "after training" in out
    code, _, err = rnnkit("train", "adding", "--length", "1", "--out", tmp_path / "s")
    assert code == 2 and "--length must be >= 2; got 1" in err
