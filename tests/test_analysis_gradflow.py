"""Gradient flow through time: ∂L/∂h_t from the step loop against the RNN's hand-written recursion and
against finite differences of the loss in h_t (LSTM, GRU); the command's output."""
import json

import pytest
import torch

from clirun import rnnkit
from rnnkit import GRU, LSTM, RNN
from rnnkit.analysis.gradflow import gradient_norms, gradients


def test_rnn_gradients_follow_the_notes_recursion():
    """∂L/∂h_t = W_hhᵀ (1 - h_{t+1}²) ⊙ ∂L/∂h_{t+1}, from ∂L/∂h_T = readout."""
    layer = RNN(3, 5, batch_first=True, dtype=torch.float64)
    x, readout = torch.randn(2, 9, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    grads = gradients(layer, x, readout)
    with torch.no_grad():
        h = layer(x)[0]  # (B, T, H)
        expected = [readout.expand(2, 5)]
        for t in range(8, 0, -1):
            expected.insert(0, (expected[0] * (1 - h[:, t] ** 2)) @ layer.weight_hh_l0)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_gradients_match_finite_differences_of_the_loss_in_h_t(cls):
    torch.manual_seed(1)
    layer = cls(3, 4, batch_first=True, dtype=torch.float64)
    x, readout = torch.randn(2, 7, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    grads = gradients(layer, x, readout)

    def loss_from(t, state):  # continue from the state after step t (1-based), h_t replaced
        for s in range(t, 7):
            h, state = layer.step(x[:, s], state)
        return (h * readout).sum()

    with torch.no_grad():
        for t in (1, 4, 6):
            _, state = layer(x[:, :t])
            v, eps = torch.randn(2, 4, dtype=torch.float64), 1e-6
            shifted = [(state[0] + sign * eps * v,) + tuple(state[1:]) if isinstance(state, tuple)
                       else state + sign * eps * v for sign in (1, -1)]
            fd = (loss_from(t, shifted[0]) - loss_from(t, shifted[1])) / (2 * eps)
            assert torch.allclose((grads[t - 1] * v).sum(), fd, rtol=1e-6, atol=1e-9)


def test_norms_are_averaged_over_the_batch_and_bidirectional_is_refused():
    layer, x = GRU(3, 4, batch_first=True), torch.randn(5, 6, 3)
    norms = gradient_norms(layer, x)
    assert norms.shape == (6,) and torch.allclose(norms[-1], torch.randn(4, generator=torch.Generator().manual_seed(0)).norm())
    with pytest.raises(ValueError, match="bidirectional"):
        gradients(GRU(3, 4, batch_first=True, bidirectional=True), x)


def test_gradflow_command_shows_the_rnn_vanishing_and_a_biased_lstm_not(tmp_path):
    code, out, err = rnnkit("gradflow", "--length", "60", "--hidden", "32", "--forget-bias", "3",
                            "--out", tmp_path / "g.png", "--json", tmp_path / "g.json")
    assert code == 0, err
    assert (tmp_path / "g.png").stat().st_size > 0 and "t=60" in out
    norms = json.loads((tmp_path / "g.json").read_text())["norms"]
    assert set(norms) == {"rnn", "lstm (forget bias 3)", "gru"}
    assert norms["rnn"][0] < 1e-6 * norms["rnn"][-1]                             # vanished through tanh
    assert norms["lstm (forget bias 3)"][0] > 1e-2 * norms["lstm (forget bias 3)"][-1]  # carried by c


@pytest.mark.parametrize("argv, message", [
    (["--cells", "rnn,transformer"], "--cells takes a comma-separated subset of rnn,lstm,gru"),
    (["--length", "0"], "--length must be >= 1; got 0"),
])
def test_gradflow_bad_input(argv, message):
    code, _, err = rnnkit("gradflow", *argv)
    assert code == 2 and message in err
