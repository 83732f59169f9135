"""torch.nn's documented behaviours of RNN/LSTM/GRU and their cells, run against rnnkit's classes.

Modelled on the RNN cases of PyTorch's own tests (test/test_nn.py: rnn_args_check, projections on
GRU/RNN, cells without broadcasting, input size zero, dropout, weight norm; the module database's
batched/unbatched and pickling checks): where torch.nn raises, rnnkit raises an exception of the same
type (with its own message naming the argument and the value); where torch.nn runs, rnnkit gives the
same shapes and numbers. The deliberate differences are tested at the end.
"""
import copy
import io
import pickle

import pytest
import torch
from torch import nn

import rnnkit
from conftest import assert_rel

PAIRS = [(nn.RNN, rnnkit.RNN), (nn.LSTM, rnnkit.LSTM), (nn.GRU, rnnkit.GRU)]
CELL_PAIRS = [(nn.RNNCell, rnnkit.RNNCell), (nn.LSTMCell, rnnkit.LSTMCell), (nn.GRUCell, rnnkit.GRUCell)]
IDS = [ours.__name__ for _, ours in PAIRS]
CELL_IDS = [ours.__name__ for _, ours in CELL_PAIRS]


def _outcome(build):
    """None if build() runs, else the exception it raised."""
    try:
        build()
    except Exception as error:  # noqa: BLE001 - the type is what is compared
        return error
    return None


def _same_outcome(theirs, ours, value=None):
    """rnnkit fails where torch.nn fails, with an exception of torch.nn's type, and runs where it runs."""
    expected, got = _outcome(theirs), _outcome(ours)
    if expected is None:
        assert got is None, f"torch.nn runs, rnnkit raised {type(got).__name__}: {got}"
        return
    assert got is not None, f"torch.nn raised {type(expected).__name__}: {expected}; rnnkit ran"
    assert isinstance(got, type(expected)), f"torch.nn raised {type(expected).__name__}, rnnkit {type(got).__mro__}"
    if value is not None:
        assert repr(value) in str(got), f"rnnkit's message does not name the value {value!r}: {got}"


# -- constructor arguments ------------------------------------------------------------------

CONSTRUCTOR_CASES = [  # (args, kwargs, the value the message must name, or None)
    ((3, 4), {"dropout": 1}, None), ((3, 4, 2), {"dropout": 1.0}, None), ((3, 4, 2), {"dropout": 0.5}, None),
    ((3, 4, 2), {"dropout": 1.5}, 1.5), ((3, 4, 2), {"dropout": -0.1}, -0.1), ((3, 4, 2), {"dropout": True}, True),
    ((3, 4, 2), {"dropout": "0.1"}, "0.1"),
    ((3, 0), {}, 0), ((3, -1), {}, -1), ((3, 2.0), {}, 2.0), ((0, 4), {}, 0), ((3.0, 4), {}, 3.0),
    ((3, 4, 0), {}, 0), ((3, 4, 2.0), {}, 2.0),
    ((3, 4), {"bias": "yes"}, "yes"), ((3, 4), {"bias": 1}, 1), ((3, 4), {"bias": False}, None),
    ((3, 4), {"batch_first": 1}, 1), ((3, 4), {"batch_first": "x"}, "x"), ((3, 4), {"batch_first": True}, None),
    ((3, 4), {"bidirectional": 1}, None), ((3, 4), {"bidirectional": "x"}, None),
    ((3, 4), {"proj_size": 1}, None), ((3, 4), {"proj_size": 0}, None), ((3, 4), {"proj_size": 4}, None),
    ((3, 4), {"proj_size": -1}, None),
    ((3, 4), {"nonlinearity": "relu"}, None), ((3, 4), {"nonlinearity": "sigmoid"}, None),
]


@pytest.mark.parametrize("theirs,ours", PAIRS, ids=IDS)
@pytest.mark.parametrize("args,kwargs,value", CONSTRUCTOR_CASES)
def test_constructor_arguments_as_torch_nn(theirs, ours, args, kwargs, value):
    with _quiet():
        _same_outcome(lambda: theirs(*args, **kwargs), lambda: ours(*args, **kwargs), value)


class _quiet:
    """Silences the one-layer dropout warning both libraries give."""

    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", UserWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


@pytest.mark.parametrize("theirs,ours", CELL_PAIRS, ids=CELL_IDS)
@pytest.mark.parametrize("args,kwargs", [((3, 0), {}), ((0, 4), {}), ((3, -1), {}), ((3, 2.0), {}),
                                         ((3, 4), {"bias": False}), ((3, 4), {"bias": "x"}),
                                         ((3, 4), {"nonlinearity": "relu"})])
def test_cell_constructor_arguments_as_torch_nn(theirs, ours, args, kwargs):
    _same_outcome(lambda: theirs(*args, **kwargs), lambda: ours(*args, **kwargs))


def test_unknown_nonlinearity_named():
    with pytest.raises(ValueError, match="nonlinearity.*'sigmoid'"):
        rnnkit.RNN(3, 4, nonlinearity="sigmoid")


def test_projections_errors_on_gru_and_rnn():
    for cls in (rnnkit.RNN, rnnkit.GRU):
        for proj in (0, 1):
            with pytest.raises(ValueError, match=f"only supported for LSTM.*proj_size={proj}"):
                cls(3, 4, proj_size=proj)


# -- forward: torch.nn's rnn_args_check and the cells' checks -----------------------------------

I, H, L, B, T, BAD = 3, 5, 2, 4, 6, 7


def _args_check_cases(mode):
    """(input shape, hidden shape(s)) that torch.nn refuses with RuntimeError (test_rnn_args_check)."""
    x, h = (T, B, I), (L, B, H)
    cases = [((T, BAD, I), h), (x, (L, BAD, H)), ((T, B, BAD), h), (x, (L, B, BAD)), (x, (BAD, B, H))]
    if mode != "LSTM":
        return [(xs, hs) for xs, hs in cases]
    out = []
    for xs, hs in cases:
        if hs == h:
            out.append((xs, (h, h)))
        else:
            out += [(xs, (hs, h)), (xs, (h, hs))]
    return out


@pytest.mark.parametrize("theirs,ours", PAIRS, ids=IDS)
def test_rnn_args_check(theirs, ours):
    mode = ours.__name__
    for x_shape, h_shape in _args_check_cases(mode):
        x = torch.randn(x_shape)
        hx = tuple(torch.randn(s) for s in h_shape) if mode == "LSTM" else torch.randn(h_shape)
        for cls in (theirs, ours):
            with pytest.raises(RuntimeError):
                cls(I, H, L)(x, hx)


@pytest.mark.parametrize("theirs,ours", PAIRS, ids=IDS)
def test_forward_errors_have_torch_nn_types(theirs, ours):
    lstm = ours is rnnkit.LSTM
    h = torch.randn(L, B, H)
    hx = (h, h) if lstm else h
    calls = [
        lambda m: m(torch.randn(T, B, I, 1)),  # 4-D: ValueError
        lambda m: m(torch.randn(T)),  # 1-D: ValueError
        lambda m: m(torch.randn(T, B, I, dtype=torch.float64)),  # dtype: ValueError
        lambda m: m(torch.randn(T, B, I), (torch.randn(L, H), torch.randn(L, H)) if lstm else torch.randn(L, H)),
        lambda m: m(torch.randn(T, I), hx),  # unbatched input, batched state: RuntimeError
        lambda m: m(torch.randn(T, B, I), (h, h.double()) if lstm else h.double()),  # RuntimeError
    ]
    if lstm:
        calls.append(lambda m: m(torch.randn(T, B, I), h))  # a tensor, not (h, c): RuntimeError
    for call in calls:
        _same_outcome(lambda: call(theirs(I, H, L)), lambda: call(ours(I, H, L)))


@pytest.mark.parametrize("theirs,ours", CELL_PAIRS, ids=CELL_IDS)
def test_cell_forward_errors_have_torch_nn_types(theirs, ours):
    """test_RNN_cell_no_broadcasting and the cells' input/hidden size checks."""
    lstm = ours is rnnkit.LSTMCell

    def state(*shape):
        return (torch.randn(shape), torch.randn(shape)) if lstm else torch.randn(shape)
    calls = [
        lambda m: m(torch.randn(B, I + 1), state(B, H)),  # input size: RuntimeError
        lambda m: m(torch.randn(B, I), state(B + 1, H)),  # hidden batch (no broadcasting): RuntimeError
        lambda m: m(torch.randn(B, I), state(1, H)),  # broadcastable hidden batch: RuntimeError
        lambda m: m(torch.randn(B, I), state(B, H + 1)),  # hidden size: RuntimeError
        lambda m: m(torch.randn(B, I), state(H)),  # unbatched state, batched input: RuntimeError
        lambda m: m(torch.randn(B, 2, I)),  # 3-D input: ValueError
    ]
    if lstm:
        calls.append(lambda m: m(torch.randn(B, I), (torch.randn(B, H), torch.randn(B + 1, H))))
    for call in calls:
        _same_outcome(lambda: call(theirs(I, H)), lambda: call(ours(I, H)))


@pytest.mark.parametrize("theirs,ours", CELL_PAIRS, ids=CELL_IDS)
@pytest.mark.parametrize("input_size,hidden_size", [(0, 4), (3, 0), (0, 0)])
def test_cells_with_zero_sizes_as_torch_nn(theirs, ours, input_size, hidden_size):
    """test_RNN_input_size_zero, and cells of no hidden units: the same shapes, values and gradients."""
    ref, cell = theirs(input_size, hidden_size), ours(input_size, hidden_size)
    cell.load_state_dict(ref.state_dict())
    x = torch.randn(B, input_size, requires_grad=True)
    a, b = ref(x), cell(x)
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    for want, got in zip(a, b):
        assert_rel(got, want, 1e-6, "output")
    sum(t.sum() for t in (*a, *b)).backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("theirs,ours", PAIRS, ids=IDS)
def test_input_size_zero_layers_refused_as_torch_nn(theirs, ours):
    _same_outcome(lambda: theirs(0, H), lambda: ours(0, H))


# -- numbers and shapes -------------------------------------------------------------------------

@pytest.mark.parametrize("theirs,ours", PAIRS, ids=IDS)
@pytest.mark.parametrize("p", [0.0, 0.276, 0.5, 1.0])
def test_dropout_values_and_changes_as_torch_nn(theirs, ours, p):
    """test_RNN_dropout / test_RNN_change_dropout: dropout in [0, 1], changed after construction, draws
    the masks torch.nn draws for the same seed; p = 1 zeroes the second layer's input."""
    ref, layer = theirs(I, H, 3), ours(I, H, 3)
    layer.load_state_dict(ref.state_dict())
    ref.dropout = layer.dropout = p
    x = torch.randn(T, B, I)
    for training in (True, False):
        ref.train(training), layer.train(training)
        torch.manual_seed(7)
        want = ref(x)
        torch.manual_seed(7)
        got = layer(x)
        assert_rel(got[0], want[0], 1e-5, f"output, dropout={p}, training={training}")


@pytest.mark.parametrize("theirs,ours", PAIRS, ids=IDS)
@pytest.mark.parametrize("options", [{}, {"bidirectional": True}, {"batch_first": True}, {"bias": False}])
def test_batched_and_unbatched_shapes_and_values_as_torch_nn(theirs, ours, options):
    ref, layer = theirs(I, H, L, **options), ours(I, H, L, **options)
    layer.load_state_dict(ref.state_dict())
    D = 2 if options.get("bidirectional") else 1
    for x in (torch.randn((B, T, I) if options.get("batch_first") else (T, B, I)), torch.randn(T, I)):
        want, got = ref(x), layer(x)
        assert_rel(got[0], want[0], 1e-5, "output")
        for a, e in zip(*(s if isinstance(s, tuple) else (s,) for s in (got[1], want[1]))):
            assert a.shape == e.shape and e.shape[0] == D * L
            assert_rel(a, e, 1e-5, "final state")


@pytest.mark.parametrize("ours", [rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU, rnnkit.MinGRU, rnnkit.LSTMCell,
                                  rnnkit.GRUCell])
def test_pickle_deepcopy_and_torch_save_round_trip(ours, tmp_path):
    layer = ours(I, H)
    x = torch.randn(B, I) if "Cell" in ours.__name__ else torch.randn(T, B, I)
    want = layer(x)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    copies = [pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer), torch.load(buffer, weights_only=False)]
    for other in copies:
        got = other(x)
        flat = lambda r: [t for t in (r if isinstance(r, tuple) else (r,)) for t in (t if isinstance(t, tuple) else (t,))]  # noqa: E731
        for a, e in zip(flat(got), flat(want)):
            assert torch.equal(a, e)


# -- torch.nn.utils ------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
def test_rnn_weight_norm():
    """PyTorch's test_rnn_weight_norm, verbatim in what it checks."""
    def check_weight_norm(layer, name, num_params):
        layer = torch.nn.utils.weight_norm(layer, name=name)
        assert sum(isinstance(p, torch.nn.Parameter) for p in layer._flat_weights) == num_params - 1
        layer = torch.nn.utils.remove_weight_norm(layer, name=name)
        assert sum(isinstance(p, torch.nn.Parameter) for p in layer._flat_weights) == num_params
        assert name in layer._parameters and layer._parameters[name] is not None
        assert name + "_v" not in layer._parameters and name + "_g" not in layer._parameters
        assert name in dict(layer.named_parameters())
        assert name + "_v" not in dict(layer.named_parameters())
    check_weight_norm(rnnkit.LSTM(32, 32), "weight_ih_l0", 4)
    check_weight_norm(rnnkit.LSTM(32, 32, proj_size=16), "weight_hr_l0", 5)


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
@pytest.mark.parametrize("theirs,ours", PAIRS, ids=IDS)
@pytest.mark.parametrize("impl", ["auto", "engine"])
@pytest.mark.parametrize("how", ["weight_norm", "parametrizations.weight_norm", "orthogonal"])
def test_reparametrized_weights_train_as_torch_nn(theirs, ours, impl, how):
    """weight_norm / parametrizations on weight_hh_l0: the forward uses the reparametrized weight and the
    gradients reach the reparametrization's own parameters, with torch.nn's numbers."""
    ref, layer = theirs(I, H, L), ours(I, H, L, impl=impl)
    layer.load_state_dict(ref.state_dict())
    for m in (ref, layer):
        if how == "weight_norm":
            torch.nn.utils.weight_norm(m, "weight_hh_l0")
        elif how == "parametrizations.weight_norm":
            torch.nn.utils.parametrizations.weight_norm(m, "weight_hh_l0")
        else:
            torch.nn.utils.parametrizations.orthogonal(m, "weight_hh_l1")
    x = torch.randn(T, 2, I)  # a small batch: auto runs the engine for GRU
    want, got = ref(x), layer(x)
    assert_rel(got[0], want[0], 1e-5, "output")
    want[0].square().sum().backward()
    got[0].square().sum().backward()
    named_ref = dict(ref.named_parameters())
    for name, param in layer.named_parameters():
        if name.endswith(".original") and how == "orthogonal":
            # torch's orthogonal map leaves part of this gradient undetermined: two torch.nn.GRU with the
            # same weights disagree there too. The output above and every other gradient pin it down.
            assert param.grad is not None and torch.isfinite(param.grad).all()
            continue
        assert_rel(param.grad, named_ref[name].grad, 1e-4, name)


@pytest.mark.parametrize("ours,theirs", [(rnnkit.LSTMCell, nn.LSTMCell), (rnnkit.GRUCell, nn.GRUCell)])
def test_weight_norm_on_cells(ours, theirs):
    ref, cell = theirs(I, H), ours(I, H)
    cell.load_state_dict(ref.state_dict())
    for m in (ref, cell):
        torch.nn.utils.parametrizations.weight_norm(m, "weight_hh")
    x = torch.randn(B, I)
    for a, e in zip(*(r if isinstance(r, tuple) else (r,) for r in (cell(x), ref(x)))):
        assert_rel(a, e, 1e-5, "output")


def test_layer_step_with_a_parametrized_weight():
    layer = rnnkit.LSTM(I, H, L)
    torch.nn.utils.parametrizations.weight_norm(layer, "weight_hh_l1")
    x = torch.randn(B, I)
    out, _ = layer.step(x)
    assert_rel(out, layer(x.unsqueeze(0))[0][0], 1e-6, "step vs forward")


# -- second order --------------------------------------------------------------------------------

@pytest.mark.parametrize("theirs,ours", PAIRS, ids=IDS)
@pytest.mark.parametrize("batch", [1, 2, 32])
def test_gradient_penalty_as_torch_nn(theirs, ours, batch):
    """A gradient penalty trains as with torch.nn on whatever path `auto` picks at this batch size."""
    ref, layer = theirs(I, H, L, dtype=torch.float64), ours(I, H, L, dtype=torch.float64)
    layer.load_state_dict(ref.state_dict())
    results = []
    for m in (ref, layer):
        x = torch.randn(T, batch, I, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                        requires_grad=True)
        g, = torch.autograd.grad(m(x)[0].sum(), x, create_graph=True)
        penalty = g.square().sum()
        results.append(torch.autograd.grad(penalty, [x, *m.parameters()]))
    for a, e in zip(results[1], results[0]):
        assert_rel(a, e, 1e-10, "second-order gradient")


# -- mixed precision -----------------------------------------------------------------------------

VARIANTS = [
    (rnnkit.LSTM, nn.LSTM, {}), (rnnkit.LSTM, nn.LSTM, {"peephole": True}), (rnnkit.LSTM, nn.LSTM, {"coupled": True}),
    (rnnkit.LSTM, nn.LSTM, {"layer_norm": True, "proj_size": 2}), (rnnkit.LSTM, nn.LSTM, {"activation": "softsign"}),
    (rnnkit.LSTM, nn.LSTM, {"proj_size": 2}), (rnnkit.LSTM, nn.LSTM, {"recurrent_dropout": 0.2}),
    (rnnkit.GRU, nn.GRU, {}), (rnnkit.GRU, nn.GRU, {"reset_after": False}), (rnnkit.GRU, nn.GRU, {"activation": "softsign"}),
    (rnnkit.RNN, nn.RNN, {}), (rnnkit.RNN, nn.RNN, {"nonlinearity": "relu"}), (rnnkit.RNN, nn.RNN, {"nonlinearity": "softsign"}),
]
TORCH_KEYS = {"proj_size"}


@pytest.mark.parametrize("ours,theirs,kwargs", VARIANTS, ids=[f"{o.__name__}-{k}" for o, _, k in VARIANTS])
@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl", ["auto", "engine"])
def test_autocast_as_torch_nn(ours, theirs, kwargs, batch, input_dtype, impl):
    """Under CPU autocast (bf16), with float32 input or with bf16 activations from an earlier layer, every
    variant returns the dtype torch.nn's layer of its family returns, at every batch size and on every
    path; its numbers stay near float32's, and the float32 parameters get float32 gradients."""
    layer = ours(I, H, L, bidirectional=True, impl=impl, **kwargs).train()
    ref = theirs(I, H, L, bidirectional=True, **{k: v for k, v in kwargs.items() if k in TORCH_KEYS})
    x = torch.randn(T, batch, I)
    torch.manual_seed(0)
    exact = layer(x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = ref(x.to(input_dtype))[0].dtype
        torch.manual_seed(0)
        out, state = layer(x.to(input_dtype), lengths=torch.randint(1, T + 1, (batch,)) if impl == "engine" else None)
        states = state if isinstance(state, tuple) else (state,)
    assert out.dtype == expected and all(s.dtype == expected for s in states)
    out.float().square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.parameters())
    if impl == "auto":
        assert_rel(out.float(), exact.detach(), 1e-1, "autocast vs float32")


@pytest.mark.parametrize("ours,theirs", [(rnnkit.RNNCell, nn.RNNCell), (rnnkit.LSTMCell, nn.LSTMCell),
                                         (rnnkit.GRUCell, nn.GRUCell)])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_cells_under_autocast_as_torch_nn(ours, theirs, input_dtype):
    ref, cell = theirs(I, H), ours(I, H)
    cell.load_state_dict(ref.state_dict())
    x = torch.randn(B, I).to(input_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = ref(x), cell(x)
    for a, e in zip(*(r if isinstance(r, tuple) else (r,) for r in (got, want))):
        assert a.dtype == e.dtype
        assert_rel(a.float(), e.float(), 2e-2, "output")


@pytest.mark.parametrize("ours", [rnnkit.MinGRU, rnnkit.MinLSTM])
def test_minimal_layers_under_autocast(ours):
    layer = ours(I, H, L)
    x = torch.randn(T, B, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h = layer(x.bfloat16(), torch.zeros(L, B, H))
    assert out.dtype == h.dtype == torch.bfloat16
    assert_rel(out.float(), layer(x)[0].detach(), 5e-2, "bf16 vs float32")


@pytest.mark.parametrize("ours", [rnnkit.LSTM, rnnkit.GRU])
def test_layer_step_under_autocast_follows_forward(ours):
    layer = ours(I, H, L)
    x = torch.randn(B, I, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer.step(x)
        want = layer(x.unsqueeze(0))[0][0]
    assert out.dtype == want.dtype
    assert_rel(out.float(), want.float(), 1e-2, "step vs forward")


# -- deliberate differences ---------------------------------------------------------------------

def test_bad_cell_nonlinearity_refused_at_construction():
    """torch.nn.RNNCell takes any nonlinearity and fails at the first forward; rnnkit refuses it at once."""
    nn.RNNCell(3, 4, nonlinearity="x")
    with pytest.raises(ValueError, match="nonlinearity.*'x'"):
        rnnkit.RNNCell(3, 4, nonlinearity="x")


@pytest.mark.parametrize("theirs,ours", PAIRS, ids=IDS)
def test_zero_length_sequences_accepted_where_torch_nn_refuses(theirs, ours):
    """torch.nn raises RuntimeError on T = 0; rnnkit returns an empty output and the initial state."""
    x = torch.randn(0, B, I)
    with pytest.raises(RuntimeError):
        theirs(I, H)(x)
    out, state = ours(I, H)(x)
    assert out.shape == (0, B, H)
    for s in state if isinstance(state, tuple) else (state,):
        assert torch.equal(s, torch.zeros(1, B, H))
