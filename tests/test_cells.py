"""One time step of every cell: the hand-derived `step_backward` against autograd, the activations,
the cell modules against torch.nn, and the LSTM variants against a transcription of their docstring."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import rnnkit
from conftest import assert_rel
from rnnkit.engine.cells import ACTIVATIONS, LN_EPS, GRUStep, LSTMStep, RNNStep, softsign

DTYPE = torch.float64
TOL = 1e-10
I, H, B = 2, 3, 3  # input, hidden, batch: tiny; H = 3 leaves room for proj_size = 2

# -- the variant grid (also used by test_engine.py) -----------------------------------------------

RNN_STEPS = [RNNStep(H, nonlinearity, bias) for nonlinearity in ("tanh", "relu", "softsign") for bias in (True, False)]
LSTM_STEPS = [
    LSTMStep(H, proj_size, bias, activation, peephole, coupled, layer_norm)
    for peephole, coupled, layer_norm, activation, proj_size, bias in itertools.product(
        (False, True), (False, True), (False, True), ("tanh", "softsign"), (0, 2), (True, False))
]
GRU_STEPS = [GRUStep(H, bias, reset_after, activation)
             for reset_after in (True, False) for activation in ("tanh", "softsign") for bias in (True, False)]
ALL_STEPS = RNN_STEPS + LSTM_STEPS + GRU_STEPS


def step_id(step) -> str:
    """A readable test id: rnn-relu-nobias, lstm-peep-cifg-ln-softsign-p2, gru-before-softsign."""
    bias = "" if step.bias else "-nobias"
    if isinstance(step, RNNStep):
        return f"rnn-{step.nonlinearity}{bias}"
    if isinstance(step, GRUStep):
        return f"gru-{'after' if step.reset_after else 'before'}-{step.activation}{bias}"
    flags = [name for name, on in (("peep", step.peephole), ("cifg", step.coupled), ("ln", step.layer_norm)) if on]
    return "-".join(["lstm", *flags, step.activation, f"p{step.proj_size}"]) + bias


def random_params(step, input_size=I, gen=None) -> dict:
    """Every parameter of `step`, random (layer-norm gains around 1, so that they matter)."""
    p = {}
    for name, shape in step.param_shapes(input_size).items():
        value = torch.randn(shape, generator=gen, dtype=DTYPE)
        p[name] = 1 + 0.3 * value if name.startswith("ln_weight") else 0.6 * value
    return p


def random_mask(batch, size, gen=None):
    """A recurrent-dropout mask (batch, size): zeros and 1/keep, as the layers draw it."""
    keep = 0.7
    return (torch.rand(batch, size, generator=gen, dtype=DTYPE) < keep).to(DTYPE) / keep


def random_state(step, batch, gen=None):
    return tuple(torch.randn(batch, size, generator=gen, dtype=DTYPE) for size in step.state_sizes())


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def flat(out):
    """A cell's output as a list of states: [h] or [h, c]."""
    return list(out) if isinstance(out, tuple) else [out]


def weighted_sum(outputs, weights):
    """A scalar whose gradient is the backward pass of `outputs` with cotangents `weights`."""
    return sum((o * w).sum() for o, w in zip(outputs, weights, strict=True))


def gradient_from_terms(term, param):
    """One step's gradient contribution, in the format of the cells.py docstring, as a gradient:
    a list of (d_pre, inp) pairs means cat([d_pre.T @ inp ...], dim=0); a (B, n) tensor is summed
    over the batch, an (n,) tensor already is; no entry means the step does not use the parameter."""
    if term is None:
        return torch.zeros_like(param)
    if isinstance(term, torch.Tensor):
        return term if term.dim() == 1 else term.sum(0)
    return torch.cat([d_pre.T @ inp for d_pre, inp in term], dim=0)


# -- step_backward against autograd -----------------------------------------------------------------

@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("step", ALL_STEPS, ids=step_id)
def test_step_backward_matches_autograd(step, with_mask):
    gen = torch.Generator().manual_seed(1)
    G, P = step.gates, step.output_size
    xp = leaf(torch.randn(B, G * step.hidden_size, generator=gen, dtype=DTYPE))  # (B, G*H)
    state = tuple(leaf(s) for s in random_state(step, B, gen))  # (B, P) [, (B, H)]
    p = {name: leaf(v) for name, v in random_params(step, gen=gen).items()}
    mask = random_mask(B, P, gen) if with_mask else None

    new_state, saved = step.step(xp, state, p, mask)
    assert [tuple(s.shape) for s in new_state] == [(B, size) for size in step.state_sizes()]
    d_state = tuple(torch.randn(s.shape, generator=gen, dtype=DTYPE) for s in new_state)
    loss = weighted_sum(new_state, d_state)
    leaves = [xp, *state, *p.values()]
    expected = torch.autograd.grad(loss, leaves, allow_unused=True)
    expected = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, expected)]

    with torch.no_grad():
        d_xp, d_prev, grads = step.step_backward(d_state, saved, p, mask)
    assert set(grads) <= set(p), f"gradients for unknown parameters: {set(grads) - set(p)}"
    d_params = [gradient_from_terms(grads.get(name), p[name]) for name in p]
    names = ["xp"] + [f"state[{k}]" for k in range(len(state))] + list(p)
    actual = [d_xp, *d_prev, *d_params]
    assert len(actual) == len(expected)
    for what, a, e in zip(names, actual, expected):
        assert_rel(a, e, TOL, f"d {what}")


# -- activations --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_backward_from_output_matches_autograd(name):
    act = ACTIVATIONS[name]
    assert act.name == name
    v = torch.cat([torch.linspace(-6, 6, 101, dtype=DTYPE), torch.randn(50, dtype=DTYPE)])
    v = v[v.abs() > 1e-3].requires_grad_(True)  # away from relu's kink
    y = act.fn(v)
    d = torch.randn_like(v)
    (vjp,) = torch.autograd.grad(y, v, d)
    assert_rel(act.backward(d, y.detach()), vjp, TOL, f"d * {name}'(v) from y")


def test_softsign_definition():
    v = torch.randn(200, dtype=DTYPE) * 5
    assert_rel(softsign(v), v / (1 + v.abs()), 0.0, "softsign")
    assert_rel(softsign(v), F.softsign(v), 1e-15, "softsign vs torch")
    assert_rel(ACTIVATIONS["softsign"].fn(v), F.softsign(v), 1e-15, "ACTIVATIONS['softsign']")


def test_activation_names_are_validated():
    with pytest.raises(ValueError, match="nonlinearity"):
        RNNStep(H, "sigmoid")
    with pytest.raises(ValueError, match="activation"):
        LSTMStep(H, activation="relu")
    with pytest.raises(ValueError, match="activation"):
        GRUStep(H, activation="relu")


# -- cell modules against torch.nn ----------------------------------------------------------------

CELL_PAIRS = [
    ("rnn-tanh", rnnkit.RNNCell, torch.nn.RNNCell, {"nonlinearity": "tanh"}),
    ("rnn-relu", rnnkit.RNNCell, torch.nn.RNNCell, {"nonlinearity": "relu"}),
    ("lstm", rnnkit.LSTMCell, torch.nn.LSTMCell, {}),
    ("gru", rnnkit.GRUCell, torch.nn.GRUCell, {}),
]


@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name,ours_cls,ref_cls,kwargs", CELL_PAIRS, ids=[c[0] for c in CELL_PAIRS])
def test_cell_module_matches_torch(name, ours_cls, ref_cls, kwargs, bias, batched, with_hx):
    ref = ref_cls(I, H, bias=bias, dtype=DTYPE, **kwargs)
    ours = ours_cls(I, H, bias=bias, dtype=DTYPE, **kwargs)
    ours.load_state_dict(ref.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    lead = (B,) if batched else ()
    x = torch.randn(*lead, I, dtype=DTYPE, requires_grad=True)
    n_states = 2 if ref_cls is torch.nn.LSTMCell else 1
    states = [torch.randn(*lead, H, dtype=DTYPE, requires_grad=True) for _ in range(n_states)] if with_hx else []
    hx = None if not with_hx else (tuple(states) if n_states == 2 else states[0])

    out, ref_out = flat(ours(x, hx)), flat(ref(x, hx))
    assert len(out) == len(ref_out) == n_states
    for k, (a, e) in enumerate(zip(out, ref_out)):
        assert_rel(a, e, TOL, f"output {k}")

    weights = [torch.randn_like(e) for e in ref_out]
    inputs = [x, *states]
    grads = torch.autograd.grad(weighted_sum(out, weights), inputs + list(ours.parameters()))
    ref_grads = torch.autograd.grad(weighted_sum(ref_out, weights), inputs + list(ref.parameters()))
    names = ["input"] + [f"hx[{k}]" for k in range(len(states))] + [n for n, _ in ours.named_parameters()]
    for what, a, e in zip(names, grads, ref_grads):
        assert_rel(a, e, TOL, f"grad {what}")


# -- the LSTM variants are what the docstring says ------------------------------------------------

def docstring_lstm(x, h, c, w, *, peephole, coupled, layer_norm, activation, proj_size):
    """LSTMStep's docstring equations, written out plainly. x (B, I), h (B, P), c (B, H); w: dict."""
    act = torch.tanh if activation == "tanh" else (lambda v: v / (1 + v.abs()))
    zero = torch.zeros(())

    def ln(a):  # normalise over the last dim: (a - mean) / sqrt(var + eps), no gain or bias
        mean = a.mean(-1, keepdim=True)
        var = ((a - mean) ** 2).mean(-1, keepdim=True)
        return (a - mean) / torch.sqrt(var + LN_EPS)

    bias = w.get("bias_ih", zero) + w.get("bias_hh", zero)
    if layer_norm:
        pre = ln(x @ w["weight_ih"].T) * w["ln_weight_ih"] + ln(h @ w["weight_hh"].T) * w["ln_weight_hh"] + bias
    else:
        pre = x @ w["weight_ih"].T + h @ w["weight_hh"].T + bias
    names = ("f", "g", "o") if coupled else ("i", "f", "g", "o")
    gate = dict(zip(names, pre.split(c.shape[1], dim=1)))  # pre-activations, each (B, H)
    peep = dict.fromkeys("ifo", zero)
    if peephole:
        peep.update(zip([n for n in names if n != "g"], w["weight_peephole"].split(c.shape[1])))

    f = torch.sigmoid(gate["f"] + peep["f"] * c)
    i = 1 - f if coupled else torch.sigmoid(gate["i"] + peep["i"] * c)
    g = act(gate["g"])
    c_new = f * c + i * g
    o = torch.sigmoid(gate["o"] + peep["o"] * c_new)
    c_out = ln(c_new) * w["ln_weight_c"] + w.get("ln_bias_c", zero) if layer_norm else c_new
    h_new = o * act(c_out)
    if proj_size:
        h_new = h_new @ w["weight_hr"].T
    return h_new, c_new


@pytest.mark.parametrize("step", LSTM_STEPS, ids=step_id)
def test_lstm_cell_variants_match_docstring_equations(step):
    options = dict(peephole=step.peephole, coupled=step.coupled, layer_norm=step.layer_norm,
                   activation=step.activation, proj_size=step.proj_size)
    cell = rnnkit.LSTMCell(I, H, bias=step.bias, dtype=DTYPE, **options)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # random values everywhere, so that gains, biases and peepholes all count
        for name, value in random_params(step, gen=gen).items():
            getattr(cell, name).copy_(value)
    assert {n for n, _ in cell.named_parameters()} == set(step.param_shapes(I))
    x = torch.randn(B, I, generator=gen, dtype=DTYPE)
    h, c = random_state(step, B, gen)
    h_new, c_new = cell(x, (h, c))
    w = {n: v.detach() for n, v in cell.named_parameters()}
    ref_h, ref_c = docstring_lstm(x, h, c, w, **options)
    assert_rel(h_new, ref_h, TOL, "h'")
    assert_rel(c_new, ref_c, TOL, "c'")


def docstring_gru(x, h, w, *, reset_after, activation):
    """GRUStep's docstring equations. x (B, I), h (B, H)."""
    act = torch.tanh if activation == "tanh" else (lambda v: v / (1 + v.abs()))
    zero = torch.zeros(())
    (w_ir, w_iz, w_in), (w_hr, w_hz, w_hn) = w["weight_ih"].chunk(3), w["weight_hh"].chunk(3)
    (b_ir, b_iz, b_in) = w["bias_ih"].chunk(3) if "bias_ih" in w else (zero,) * 3
    (b_hr, b_hz, b_hn) = w["bias_hh"].chunk(3) if "bias_hh" in w else (zero,) * 3
    r = torch.sigmoid(x @ w_ir.T + b_ir + h @ w_hr.T + b_hr)
    z = torch.sigmoid(x @ w_iz.T + b_iz + h @ w_hz.T + b_hz)
    if reset_after:
        n = act(x @ w_in.T + b_in + r * (h @ w_hn.T + b_hn))
    else:
        n = act(x @ w_in.T + b_in + (r * h) @ w_hn.T + b_hn)
    return (1 - z) * n + z * h


@pytest.mark.parametrize("step", GRU_STEPS, ids=step_id)
def test_gru_cell_variants_match_docstring_equations(step):
    cell = rnnkit.GRUCell(I, H, bias=step.bias, dtype=DTYPE, reset_after=step.reset_after,
                          activation=step.activation)
    x, h = torch.randn(B, I, dtype=DTYPE), torch.randn(B, H, dtype=DTYPE)
    w = {n: v.detach() for n, v in cell.named_parameters()}
    ref = docstring_gru(x, h, w, reset_after=step.reset_after, activation=step.activation)
    assert_rel(cell(x, h), ref, TOL, "h'")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_rnn_cell_softsign_matches_equation(bias):
    cell = rnnkit.RNNCell(I, H, bias=bias, nonlinearity="softsign", dtype=DTYPE)
    x, h = torch.randn(B, I, dtype=DTYPE), torch.randn(B, H, dtype=DTYPE)
    w = {n: v.detach() for n, v in cell.named_parameters()}
    v = x @ w["weight_ih"].T + h @ w["weight_hh"].T + (w["bias_ih"] + w["bias_hh"] if bias else 0)
    assert_rel(cell(x, h), v / (1 + v.abs()), TOL, "h'")


# -- parameters: forget-gate bias, peephole shape -------------------------------------------------

def forget_slice(coupled: bool) -> slice:
    """Gate order i, f, g, o (f is rows H:2H) or, coupled, f, g, o (f is rows 0:H)."""
    return slice(0, H) if coupled else slice(H, 2 * H)


@pytest.mark.parametrize("value", [1.0, -0.75])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["noln", "ln"])
@pytest.mark.parametrize("coupled", [False, True], ids=["ifgo", "cifg"])
def test_forget_bias_sets_the_forget_slice(coupled, layer_norm, value):
    cell = rnnkit.LSTMCell(I, H, dtype=DTYPE, forget_bias=value, coupled=coupled, layer_norm=layer_norm)
    layer = rnnkit.LSTM(I, H, num_layers=2, bidirectional=True, dtype=DTYPE, forget_bias=value,
                        coupled=coupled, layer_norm=layer_norm)
    pairs = [(cell.bias_ih, cell.bias_hh)]
    for suffix in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        pairs.append((getattr(layer, "bias_ih" + suffix), getattr(layer, "bias_hh" + suffix)))
    f = forget_slice(coupled)
    for b_ih, b_hh in pairs:
        total = (b_ih + b_hh).detach()
        assert_rel(total[f], torch.full((H,), value, dtype=DTYPE), 1e-15, "forget bias")
        others = torch.cat([total[: f.start], total[f.stop:]])
        assert not torch.isclose(others, torch.tensor(value, dtype=DTYPE)).all(), "other gates were set too"
    # reset_parameters keeps the promise
    cell.reset_parameters()
    assert_rel((cell.bias_ih + cell.bias_hh).detach()[f], torch.full((H,), value, dtype=DTYPE), 1e-15, "after reset")


@pytest.mark.parametrize("coupled", [False, True], ids=["ifgo", "cifg"])
def test_forget_bias_is_the_forget_gate(coupled):
    """Behavioural: a large forget bias saturates f, which only works if the slice it sets is the
    one the step reads as f: then c' = c + i * g (coupled: c' = c, as 1 - f = 0)."""
    big = 50.0
    cell = rnnkit.LSTMCell(I, H, dtype=DTYPE, forget_bias=big, coupled=coupled)
    with torch.no_grad():  # zero the weights, so the bias alone drives the gates
        cell.weight_ih.zero_()
        cell.weight_hh.zero_()
    c = torch.randn(B, H, dtype=DTYPE)
    _, c_new = cell(torch.randn(B, I, dtype=DTYPE), (torch.randn(B, H, dtype=DTYPE), c))
    # with f = sigmoid(50) ~ 1, c' = c up to the input-gate term i * g (coupled: (1 - f) * g ~ 0)
    if coupled:
        assert_rel(c_new, c, 1e-12, "c' with f saturated")
    else:
        bias = (cell.bias_ih + cell.bias_hh).detach()  # the gates' pre-activations: i, f, g, o
        i, g = torch.sigmoid(bias[:H]), torch.tanh(bias[2 * H:3 * H])
        assert_rel(c_new, c + i * g, 1e-12, "c' with f saturated")


@pytest.mark.parametrize("hidden", [2, 3])
@pytest.mark.parametrize("coupled", [False, True], ids=["ifgo", "cifg"])
def test_peephole_parameter_shape(coupled, hidden):
    G = len("fgo" if coupled else "ifgo")
    cell = rnnkit.LSTMCell(I, hidden, peephole=True, coupled=coupled)
    assert cell.weight_ih.shape == (G * hidden, I)
    assert cell.weight_peephole.shape == ((G - 1) * hidden,)
    layer = rnnkit.LSTM(I, hidden, num_layers=2, peephole=True, coupled=coupled)
    assert layer.weight_peephole_l0.shape == layer.weight_peephole_l1.shape == ((G - 1) * hidden,)
    assert not hasattr(rnnkit.LSTMCell(I, hidden, coupled=coupled), "weight_peephole")
