"""Second-order gradients on every path `impl` can take: float64 gradgradcheck of the layers, the cells,
minGRU/minLSTM, and the explicit BPTT's recorded backward against the autograd loop's."""
import itertools

import pytest
import torch

import rnnkit

from conftest import assert_rel

VARIANTS = [
    (rnnkit.RNN, {}), (rnnkit.RNN, {"nonlinearity": "relu"}), (rnnkit.RNN, {"nonlinearity": "softsign"}),
    *[(rnnkit.LSTM, dict(zip(("peephole", "coupled", "layer_norm", "activation", "proj_size"), combo)))
      for combo in itertools.product([False, True], [False, True], [False, True], ["tanh", "softsign"], [0, 1])],
    (rnnkit.GRU, {}), (rnnkit.GRU, {"reset_after": False}), (rnnkit.GRU, {"activation": "softsign"}),
    (rnnkit.GRU, {"reset_after": False, "activation": "softsign"}),
]
IDS = [f"{c.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'standard'}" for c, kw in VARIANTS]


def _function(layer, lengths=None, with_state=False, seed=None):
    """(x, [h0,] *params) -> (output, *final states), through torch.func.functional_call."""
    names = [n for n, _ in layer.named_parameters()]

    def f(x, *args):
        if seed is not None:  # the same dropout masks at every evaluation
            torch.manual_seed(seed)
        hx = None
        if with_state:
            h0, args = args[0], args[1:]
            hx = (h0, torch.ones(h0.shape[:-1] + (layer.hidden_size,), dtype=h0.dtype)) \
                if isinstance(layer, rnnkit.LSTM) else h0
        out, state = torch.func.functional_call(layer, dict(zip(names, args)), (x, hx), {"lengths": lengths})
        return (out, *state) if isinstance(state, tuple) else (out, state)
    return f


def _inputs(layer, B=2, T=3, with_state=False):
    x = torch.randn(T, B, layer.input_size, dtype=torch.float64, requires_grad=True)
    inputs = [x]
    if with_state:
        size = layer.proj_size or layer.hidden_size
        inputs.append(torch.randn(layer.num_layers * layer.num_directions, B, size, dtype=torch.float64,
                                  requires_grad=True))
    return inputs + [p.detach().clone().requires_grad_() for p in layer.parameters()]


@pytest.mark.parametrize("cls,kwargs", VARIANTS, ids=IDS)
@pytest.mark.parametrize("impl", ["auto", "engine"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_gradgradcheck_every_variant(cls, kwargs, impl, with_lengths):
    layer = cls(2, 2, dtype=torch.float64, impl=impl, **kwargs)
    lengths = torch.tensor([3, 0, 2]) if with_lengths else None
    f = _function(layer, lengths, with_state=True)
    assert torch.autograd.gradgradcheck(f, _inputs(layer, B=3, with_state=True), fast_mode=True)


@pytest.mark.parametrize("cls,kwargs", [(rnnkit.LSTM, {}), (rnnkit.LSTM, {"peephole": True, "layer_norm": True,
                                                                         "proj_size": 1}),
                                        (rnnkit.GRU, {}), (rnnkit.GRU, {"reset_after": False}),
                                        (rnnkit.RNN, {"nonlinearity": "softsign"})])
@pytest.mark.parametrize("training", [False, True])
def test_gradgradcheck_stacked_bidirectional_with_dropout(cls, kwargs, training):
    """Two layers, both directions, lengths with a zero, batch_first, and in training mode inter-layer
    and recurrent dropout (masks drawn from the same seed at every evaluation)."""
    layer = cls(2, 2, 2, bidirectional=True, dtype=torch.float64, impl="engine", dropout=0.3,
                recurrent_dropout=0.3, **kwargs).train(training)
    f = _function(layer, torch.tensor([3, 1, 0]), seed=1)
    assert torch.autograd.gradgradcheck(f, _inputs(layer, B=3), fast_mode=True)


@pytest.mark.parametrize("cls,kwargs", [(rnnkit.LSTM, {}), (rnnkit.LSTM, {"proj_size": 1}), (rnnkit.GRU, {}),
                                        (rnnkit.RNN, {}), (rnnkit.RNN, {"nonlinearity": "relu"})])
def test_gradgradcheck_native(cls, kwargs):
    layer = cls(2, 2, 2, bidirectional=True, dtype=torch.float64, impl="native", **kwargs)
    assert torch.autograd.gradgradcheck(_function(layer), _inputs(layer), fast_mode=True)


@pytest.mark.parametrize("cls,kwargs", VARIANTS[::3], ids=IDS[::3])
def test_explicit_second_order_equals_the_autograd_loop(cls, kwargs):
    """A gradient penalty's gradient (the classic double-backward use) is the same through the explicit
    BPTT and through the autograd loop, with a non-trivial upstream gradient on every output."""
    options = dict(num_layers=2, bidirectional=True, dtype=torch.float64)
    ours = cls(3, 4, **options, impl="engine", **kwargs)
    ref = cls(3, 4, **options, impl="autograd", **kwargs)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 0, 2, 4])
    results = []
    for m in (ours, ref):
        out, state = m(x, lengths=lengths)
        finals = state if isinstance(state, tuple) else (state,)
        loss = sum((t * torch.linspace(-1, 1, t.numel(), dtype=t.dtype).reshape(t.shape)).sum() ** 2
                   for t in (out, *finals))
        params = list(m.parameters())
        first = torch.autograd.grad(loss, [x, *params], create_graph=True)
        penalty = sum(g.square().sum() for g in first)
        results.append(torch.autograd.grad(penalty, [x, *params]))
    for a, e in zip(*results):
        assert_rel(a, e, 1e-10, "second-order gradient")


@pytest.mark.parametrize("impl", ["auto", "engine"])
def test_the_issue_example(impl):
    """A gradient penalty through a small GRU, on whatever `auto` picks and on the engine."""
    m = rnnkit.GRU(4, 4, impl=impl)
    x = torch.rand(3, 2, 4, requires_grad=True)
    g, = torch.autograd.grad(m(x)[0].sum(), x, create_graph=True)
    g.pow(2).sum().backward()
    ref = torch.nn.GRU(4, 4)
    ref.load_state_dict(m.state_dict())
    x_ref = x.detach().clone().requires_grad_()
    g_ref, = torch.autograd.grad(ref(x_ref)[0].sum(), x_ref, create_graph=True)
    g_ref.pow(2).sum().backward()
    assert_rel(g, g_ref, 1e-5, "first order")
    assert_rel(x.grad, x_ref.grad, 1e-4, "second order")


@pytest.mark.parametrize("cls,kwargs", [(rnnkit.LSTMCell, {}), (rnnkit.LSTMCell, {"peephole": True, "layer_norm": True,
                                                                                 "proj_size": 1}),
                                        (rnnkit.GRUCell, {"reset_after": False}), (rnnkit.GRUCell, {}),
                                        (rnnkit.RNNCell, {"nonlinearity": "softsign"})])
def test_gradgradcheck_cells(cls, kwargs):
    cell = cls(2, 3, dtype=torch.float64, **kwargs)
    names = [n for n, _ in cell.named_parameters()]
    x = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)

    def f(x, *params):
        out = torch.func.functional_call(cell, dict(zip(names, params)), (x,))
        return out if isinstance(out, tuple) else (out,)
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    assert torch.autograd.gradgradcheck(f, (x, *params), fast_mode=True)


@pytest.mark.parametrize("cls", [rnnkit.MinGRU, rnnkit.MinLSTM])
@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_gradgradcheck_minimal(cls, mode):
    layer = cls(2, 3, 2, dtype=torch.float64, mode=mode)
    f = _function(layer, torch.tensor([3, 0]))
    assert torch.autograd.gradgradcheck(f, _inputs(layer), fast_mode=True)


def test_scan_logcumsumexp_is_torchs_and_twice_differentiable_where_gradients_vanish():
    from rnnkit.nn.minimal import _LogCumSumExp
    v = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(6, 3, dtype=torch.float64)
    g[3:] = 0  # no gradient reaches the last steps, as past a sequence's end
    ours, = torch.autograd.grad(_LogCumSumExp.apply(v), v, g)
    theirs, = torch.autograd.grad(torch.logcumsumexp(v, 0), v, g)
    assert_rel(ours, theirs, 1e-12, "first derivative")
    assert torch.autograd.gradgradcheck(_LogCumSumExp.apply, (v,), (g,))  # with respect to v (see its docstring)
