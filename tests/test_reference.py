"""The NumPy reference (rnnkit.reference): its hand-derived BPTT against central finite differences,
against rnnkit's layers and torch.nn with the same weights (autograd, float64), truncated BPTT,
clipping and the optimizers against torch; it imports no torch; docs/bptt.md quotes it verbatim."""
import ast
import doctest
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rnnkit
from conftest import assert_rel
from rnnkit.reference import (Adagrad, Adam, GRUCell, LSTMCell, Recurrent, RNNCell, clip_grad_norm, global_norm,
                              init_head, many_to_many, many_to_one, truncated_bptt)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "rnnkit" / "reference"
T, B, I, H, V = 4, 2, 3, 3, 4  # time, batch, input, hidden, classes: tiny
TOL = 1e-10  # against torch, float64
FD_TOL = 1e-7  # against central differences, float64, eps = 1e-6
AUTOGRAD = {"impl": "autograd"}  # rnnkit layers differentiated by torch.autograd, not rnnkit's own BPTT

# (reference cell, rnnkit layer, keywords both take, torch.nn layer with the same math or None)
VARIANTS = [
    pytest.param(RNNCell, rnnkit.RNN, {"nonlinearity": "tanh"}, torch.nn.RNN, id="rnn-tanh"),
    pytest.param(RNNCell, rnnkit.RNN, {"nonlinearity": "relu"}, torch.nn.RNN, id="rnn-relu"),
    pytest.param(RNNCell, rnnkit.RNN, {"nonlinearity": "softsign"}, None, id="rnn-softsign"),
    pytest.param(LSTMCell, rnnkit.LSTM, {}, torch.nn.LSTM, id="lstm"),
    pytest.param(LSTMCell, rnnkit.LSTM, {"peephole": True}, None, id="lstm-peephole"),
    pytest.param(LSTMCell, rnnkit.LSTM, {"coupled": True}, None, id="lstm-coupled"),
    pytest.param(LSTMCell, rnnkit.LSTM, {"peephole": True, "coupled": True}, None, id="lstm-peephole-coupled"),
    pytest.param(LSTMCell, rnnkit.LSTM, {"activation": "softsign"}, None, id="lstm-softsign"),
    pytest.param(LSTMCell, rnnkit.LSTM, {"peephole": True, "coupled": True, "activation": "softsign"}, None,
                 id="lstm-peephole-coupled-softsign"),
    pytest.param(GRUCell, rnnkit.GRU, {}, torch.nn.GRU, id="gru"),
    pytest.param(GRUCell, rnnkit.GRU, {"reset_after": False}, None, id="gru-reset-before"),
    pytest.param(GRUCell, rnnkit.GRU, {"activation": "softsign"}, None, id="gru-softsign"),
    pytest.param(GRUCell, rnnkit.GRU, {"reset_after": False, "activation": "softsign"}, None,
                 id="gru-reset-before-softsign"),
]
STANDARD = [variant for variant in VARIANTS if variant.values[3] is not None]
STRUCTURES = [(1, False), (2, False), (1, True), (2, True)]  # (num_layers, bidirectional)
LOSSES = ["many-to-one", "given-dh_T", "many-to-many"]


def make_problem(cell_cls, kwargs, num_layers, bidirectional, steps=T, inputs=I, hidden=H):
    """A network, its weights, a head, and random inputs, initial states, targets and dL/dh_T."""
    rng = np.random.default_rng(0)
    net = Recurrent(cell_cls(hidden, **kwargs), inputs, num_layers, bidirectional)
    D = net.num_directions
    params = {name: rng.uniform(-0.8, 0.8, shape) for name, shape in net.param_shapes().items()}
    head = init_head(rng, D * hidden, V)
    x = rng.standard_normal((steps, B, inputs))
    state0 = tuple(0.5 * rng.standard_normal((num_layers * D, B, hidden)) for _ in range(net.cell.num_states))
    targets = rng.integers(0, V, (steps, B))
    g = rng.standard_normal((num_layers * D, B, hidden))
    return net, params, head, x, state0, targets, g


def reference_loss(net, params, head, x, state0, targets, g, kind, backward=True):
    """The loss, and with backward=True its gradients by the reference's BPTT."""
    out, final, cache = net.forward(params, x, state0)
    d_final = None
    if kind == "many-to-one":
        loss, d_out, d_head = many_to_one(head, out, targets[-1])
    elif kind == "many-to-many":
        loss, d_out, d_head = many_to_many(head, out, targets)
    elif kind == "given-dh_T":  # L = sum(g * h_T), so dL/dh_T = g, the given gradient
        loss, d_out, d_head = np.sum(g * final[0]), None, {k: np.zeros_like(v) for k, v in head.items()}
        d_final = (g,) + (None,) * (len(final) - 1)
    else:
        raise ValueError(kind)
    if not backward:
        return loss
    grads, d_x, d_state0 = net.backward(params, cache, d_out, d_final)
    return loss, out, final, {**grads, **{"head." + k: v for k, v in d_head.items()}}, d_x, d_state0


def torch_loss(layer, params, head, x, state0, targets, g, kind):
    """The same loss through a torch layer holding the same weights, differentiated by autograd."""
    layer.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    x_t = torch.tensor(x, requires_grad=True)
    s_t = [torch.tensor(s, requires_grad=True) for s in state0]
    w_t, b_t = (torch.tensor(head[k], requires_grad=True) for k in ("weight", "bias"))
    out, final = layer(x_t, tuple(s_t) if len(s_t) == 2 else s_t[0])
    final = final if isinstance(final, tuple) else (final,)
    y = torch.from_numpy(targets)
    if kind == "many-to-one":
        loss = F.cross_entropy(F.linear(out[-1], w_t, b_t), y[-1])
    elif kind == "many-to-many":
        loss = F.cross_entropy(F.linear(out, w_t, b_t).reshape(-1, V), y.reshape(-1), reduction="sum") / B
    else:
        loss = (torch.from_numpy(g) * final[0]).sum()
    loss.backward()
    grads = {name: p.grad for name, p in layer.named_parameters()}
    grads.update({"head.weight": w_t.grad, "head.bias": b_t.grad})
    zero = torch.zeros(())
    return (loss, out, final, {k: zero if v is None else v for k, v in grads.items()}, x_t.grad,
            [zero if s.grad is None else s.grad for s in s_t])


def assert_same(ours, theirs, tol):
    """Reference results (NumPy) against torch's: loss, output, final states, every gradient."""
    loss, out, final, grads, d_x, d_state0 = ours
    t_loss, t_out, t_final, t_grads, t_d_x, t_d_state0 = theirs
    assert_rel(torch.tensor(loss), t_loss.detach(), tol, "loss")
    assert_rel(torch.from_numpy(out), t_out.detach(), tol, "output")
    for i, (s, t_s) in enumerate(zip(final, t_final)):
        assert_rel(torch.from_numpy(s), t_s.detach(), tol, f"final state {i}")
    assert list(grads) == list(t_grads)
    for name in grads:
        assert_rel(torch.from_numpy(grads[name]), t_grads[name].expand(grads[name].shape), tol, f"d {name}")
    assert_rel(torch.from_numpy(d_x), t_d_x, tol, "d x")
    for i, (d, t_d) in enumerate(zip(d_state0, t_d_state0)):
        assert_rel(torch.from_numpy(d), t_d.expand(d.shape), tol, f"d initial state {i}")


# -- finite differences ----------------------------------------------------------------------------

def central_difference(f, array, eps=1e-6):
    """(f(w + eps) - f(w - eps)) / 2 eps for every entry w of `array`, which f reads."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        w = array[index]
        array[index] = w + eps
        up = f()
        array[index] = w - eps
        down = f()
        array[index] = w
        grad[index] = (up - down) / (2 * eps)
    return grad


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("cell_cls,layer_cls,kwargs,nn_cls", VARIANTS)
def test_gradients_match_finite_differences(cell_cls, layer_cls, kwargs, nn_cls, kind):
    """Every entry of every gradient (weights, head, input, initial states) of a stacked
    bidirectional network against central differences of the loss."""
    net, params, head, x, state0, targets, g = make_problem(cell_cls, kwargs, 2, True, steps=3, inputs=2, hidden=2)
    _, _, _, grads, d_x, d_state0 = reference_loss(net, params, head, x, state0, targets, g, kind)
    loss = lambda: reference_loss(net, params, head, x, state0, targets, g, kind, backward=False)  # noqa: E731
    checks = [(f"d {name}", grads[name], params[name]) for name in params]
    checks += [(f"d head.{k}", grads["head." + k], head[k]) for k in head]
    checks += [("d x", d_x, x)] + [(f"d initial state {i}", d, s) for i, (d, s) in enumerate(zip(d_state0, state0))]
    for what, analytic, array in checks:
        assert_rel(torch.from_numpy(analytic), torch.from_numpy(central_difference(loss, array)), FD_TOL, what)
    assert np.abs(d_x).max() > 1e-3  # the check above compared something


# -- against torch ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("num_layers,bidirectional", STRUCTURES)
@pytest.mark.parametrize("cell_cls,layer_cls,kwargs,nn_cls", VARIANTS)
def test_matches_rnnkit_layers(cell_cls, layer_cls, kwargs, nn_cls, num_layers, bidirectional, kind):
    net, params, head, x, state0, targets, g = make_problem(cell_cls, kwargs, num_layers, bidirectional)
    layer = layer_cls(I, H, num_layers, bidirectional=bidirectional, dtype=torch.float64, **kwargs, **AUTOGRAD)
    ours = reference_loss(net, params, head, x, state0, targets, g, kind)
    assert_same(ours, torch_loss(layer, params, head, x, state0, targets, g, kind), TOL)


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("num_layers,bidirectional", STRUCTURES)
@pytest.mark.parametrize("cell_cls,layer_cls,kwargs,nn_cls", STANDARD)
def test_matches_torch_nn(cell_cls, layer_cls, kwargs, nn_cls, num_layers, bidirectional, kind):
    net, params, head, x, state0, targets, g = make_problem(cell_cls, kwargs, num_layers, bidirectional)
    layer = nn_cls(I, H, num_layers, bidirectional=bidirectional, dtype=torch.float64, **kwargs)
    ours = reference_loss(net, params, head, x, state0, targets, g, kind)
    assert_same(ours, torch_loss(layer, params, head, x, state0, targets, g, kind), TOL)


@pytest.mark.parametrize("cell_cls,layer_cls,kwargs,nn_cls", VARIANTS)
def test_parameters_have_rnnkit_names_shapes_and_order(cell_cls, layer_cls, kwargs, nn_cls):
    net = Recurrent(cell_cls(H, **kwargs), I, num_layers=3, bidirectional=True)
    layer = layer_cls(I, H, 3, bidirectional=True, **kwargs)
    assert net.param_shapes() == {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert list(net.param_shapes()) == list(layer.state_dict())
    params = net.init_params(np.random.default_rng(0))
    bound = 1 / np.sqrt(H)
    assert all(np.abs(w).max() <= bound for w in params.values())


# -- truncated BPTT, clipping, optimizers ----------------------------------------------------------

@pytest.mark.parametrize("cell_cls,layer_cls,kwargs,num_layers,bidirectional", [
    (LSTMCell, rnnkit.LSTM, {"peephole": True}, 2, False),
    (GRUCell, rnnkit.GRU, {"reset_after": False}, 1, True),
    (RNNCell, rnnkit.RNN, {"nonlinearity": "tanh"}, 2, False),
], ids=["lstm-peephole-2-layers", "gru-before-bidirectional", "rnn-tanh-2-layers"])
def test_truncated_bptt_is_the_sum_of_windows_with_detached_state(cell_cls, layer_cls, kwargs, num_layers,
                                                                  bidirectional):
    long_T, k = 7, 3  # windows [0, 3), [3, 6), [6, 7)
    rng = np.random.default_rng(1)
    net = Recurrent(cell_cls(H, **kwargs), I, num_layers, bidirectional)
    D = net.num_directions
    params = {name: rng.uniform(-0.8, 0.8, shape) for name, shape in net.param_shapes().items()}
    head = init_head(rng, D * H, V)
    x, targets = rng.standard_normal((long_T, B, I)), rng.integers(0, V, (long_T, B))
    state0 = tuple(0.5 * rng.standard_normal((num_layers * D, B, H)) for _ in range(net.cell.num_states))

    windows = list(truncated_bptt(net, params, head, x, targets, k, state0))
    assert [w.start for w in windows] == [0, 3, 6]
    grads = {name: sum(w.grads[name] for w in windows) for name in params}
    d_head = {name: sum(w.d_head[name] for w in windows) for name in head}

    layer = layer_cls(I, H, num_layers, bidirectional=bidirectional, dtype=torch.float64, **kwargs, **AUTOGRAD)
    layer.load_state_dict({name: torch.from_numpy(w) for name, w in params.items()})
    linear = torch.nn.Linear(D * H, V, dtype=torch.float64)
    linear.load_state_dict({name: torch.from_numpy(w) for name, w in head.items()})
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(targets)

    def window_loss(start, stop, state):
        out, state = layer(x_t[start:stop], state)
        logits = linear(out).reshape(-1, V)
        return F.cross_entropy(logits, y_t[start:stop].reshape(-1), reduction="sum") / B, state

    def as_hx(states):
        return tuple(states) if len(states) == 2 else states[0]

    state = as_hx([torch.from_numpy(s) for s in state0])
    for w in windows:
        loss, state = window_loss(w.start, w.start + k, state)
        loss.backward()
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()  # the cut
        assert_rel(torch.tensor(w.loss), loss.detach(), TOL, f"loss of window {w.start}")
    for name, p in [*layer.named_parameters(), *(("head." + n, p) for n, p in linear.named_parameters())]:
        ours = d_head[name[5:]] if name.startswith("head.") else grads[name]
        assert_rel(torch.from_numpy(ours), p.grad, TOL, f"d {name}")
    final = state if isinstance(state, tuple) else (state,)
    for ours, theirs in zip(windows[-1].state, final):
        assert_rel(torch.from_numpy(ours), theirs, TOL, "carried state")

    # the same sequence without the cuts has another gradient: the windows did cut it
    layer.zero_grad()
    full_loss, _ = window_loss(0, long_T, as_hx([torch.from_numpy(s) for s in state0]))
    full_loss.backward()
    assert (layer.weight_hh_l0.grad - torch.from_numpy(grads["weight_hh_l0"])).abs().max() > 1e-4


def test_truncated_bptt_with_one_window_is_full_bptt():
    net, params, head, x, state0, targets, g = make_problem(LSTMCell, {}, 2, False)
    (window,) = truncated_bptt(net, params, head, x, targets, k=T, state=state0)
    _, _, final, grads, _, _ = reference_loss(net, params, head, x, state0, targets, g, "many-to-many")
    for name in params:
        np.testing.assert_array_equal(window.grads[name], grads[name])
    np.testing.assert_array_equal(window.state[1], final[1])


def test_updates_between_windows_are_used_by_the_next_window():
    net, params, head, x, _, targets, _ = make_problem(RNNCell, {}, 1, False)
    walk = truncated_bptt(net, params, head, x, targets, k=2)
    first = next(walk)
    params["weight_hh_l0"] *= 0  # a change the second window must see: then h depends on x alone
    second = next(walk)
    out, _, _ = net.forward(params, x[2:4], first.state)
    loss, _, _ = many_to_many(head, out, targets[2:4])
    assert second.loss == loss


@pytest.mark.parametrize("tau", [0.5, 2.0, 100.0])
def test_clip_grad_norm_matches_torch(tau):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(shape) for shape in ((3, 4), (5,), (2, 2, 2))]  # ||g|| about 5
    tensors = [torch.nn.Parameter(torch.zeros(a.shape, dtype=torch.float64)) for a in arrays]
    for t, a in zip(tensors, arrays):
        t.grad = torch.tensor(a)
    before = global_norm(arrays)
    torch_norm = torch.nn.utils.clip_grad_norm_(tensors, tau)
    norm = clip_grad_norm(arrays, tau)
    assert norm == pytest.approx(torch_norm.item(), rel=1e-12)
    for a, t in zip(arrays, tensors):
        assert_rel(torch.from_numpy(a), t.grad, 1e-6, "clipped gradient")  # torch divides by ||g|| + 1e-6
    assert global_norm(arrays) == pytest.approx(min(before, tau), rel=1e-12)


def test_clip_grad_norm_rejects_a_nonpositive_threshold():
    with pytest.raises(ValueError, match="tau must be positive; got 0"):
        clip_grad_norm([np.ones(3)], 0)


@pytest.mark.parametrize("ours_cls,torch_cls,lr", [(Adam, torch.optim.Adam, 0.01), (Adagrad, torch.optim.Adagrad, 0.1)])
def test_optimizers_match_torch(ours_cls, torch_cls, lr):
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(3)}
    tensors = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    ours, theirs = ours_cls(params, lr=lr), torch_cls(tensors.values(), lr=lr)
    for _ in range(4):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        for k, t in tensors.items():
            t.grad = torch.tensor(grads[k])
        ours.step(grads)
        theirs.step()
    for k in params:
        assert_rel(torch.from_numpy(params[k]), tensors[k].detach(), TOL, k)
    assert not np.allclose(params["w"], np.random.default_rng(0).standard_normal((3, 2)))  # it moved


# -- the package itself ----------------------------------------------------------------------------

def test_reference_runs_without_torch():
    """Imported as a top-level package, with rnnkit's torch code out of reach, nothing pulls torch in."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import reference, reference.chardemo; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'rnnkit')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code, str(PACKAGE.parent)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_modules_import_only_numpy_the_standard_library_and_each_other(path):
    allowed = set(sys.stdlib_module_names) | {"numpy"}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        else:
            continue
        assert all(name.split(".")[0] in allowed for name in names), f"{path.name} imports {names}"


@pytest.mark.parametrize("make,message", [
    (lambda: RNNCell(H, "sigmoid"), "nonlinearity must be one of 'tanh', 'relu', 'softsign'; got 'sigmoid'"),
    (lambda: LSTMCell(0), "hidden_size must be an integer >= 1; got 0"),
    (lambda: GRUCell(H, activation="relu"), "activation must be one of 'tanh', 'softsign'; got 'relu'"),
    (lambda: Recurrent(RNNCell(H), I, num_layers=0), "num_layers must be an integer >= 1; got 0"),
    (lambda: Recurrent(RNNCell(H), I).forward({}, np.zeros((T, B, I + 1))),
     r"x must have shape \(T, B, 3\) with T >= 1; got \(4, 2, 4\)"),
    (lambda: Recurrent(RNNCell(H), I).forward({}, np.zeros((0, B, I))), r"with T >= 1; got \(0, 2, 3\)"),
    (lambda: next(truncated_bptt(None, {}, {}, None, None, 0)), "k must be an integer >= 1; got 0"),
    (lambda: Recurrent(LSTMCell(H), I).forward({}, np.zeros((T, B, I)), (np.zeros((1, B, H)),)),
     r"state0 must be a tuple of 2 arrays of shape \(1, 2, 3\); got \[\(1, 2, 3\)\]"),
])
def test_bad_arguments_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_backward_checks_the_gradients_it_is_given():
    net, params, _, x, state0, _, g = make_problem(RNNCell, {}, 1, True)
    out, _, cache = net.forward(params, x, state0)
    with pytest.raises(ValueError, match=r"d_out must have the output's shape \(4, 2, 6\); got \(4, 2, 3\)"):
        net.backward(params, cache, d_out=out[..., :H])
    with pytest.raises(ValueError, match=r"d_final must be a tuple of 1 arrays of shape \(2, 2, 3\)"):
        net.backward(params, cache, d_final=(g, g))


# -- docs/bptt.md ----------------------------------------------------------------------------------

DOC = ROOT / "docs" / "bptt.md"


def doc_quotes():
    """The doc's ```python blocks that open with `# src/rnnkit/reference/FILE`: quotes of FILE."""
    for block in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S):
        first, *body = block.rstrip("\n").splitlines()
        if first.startswith("# src/rnnkit/reference/"):
            yield first[2:], body


def test_docs_quote_the_code_verbatim():
    quotes = list(doc_quotes())
    assert len(quotes) >= 6
    for path, body in quotes:
        source = (ROOT / path).read_text().splitlines()
        quote = textwrap.dedent("\n".join(body))
        n = len(body)
        assert any(textwrap.dedent("\n".join(source[i:i + n])) == quote for i in range(len(source) - n + 1)), \
            f"docs/bptt.md quotes lines that are not in {path}:\n{quote}"


def test_docs_examples_run_as_shown():
    result = doctest.testfile(str(DOC), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 3
    assert result.failed == 0
