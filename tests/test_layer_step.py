"""layer.step(x_t, state), the one-step path of generation, against forward() over the whole sequence."""
import pytest
import torch

import rnnkit

CASES = [
    (rnnkit.RNN, {}), (rnnkit.RNN, {"nonlinearity": "relu"}), (rnnkit.RNN, {"nonlinearity": "softsign"}),
    (rnnkit.LSTM, {}), (rnnkit.LSTM, {"bias": False}), (rnnkit.LSTM, {"proj_size": 3}),
    (rnnkit.LSTM, {"peephole": True}), (rnnkit.LSTM, {"coupled": True}), (rnnkit.LSTM, {"layer_norm": True}),
    (rnnkit.LSTM, {"activation": "softsign"}), (rnnkit.GRU, {}), (rnnkit.GRU, {"reset_after": False}),
    (rnnkit.GRU, {"bias": False}),
]


@pytest.mark.parametrize("cls, kwargs", CASES, ids=[f"{c.__name__}-{k}" for c, k in CASES])
@pytest.mark.parametrize("layers", [1, 2])
def test_stepping_equals_forward(cls, kwargs, layers):
    layer = cls(4, 6, layers, batch_first=True, dtype=torch.float64, **kwargs).eval()
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    out, final = layer(x)
    state, outs = None, []
    for t in range(7):
        y, state = layer.step(x[:, t], state)
        outs.append(y)
    torch.testing.assert_close(torch.stack(outs, 1), out, rtol=1e-12, atol=1e-12)
    for a, b in zip(state if isinstance(state, tuple) else (state,), final if isinstance(final, tuple) else (final,)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_step_gradients_match_forward():
    layer = rnnkit.LSTM(3, 5, 2, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    layer.eval()
    g_forward = torch.autograd.grad(layer(x)[0].sum(), [x, *layer.parameters()])
    state, total = None, 0
    for t in range(4):
        y, state = layer.step(x[:, t], state)
        total = total + y.sum()
    g_step = torch.autograd.grad(total, [x, *layer.parameters()])
    for a, b in zip(g_step, g_forward):
        torch.testing.assert_close(a, b)


def test_step_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="this layer is bidirectional"):
        rnnkit.GRU(4, 6, bidirectional=True).step(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"shape \(batch, input_size=4\); got \(2, 1, 4\)"):
        rnnkit.GRU(4, 6).step(torch.randn(2, 1, 4))
    with pytest.raises(ValueError, match=r"h_0 must have shape \(1, 2, 6\)"):
        rnnkit.GRU(4, 6).step(torch.randn(2, 4), torch.zeros(1, 3, 6))
