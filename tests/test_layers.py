"""Layers against torch.nn with copied state dicts: outputs, final states and every gradient."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from conftest import assert_rel
from rnnkit.nn import layers as layers_module

# (name, rnnkit class, torch.nn class, constructor keywords): every configuration torch.nn has
TORCH_CONFIGS = [
    ("rnn-tanh", rnnkit.RNN, torch.nn.RNN, {"nonlinearity": "tanh"}),
    ("rnn-relu", rnnkit.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
    ("lstm", rnnkit.LSTM, torch.nn.LSTM, {}),
    ("lstm-proj", rnnkit.LSTM, torch.nn.LSTM, {"proj_size": 2}),
    ("gru", rnnkit.GRU, torch.nn.GRU, {}),
]
I, H, T, B = 3, 4, 5, 3
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def make_pair(ours_cls, ref_cls, kwargs, dtype=torch.float64, impl="engine", **options):
    """An rnnkit layer and a torch.nn layer holding the same weights (loaded torch -> rnnkit)."""
    ref = ref_cls(I, H, dtype=dtype, **kwargs, **options)
    ours = ours_cls(I, H, dtype=dtype, **kwargs, **options, impl=impl)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def initial_state(layer, batch, dtype, batched=True):
    shapes = [(layer.num_layers * (2 if layer.bidirectional else 1),) + ((batch,) if batched else ()) + (size,)
              for size in ((layer.proj_size or layer.hidden_size, layer.hidden_size)
                           if isinstance(layer, (torch.nn.LSTM, rnnkit.LSTM)) else (layer.hidden_size,))]
    states = [torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes]
    return states


def run(layer, x, states, input_kind, lengths):
    """Call a layer the way `input_kind` says; return (padded output, final states)."""
    hx = None
    if states:
        hx = tuple(states) if len(states) == 2 else states[0]
    if input_kind == "packed":
        packed = pack_padded_sequence(x, lengths, batch_first=layer.batch_first, enforce_sorted=False)
        out, h = layer(packed, hx)
        out = pad_packed_sequence(out, batch_first=layer.batch_first, total_length=T)[0]
    elif input_kind == "lengths":
        out, h = layer(x, hx, lengths=lengths)
    else:
        out, h = layer(x, hx)
    return out, (list(h) if isinstance(h, tuple) else [h])


def reference_run(layer, x, states, input_kind, lengths):
    """torch.nn has no lengths=; its equivalent is a packed sequence."""
    return run(layer, x, states, "packed" if input_kind == "lengths" else input_kind, lengths)


def loss_of(out, finals, weights):
    return sum((t * w).sum() for t, w in zip([out, *finals], weights))


IMPLS = ["engine", "native"]  # both paths the dispatcher can choose give torch.nn's numbers


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("input_kind", ["padded", "packed", "lengths", "unbatched"])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("name,ours_cls,ref_cls,kwargs", TORCH_CONFIGS, ids=[c[0] for c in TORCH_CONFIGS])
def test_parity_with_torch_float64(name, ours_cls, ref_cls, kwargs, num_layers, bidirectional, batch_first,
                                   bias, with_state, input_kind, impl):
    check_parity(ours_cls, ref_cls, kwargs, torch.float64, impl, input_kind, with_state,
                 num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("input_kind", ["padded", "lengths"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("name,ours_cls,ref_cls,kwargs", TORCH_CONFIGS, ids=[c[0] for c in TORCH_CONFIGS])
def test_parity_with_torch_float32(name, ours_cls, ref_cls, kwargs, bidirectional, input_kind, impl):
    check_parity(ours_cls, ref_cls, kwargs, torch.float32, impl, input_kind, True,
                 num_layers=2, bidirectional=bidirectional, batch_first=True)


def check_parity(ours_cls, ref_cls, kwargs, dtype, impl, input_kind, with_state, **options):
    ours, ref = make_pair(ours_cls, ref_cls, kwargs, dtype, impl, **options)
    batched = input_kind != "unbatched"
    shape = ((B, T, I) if options.get("batch_first") else (T, B, I)) if batched else (T, I)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    lengths = torch.tensor([3, 5, 1])  # unsorted, with the longest not first
    states = initial_state(ref, B, dtype, batched) if with_state else []

    out, finals = run(ours, x, states, input_kind, lengths)
    ref_out, ref_finals = reference_run(ref, x, states, input_kind, lengths)
    tol = TOL[dtype]
    assert_rel(out, ref_out, tol, "output")
    for i, (a, e) in enumerate(zip(finals, ref_finals)):
        assert_rel(a, e, tol, f"final state {i}")

    weights = [torch.randn_like(t) for t in [ref_out, *ref_finals]]
    inputs = [x, *states]
    grads = torch.autograd.grad(loss_of(out, finals, weights), inputs + list(ours.parameters()))
    ref_grads = torch.autograd.grad(loss_of(ref_out, ref_finals, weights), inputs + list(ref.parameters()))
    names = ["input"] + [f"state {i}" for i in range(len(states))] + [n for n, _ in ours.named_parameters()]
    for what, a, e in zip(names, grads, ref_grads):
        assert_rel(a, e, tol, f"grad {what}")


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("name,ours_cls,ref_cls,kwargs", TORCH_CONFIGS, ids=[c[0] for c in TORCH_CONFIGS])
def test_state_dicts_load_both_ways(name, ours_cls, ref_cls, kwargs, bidirectional):
    ours = ours_cls(I, H, 2, bidirectional=bidirectional, **kwargs)
    ref = ref_cls(I, H, 2, bidirectional=bidirectional, **kwargs)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for key, value in ref.state_dict().items():
        assert ours.state_dict()[key].shape == value.shape, key
    ref.load_state_dict(ours.state_dict())  # rnnkit -> torch.nn, strict
    x = torch.randn(T, B, I)
    assert torch.equal(ours(x)[0], ours(x)[0])
    assert_rel(ref(x)[0], ours(x)[0], 1e-5, "rnnkit -> torch.nn")
    fresh = ours_cls(I, H, 2, bidirectional=bidirectional, **kwargs)
    fresh.load_state_dict(ref.state_dict())  # torch.nn -> rnnkit, strict
    assert_rel(fresh(x)[0], ref(x)[0], 1e-5, "torch.nn -> rnnkit")


@pytest.mark.parametrize("name,ours_cls,ref_cls,kwargs", TORCH_CONFIGS, ids=[c[0] for c in TORCH_CONFIGS])
def test_default_init_matches_torch_distribution(name, ours_cls, ref_cls, kwargs):
    """Same init as torch.nn: U(-1/sqrt(H), 1/sqrt(H)) for every parameter, same shapes."""
    hidden = 64
    ours, ref = ours_cls(8, hidden, 2, **kwargs), ref_cls(8, hidden, 2, **kwargs)
    bound = hidden ** -0.5
    for (n, p), (rn, rp) in zip(ours.named_parameters(), ref.named_parameters()):
        assert n == rn and p.shape == rp.shape
        assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound, n


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("name,ours_cls,ref_cls,kwargs", TORCH_CONFIGS, ids=[c[0] for c in TORCH_CONFIGS])
def test_interlayer_dropout_matches_torch_in_training(name, ours_cls, ref_cls, kwargs, bidirectional):
    """torch.nn draws its inter-layer dropout masks the same way: same seed, same numbers."""
    ours, ref = make_pair(ours_cls, ref_cls, kwargs, num_layers=3, dropout=0.5, bidirectional=bidirectional)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(7)
    out, _ = ours(x)
    torch.manual_seed(7)
    ref_out, _ = ref(x)
    assert_rel(out, ref_out, 1e-10, "output")
    g = torch.randn_like(out)
    assert_rel(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref_out, x, g)[0], 1e-10, "grad input")


def test_dropout_is_vertical_only():
    """Dropout after every layer but the last, never inside the recurrence: a one-layer net and
    the last layer of a stack are unaffected, and eval mode turns it off."""
    with pytest.warns(UserWarning, match="dropout=0.5 has no effect with num_layers=1"):
        single = rnnkit.LSTM(I, H, dropout=0.5)
    x = torch.randn(T, B, I)
    single.train()
    assert torch.equal(single(x)[0], single.eval()(x)[0])

    stack = rnnkit.GRU(I, H, 2, dropout=0.5, dtype=torch.float64).train()
    x = x.double()
    torch.manual_seed(3)
    out, h_n = stack(x)
    # by hand: layer 0, then the same mask the seed gives, then layer 1
    first, second = rnnkit.GRU(I, H, dtype=torch.float64), rnnkit.GRU(H, H, dtype=torch.float64)
    sd = stack.state_dict()
    first.load_state_dict({k.replace("_l0", "_l0"): v for k, v in sd.items() if k.endswith("_l0")})
    second.load_state_dict({k.replace("_l1", "_l0"): v for k, v in sd.items() if k.endswith("_l1")})
    torch.manual_seed(3)
    y = F.dropout(first(x)[0], 0.5, training=True)
    assert_rel(out, second(y)[0], 1e-12, "stack == layer-by-layer with the mask between")
    assert not torch.equal(out, stack.eval()(x)[0])


@pytest.mark.parametrize("cls", [rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU])
def test_recurrent_dropout_is_variational(cls):
    """One mask per sequence on h entering W_hh, the same at every step; off in eval mode."""
    p = 0.4
    layer = cls(I, H, recurrent_dropout=p, dtype=torch.float64, impl="autograd").train()
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.manual_seed(5)
    out, _ = layer(x)
    torch.manual_seed(5)
    mask = torch.bernoulli(torch.full((B, H), 1 - p, dtype=torch.float64)) / (1 - p)
    w = dict(layer.named_parameters())
    h, c, outs = torch.zeros(B, H, dtype=torch.float64), torch.zeros(B, H, dtype=torch.float64), []
    for t in range(T):
        xi = x[t] @ w["weight_ih_l0"].T + w["bias_ih_l0"]
        hh = (h * mask) @ w["weight_hh_l0"].T + w["bias_hh_l0"]
        if cls is rnnkit.RNN:
            h = torch.tanh(xi + hh)
        elif cls is rnnkit.LSTM:
            i, f, g, o = (xi + hh).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        else:
            (xr, xz, xn), (hr, hz, hn) = xi.chunk(3, 1), hh.chunk(3, 1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            h = (1 - z) * torch.tanh(xn + r * hn) + z * h  # z * h: the unmasked state
        outs.append(h)
    assert_rel(out, torch.stack(outs), 1e-12, "hand-run loop with the same mask")
    # eval mode is exactly the layer without recurrent dropout
    plain = cls(I, H, dtype=torch.float64)
    plain.load_state_dict(layer.state_dict())
    assert_rel(layer.eval()(x)[0], plain(x)[0], 1e-12, "eval mode == no recurrent dropout")


def test_explicit_bptt_with_recurrent_dropout_matches_autograd():
    layer = rnnkit.LSTM(I, H, 2, bidirectional=True, recurrent_dropout=0.3, dtype=torch.float64).train()
    ref = rnnkit.LSTM(I, H, 2, bidirectional=True, recurrent_dropout=0.3, dtype=torch.float64, impl="autograd").train()
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([2, 5, 0])
    results = []
    for m in (layer, ref):
        torch.manual_seed(11)
        out, (h, c) = m(x, lengths=lengths)
        results.append(torch.autograd.grad((out ** 2).sum() + h.sum() + c.sum(), [x, *m.parameters()]))
    for a, e in zip(*results):
        assert_rel(a, e, 1e-10)


def test_lengths_zero_length_sequence_returns_initial_state():
    layer = rnnkit.LSTM(I, H, 2, bidirectional=True)
    x = torch.randn(T, B, I)
    h0, c0 = torch.randn(4, B, H), torch.randn(4, B, H)
    out, (h, c) = layer(x, (h0, c0), lengths=torch.tensor([0, 5, 2]))
    assert torch.equal(h[:, 0], h0[:, 0]) and torch.equal(c[:, 0], c0[:, 0])
    assert torch.all(out[:, 0] == 0) and torch.all(out[2:, 2] == 0)


def test_lengths_equal_running_each_sequence_alone():
    layer = rnnkit.GRU(I, H, 2, bidirectional=True, batch_first=True, dtype=torch.float64)
    x = torch.randn(B, T, I, dtype=torch.float64)
    lengths = torch.tensor([4, 1, 5])
    out, h = layer(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        alone_out, alone_h = layer(x[b:b + 1, :n])
        assert_rel(out[b:b + 1, :n], alone_out, 1e-12, "valid steps")
        assert torch.all(out[b, n:] == 0)
        assert_rel(h[:, b:b + 1], alone_h, 1e-12, "final state")


def test_lengths_accepts_any_integer_tensor_or_list():
    layer = rnnkit.RNN(I, H)
    x = torch.randn(T, B, I)
    expected = layer(x, lengths=torch.tensor([1, 2, 3]))[0]
    for lengths in ([1, 2, 3], torch.tensor([1, 2, 3], dtype=torch.int32)):
        assert torch.equal(layer(x, lengths=lengths)[0], expected)


def test_drop_in_replacement_in_a_training_loop():
    """The same training code, with nn.LSTM swapped for rnnkit.LSTM, walks the same path."""

    class Tagger(torch.nn.Module):
        def __init__(self, rnn_cls):
            super().__init__()
            self.rnn = rnn_cls(I, H, 2, batch_first=True, bidirectional=True, dtype=torch.float64)
            self.head = torch.nn.Linear(2 * H, 3, dtype=torch.float64)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    torch.manual_seed(0)
    ref = Tagger(torch.nn.LSTM)
    ours = Tagger(rnnkit.LSTM)
    ours.load_state_dict(ref.state_dict())
    x, y = torch.randn(4, T, I, dtype=torch.float64), torch.randint(0, 3, (4, T))
    for model in (ref, ours):
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(model(x).reshape(-1, 3), y.reshape(-1)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    for (n, a), (_, e) in zip(ours.named_parameters(), ref.named_parameters()):
        assert_rel(a, e, 1e-9, n)


def test_torch_nn_compat_attributes():
    layer = rnnkit.LSTM(I, H, 2, bidirectional=True, proj_size=2)
    ref = torch.nn.LSTM(I, H, 2, bidirectional=True, proj_size=2)
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size", "mode", "_flat_weights_names"):
        assert getattr(layer, attr) == getattr(ref, attr), attr
    assert [[p.shape for p in ps] for ps in layer.all_weights] == [[p.shape for p in ps] for ps in ref.all_weights]
    layer.flatten_parameters()
    assert rnnkit.RNN(I, H, nonlinearity="relu").mode == torch.nn.RNN(I, H, nonlinearity="relu").mode


# -- variants: rnnkit-only configurations run through the layer machinery -----------------

VARIANTS = [
    (rnnkit.RNN, {"nonlinearity": "softsign"}),
    *[(rnnkit.LSTM, dict(zip(("peephole", "coupled", "layer_norm", "activation", "proj_size"), combo)))
      for combo in itertools.product([False, True], [False, True], [False, True], ["tanh", "softsign"], [0, 2])],
    (rnnkit.GRU, {"reset_after": False}),
    (rnnkit.GRU, {"activation": "softsign"}),
    (rnnkit.GRU, {"reset_after": False, "activation": "softsign"}),
]


@pytest.mark.parametrize("cls,kwargs", VARIANTS, ids=[f"{c.__name__}-{k}" for c, k in VARIANTS])
def test_variants_explicit_bptt_matches_autograd_through_the_layer(cls, kwargs):
    options = dict(num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64)
    ours = cls(I, H, **kwargs, **options)
    ref = cls(I, H, **kwargs, **options, impl="autograd")
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 0, 3])
    results = []
    for m in (ours, ref):
        out, state = m(x, lengths=lengths)
        finals = list(state) if isinstance(state, tuple) else [state]
        weights = [torch.ones_like(t).uniform_(-1, 1, generator=torch.Generator().manual_seed(i))
                   for i, t in enumerate([out, *finals])]
        results.append((out, finals, torch.autograd.grad(loss_of(out, finals, weights), [x, *m.parameters()])))
    (out, finals, grads), (ref_out, ref_finals, ref_grads) = results
    assert_rel(out, ref_out, 1e-12, "output")
    for a, e in zip(finals, ref_finals):
        assert_rel(a, e, 1e-12, "final")
    for a, e in zip(grads, ref_grads):
        assert_rel(a, e, 1e-10, "grad")


def test_variant_parameter_names_follow_torch_convention():
    layer = rnnkit.LSTM(I, H, 2, bidirectional=True, peephole=True, coupled=True, layer_norm=True, proj_size=2)
    names = dict(layer.named_parameters())
    assert names["weight_ih_l0"].shape == (3 * H, I)
    assert names["weight_hh_l1_reverse"].shape == (3 * H, 2)
    assert names["weight_ih_l1"].shape == (3 * H, 2 * 2)
    assert names["weight_peephole_l1_reverse"].shape == (2 * H,)
    assert names["weight_hr_l0"].shape == (2, H)
    assert {"ln_weight_ih_l0", "ln_weight_hh_l0", "ln_weight_c_l0", "ln_bias_c_l0"} <= set(names)


@pytest.mark.parametrize("coupled", [False, True])
def test_forget_bias_init(coupled):
    layer = rnnkit.LSTM(I, H, 2, bidirectional=True, forget_bias=1.5, coupled=coupled)
    f = slice(0, H) if coupled else slice(H, 2 * H)
    for k in ("l0", "l0_reverse", "l1", "l1_reverse"):
        total = getattr(layer, f"bias_ih_{k}")[f] + getattr(layer, f"bias_hh_{k}")[f]
        assert torch.allclose(total, torch.full((H,), 1.5))


def test_unbatched_matches_batch_of_one():
    layer = rnnkit.LSTM(I, H, 2, bidirectional=True, peephole=True)
    x, h0, c0 = torch.randn(T, I), torch.randn(4, H), torch.randn(4, H)
    out, (h, c) = layer(x, (h0, c0))
    out1, (h1, c1) = layer(x[:, None], (h0[:, None], c0[:, None]))
    assert torch.equal(out, out1[:, 0]) and torch.equal(h, h1[:, 0]) and torch.equal(c, c1[:, 0])


def test_empty_sequence_and_empty_batch():
    layer = rnnkit.GRU(I, H, 2)
    out, h = layer(torch.randn(0, B, I))
    assert out.shape == (0, B, H) and torch.equal(h, torch.zeros(2, B, H))
    out, h = layer(torch.randn(T, 0, I))
    assert out.shape == (T, 0, H) and h.shape == (2, 0, H)


# -- bad input: errors name the argument and the value received ---------------------------

BAD_CONSTRUCTORS = [
    (lambda: rnnkit.RNN(3, 4, nonlinearity="sigmoid"), ValueError, "nonlinearity.*'sigmoid'"),
    (lambda: rnnkit.LSTM(3, 4, activation="relu"), ValueError, "activation.*'relu'"),
    (lambda: rnnkit.GRU(3, 4, activation="gelu"), ValueError, "activation.*'gelu'"),
    (lambda: rnnkit.LSTM(3, 4, dropout=1.5), ValueError, r"dropout.*\[0, 1\].*1.5"),
    (lambda: rnnkit.LSTM(3, 4, dropout=-0.1), ValueError, r"dropout.*-0.1"),
    (lambda: rnnkit.GRU(3, 4, recurrent_dropout=1.5), ValueError, r"recurrent_dropout.*1.5"),
    (lambda: rnnkit.LSTM(3, 4, proj_size=4), ValueError, r"proj_size.*hidden_size \(4\).*4"),
    (lambda: rnnkit.LSTM(3, 4, proj_size=-1), ValueError, r"proj_size.*-1"),
    (lambda: rnnkit.LSTM(3, 0), ValueError, r"hidden_size.*0"),
    (lambda: rnnkit.RNN(0, 4), ValueError, r"input_size.*0"),
    (lambda: rnnkit.GRU(3, 4, num_layers=0), ValueError, r"num_layers.*0"),
    (lambda: rnnkit.GRU(3, 4.5), ValueError, r"hidden_size.*4.5"),
    (lambda: rnnkit.LSTM(3, 4, bias=False, forget_bias=1.0), ValueError, r"forget_bias=1.0 needs bias=True"),
    (lambda: rnnkit.LSTM(3, 4, forget_bias="one"), ValueError, r"forget_bias.*'one'"),
    (lambda: rnnkit.LSTM(3, 4, impl="fast"), ValueError, r"impl.*'fast'"),
    (lambda: rnnkit.LSTM(3, 4, peephole=True, impl="native"), ValueError, r"impl='native'.*peephole=True"),
    (lambda: rnnkit.LSTMCell(3, 4, proj_size=5), ValueError, r"proj_size.*5"),
    (lambda: rnnkit.RNNCell(3, 4, nonlinearity="elu"), ValueError, r"nonlinearity.*'elu'"),
    (lambda: rnnkit.GRU(3, 4, layer_norm=True), TypeError, r"layer_norm"),
]


@pytest.mark.parametrize("build,error,message", BAD_CONSTRUCTORS)
def test_bad_constructor_arguments(build, error, message):
    with pytest.raises(error, match=message):
        build()


def _lstm(**kw):
    return rnnkit.LSTM(I, H, 2, **kw)


BAD_CALLS = [
    (lambda: _lstm()(torch.randn(T, B, I + 1)), ValueError, r"4 features.*input_size=3"),
    (lambda: _lstm()(torch.randn(T, B, 1, I)), ValueError, r"3-D.*2-D.*\(5, 3, 1, 3\)"),
    (lambda: _lstm()(torch.randn(T)), ValueError, r"3-D.*2-D.*\(5,\)"),
    (lambda: _lstm()([[1.0]]), TypeError, r"Tensor or PackedSequence.*list"),
    (lambda: _lstm()(torch.randn(T, B, I, dtype=torch.float64)), ValueError, r"dtype torch.float64.*float32"),
    (lambda: _lstm()(torch.randn(T, B, I), lengths=torch.tensor([1, 2, T + 1])), ValueError, r"\[0, 5\].*max 6"),
    (lambda: _lstm()(torch.randn(T, B, I), lengths=torch.tensor([1, -1, 2])), ValueError, r"min -1"),
    (lambda: _lstm()(torch.randn(T, B, I), lengths=torch.tensor([1, 2])), ValueError, r"2 entries.*batch size 3"),
    (lambda: _lstm()(torch.randn(T, B, I), lengths=torch.tensor([1.0, 2.0, 3.0])), ValueError, r"integer.*float32"),
    (lambda: _lstm()(torch.randn(T, B, I), lengths=torch.ones(3, 1, dtype=torch.long)), ValueError, r"1-D.*\(3, 1\)"),
    (lambda: _lstm()(torch.randn(T, B, I), torch.zeros(2, B, H)), TypeError, r"tuple \(h_0, c_0\).*Tensor"),
    (lambda: _lstm()(torch.randn(T, B, I), (torch.zeros(2, B, H), torch.zeros(1, B, H))), ValueError,
     r"c_0 must have shape \(2, 3, 4\).*\(1, 3, 4\)"),
    (lambda: rnnkit.GRU(I, H)(torch.randn(T, B, I), torch.zeros(1, B + 1, H)), ValueError,
     r"h_0 must have shape \(1, 3, 4\).*\(1, 4, 4\)"),
    (lambda: rnnkit.GRU(I, H)(torch.randn(T, I), torch.zeros(1, B, H)), ValueError, r"h_0 must have shape \(1, 4\)"),
    (lambda: rnnkit.GRU(I, H)(torch.randn(T, B, I), torch.zeros(1, B, H, dtype=torch.float64)), ValueError,
     r"h_0 has dtype torch.float64"),
    (lambda: rnnkit.GRU(I, H)(pack_padded_sequence(torch.randn(T, B, I), [5, 4, 1]), lengths=[5, 4, 1]),
     ValueError, r"lengths= cannot be given with a PackedSequence"),
    (lambda: rnnkit.LSTMCell(I, H)(torch.randn(B, I + 2)), ValueError, r"\(batch, 3\).*\(3, 5\)"),
    (lambda: rnnkit.LSTMCell(I, H)(torch.randn(B, I), torch.zeros(B, H)), TypeError, r"tuple \(h, c\)"),
    (lambda: rnnkit.GRUCell(I, H)(torch.randn(B, I), torch.zeros(B, H + 1)), ValueError, r"h must have shape \(3, 4\).*\(3, 5\)"),
]


@pytest.mark.parametrize("call,error,message", BAD_CALLS)
def test_bad_call_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


# -- float64 gradcheck through whole layers: every layer option, explicit BPTT -------------

GRADCHECK_CELLS = [
    (rnnkit.RNN, {"nonlinearity": "softsign"}),
    (rnnkit.LSTM, {}),
    (rnnkit.LSTM, {"peephole": True, "layer_norm": True, "proj_size": 1}),
    (rnnkit.LSTM, {"coupled": True, "peephole": True, "activation": "softsign"}),
    (rnnkit.GRU, {}),
    (rnnkit.GRU, {"reset_after": False}),
]
LAYER_OPTIONS = {
    "2-layers": dict(num_layers=2),
    "bidirectional": dict(bidirectional=True),
    "batch_first-no-bias": dict(batch_first=True, bias=False),
    "lengths-bidirectional": dict(bidirectional=True, lengths=torch.tensor([3, 0, 2])),
}


@pytest.mark.parametrize("option", list(LAYER_OPTIONS))
@pytest.mark.parametrize("cls,kwargs", GRADCHECK_CELLS, ids=[f"{c.__name__}-{k}" for c, k in GRADCHECK_CELLS])
def test_gradcheck_through_layer(cls, kwargs, option):
    options = dict(LAYER_OPTIONS[option])
    lengths = options.pop("lengths", None)
    layer = cls(2, 2, **kwargs, **options, dtype=torch.float64)
    names = [n for n, _ in layer.named_parameters()]
    x = torch.randn(3, 3, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(layer.num_layers * layer.num_directions, 3, layer.proj_size or 2,
                     dtype=torch.float64, requires_grad=True)

    def f(x, h0, *params):
        hx = (h0, torch.ones(h0.shape[:2] + (2,), dtype=h0.dtype)) if cls is rnnkit.LSTM else h0
        out, state = torch.func.functional_call(layer, dict(zip(names, params)), (x, hx), {"lengths": lengths})
        return (out, *state) if isinstance(state, tuple) else (out, state)

    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    assert torch.autograd.gradcheck(f, (x, h0, *params))


@pytest.mark.parametrize("cls, kwargs", [
    (rnnkit.LSTM, {}), (rnnkit.LSTM, {"peephole": True, "proj_size": 3}), (rnnkit.LSTM, {"layer_norm": True}),
    (rnnkit.LSTM, {"coupled": True, "activation": "softsign"}), (rnnkit.GRU, {"reset_after": False}),
    (rnnkit.RNN, {"nonlinearity": "relu"}),
])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_inference_in_chunks_equals_one_projection(cls, kwargs, with_lengths, monkeypatch):
    """Without autograd, the engine projects and runs a few steps at a time (layers._infer_in_chunks);
    with autograd it projects all steps at once. Chunks of 1 to 4 steps here, against the latter."""
    torch.manual_seed(0)
    layer = cls(3, 5, 2, bidirectional=True, impl="engine", dtype=torch.float64, **kwargs).eval()
    x = torch.randn(11, 4, 3, dtype=torch.float64)
    lengths = torch.tensor([11, 0, 7, 3]) if with_lengths else None
    want_out, want_state = layer(x, lengths=lengths)  # parameters require grad: the whole projection
    for chunk_steps in (1, 4):
        monkeypatch.setattr(layers_module, "INFERENCE_CHUNK_BYTES", chunk_steps * 4 * layer.cell.gates * 5 * 8)
        with torch.no_grad():
            out, state = layer(x, lengths=lengths)
        torch.testing.assert_close(out, want_out.detach(), rtol=1e-12, atol=1e-12)
        for a, b in zip(state if isinstance(state, tuple) else (state,),
                        want_state if isinstance(want_state, tuple) else (want_state,)):
            torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-12)
