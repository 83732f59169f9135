"""minGRU and minLSTM: the log-space scan against the step loop, the paper's equations, .step and gradcheck."""
import itertools

import pytest
import torch
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

from conftest import assert_rel
from rnnkit.nn import minimal
from rnnkit.nn.minimal import MinGRU, MinLSTM

CLASSES = [MinGRU, MinLSTM]
I, H, T, B = 3, 4, 6, 4
LENGTHS = torch.tensor([3, 6, 0, 1])  # unsorted, a zero and a full length
F64 = torch.float64


def make_pair(cls, num_layers=1, dtype=F64, **kwargs):
    """The same layer twice, one per mode, holding the same weights."""
    parallel = cls(I, H, num_layers, dtype=dtype, mode="parallel", **kwargs)
    sequential = cls(I, H, num_layers, dtype=dtype, mode="sequential", **kwargs)
    sequential.load_state_dict(parallel.state_dict())
    return parallel, sequential


def forward_and_grads(layer, x, h0, lengths, w_out, w_h):
    """Outputs, h_n and the gradients of x, h0 and every parameter for a random linear loss."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    h0 = None if h0 is None else h0.detach().requires_grad_()
    out, h_n = layer(x, h0, lengths=lengths)
    ((out * w_out).sum() + (h_n * w_h).sum()).backward()
    grads = {"input": x.grad, **{name: p.grad for name, p in layer.named_parameters()}}
    if h0 is not None:
        grads["h0"] = h0.grad
    return out.detach(), h_n.detach(), grads


# -- the two modes agree --------------------------------------------------------------------

@pytest.mark.parametrize("cls,num_layers,batch_first,with_h0,with_lengths",
                         list(itertools.product(CLASSES, [1, 2, 3], [False, True], [False, True], [False, True])))
def test_parallel_equals_sequential(cls, num_layers, batch_first, with_h0, with_lengths):
    parallel, sequential = make_pair(cls, num_layers, batch_first=batch_first)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=F64)
    h0 = torch.randn(num_layers, B, H, dtype=F64) if with_h0 else None  # negative entries included
    lengths = LENGTHS if with_lengths else None
    w_out, w_h = torch.randn(x.shape[:-1] + (H,), dtype=F64), torch.randn(num_layers, B, H, dtype=F64)
    out_p, h_p, grads_p = forward_and_grads(parallel, x, h0, lengths, w_out, w_h)
    out_s, h_s, grads_s = forward_and_grads(sequential, x, h0, lengths, w_out, w_h)
    assert_rel(out_p, out_s, 1e-10, "output")
    assert_rel(h_p, h_s, 1e-10, "h_n")
    assert grads_p.keys() == grads_s.keys()
    for name in grads_s:
        assert_rel(grads_p[name], grads_s[name], 1e-9, f"grad {name}")
    if with_lengths:
        valid = torch.arange(T).unsqueeze(1) < lengths  # (T, B)
        valid = valid.T if batch_first else valid
        assert torch.all(out_p[~valid] == 0) and torch.all(grads_p["input"][~valid] == 0)  # padding is inert
        start = h0 if with_h0 else torch.zeros(num_layers, B, H, dtype=F64)
        assert torch.equal(h_p[:, 2], start[:, 2])  # a length-0 sequence keeps its initial state


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_chunks_carry_state_exactly(cls, mode):
    """h_n of one chunk as h_0 of the next gives the whole sequence's result: h_0 is not passed through g."""
    layer = cls(I, H, 2, dtype=F64, mode=mode)
    x, h0 = torch.randn(T, B, I, dtype=F64), torch.randn(2, B, H, dtype=F64)
    whole, h_whole = layer(x, h0)
    first, h_mid = layer(x[:2], h0)
    second, h_end = layer(x[2:], h_mid)
    assert_rel(torch.cat([first, second]), whole, 1e-12, "output")
    assert_rel(h_end, h_whole, 1e-12, "h_n")


def test_lengths_equal_running_each_sequence_alone():
    for cls in CLASSES:
        layer = cls(I, H, 2, dtype=F64, mode="parallel")
        x, h0 = torch.randn(T, B, I, dtype=F64), torch.randn(2, B, H, dtype=F64)
        out, h_n = layer(x, h0, lengths=LENGTHS)
        for b, n in enumerate(LENGTHS.tolist()):
            if n == 0:
                continue
            alone, h_alone = layer(x[:n, b:b + 1], h0[:, b:b + 1])
            assert_rel(out[:n, b:b + 1], alone, 1e-12, f"{cls.__name__} row {b} output")
            assert_rel(h_n[:, b:b + 1], h_alone, 1e-12, f"{cls.__name__} row {b} h_n")


# -- against the paper ----------------------------------------------------------------------

def paper_min_gru(x, h, W, b):
    """The paper's minGRU, transcribed: z = sigma(Linear_z(x)), h~ = g(Linear_h(x)), h = (1-z) h + z h~."""
    outs = []
    for x_t in x:
        z = torch.sigmoid(x_t @ W[:H].T + b[:H])
        v = x_t @ W[H:].T + b[H:]
        h_tilde = torch.where(v >= 0, v + 0.5, torch.sigmoid(v))
        h = (1 - z) * h + z * h_tilde
        outs.append(h)
    return torch.stack(outs)


def paper_min_lstm(x, h, W, b):
    """The paper's minLSTM, transcribed, with f' = f / (f + i) and i' = i / (f + i)."""
    outs = []
    for x_t in x:
        f = torch.sigmoid(x_t @ W[:H].T + b[:H])
        i = torch.sigmoid(x_t @ W[H:2 * H].T + b[H:2 * H])
        v = x_t @ W[2 * H:].T + b[2 * H:]
        h_tilde = torch.where(v >= 0, v + 0.5, torch.sigmoid(v))
        f_prime, i_prime = f / (f + i), i / (f + i)
        h = f_prime * h + i_prime * h_tilde
        outs.append(h)
    return torch.stack(outs)


@pytest.mark.parametrize("cls,paper", [(MinGRU, paper_min_gru), (MinLSTM, paper_min_lstm)])
@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_matches_the_papers_equations(cls, paper, mode):
    layer = cls(I, H, 2, dtype=F64, mode=mode)
    x, h0 = torch.randn(T, B, I, dtype=F64), torch.randn(2, B, H, dtype=F64)
    with torch.no_grad():
        out, h_n = layer(x, h0)
        layer0 = paper(x, h0[0], layer.weight_ih_l0, layer.bias_ih_l0)
        layer1 = paper(layer0, h0[1], layer.weight_ih_l1, layer.bias_ih_l1)
    assert_rel(out, layer1, 1e-12, "output")
    assert_rel(h_n, torch.stack([layer0[-1], layer1[-1]]), 1e-12, "h_n")


@pytest.mark.parametrize("cls,paper", [(MinGRU, paper_min_gru), (MinLSTM, paper_min_lstm)])
def test_without_bias(cls, paper):
    layer = cls(I, H, bias=False, dtype=F64, mode="parallel")
    assert [name for name, _ in layer.named_parameters()] == ["weight_ih_l0"]
    x = torch.randn(T, B, I, dtype=F64)
    with torch.no_grad():
        out, _ = layer(x)
        zero_bias = torch.zeros(layer.weight_ih_l0.shape[0], dtype=F64)
        expected = paper(x, torch.zeros(B, H, dtype=F64), layer.weight_ih_l0, zero_bias)
    assert_rel(out, expected, 1e-12, "output")


# -- generation -----------------------------------------------------------------------------

@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("with_h0", [False, True])
def test_step_repeated_equals_forward(cls, with_h0):
    layer = cls(I, H, 3, dtype=F64, mode="parallel")
    x = torch.randn(T, B, I, dtype=F64)
    h0 = torch.randn(3, B, H, dtype=F64) if with_h0 else None
    out, h_n = layer(x, h0)
    h, steps = h0, []
    for x_t in x:
        y, h = layer.step(x_t, h)
        steps.append(y)
    assert_rel(torch.stack(steps), out, 1e-12, "outputs")
    assert_rel(h, h_n, 1e-12, "h_n")
    assert torch.equal(steps[-1], h[-1])


@pytest.mark.parametrize("cls", CLASSES)
def test_auto_mode_scans_only_where_the_scan_wins(cls, monkeypatch):
    calls = []
    real = minimal.parallel_scan_log
    monkeypatch.setattr(minimal, "parallel_scan_log", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    cls(I, H, 2, mode="parallel")(torch.randn(T, B, I))
    assert calls == [T, T]  # once per layer
    layer = cls(I, H, 2)
    layer(torch.randn(T, B, I))  # auto on CPU: the loop, measured faster there
    layer(torch.randn(1, B, I))
    layer.step(torch.randn(B, I))
    cls(I, H, mode="sequential")(torch.randn(T, B, I))
    assert calls == [T, T]
    assert layer._use_scan(T, torch.device("cuda")) and not layer._use_scan(1, torch.device("cuda"))


# -- gradients and numerics -----------------------------------------------------------------

@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("lengths", [None, torch.tensor([3, 1, 2])])
def test_gradcheck_parallel(cls, lengths):
    layer = cls(2, 3, 2, dtype=F64, mode="parallel")
    names = [name for name, _ in layer.named_parameters()]
    x = torch.randn(3, 3, 2, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 3, 3, dtype=F64, requires_grad=True)

    def run(x, h0, *params):
        out, h_n = functional_call(layer, dict(zip(names, params)), (x, h0), {"lengths": lengths})
        return out, h_n

    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    assert torch.autograd.gradcheck(run, (x, h0, *params))


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_long_sequences_stay_finite(cls, scale):
    """T = 2048 in float32, gates near 1/2 (scale 1) and saturated (scale 30): outputs and gradients finite."""
    layer = cls(I, H, 2, mode="parallel")
    x = (scale * torch.randn(2048, 2, I)).requires_grad_()
    h0 = torch.randn(2, 2, H, requires_grad=True)
    out, h_n = layer(x, h0, lengths=torch.tensor([2048, 1000]))
    (out.sum() + h_n.sum()).backward()
    assert torch.isfinite(out).all() and torch.isfinite(h_n).all()
    assert all(torch.isfinite(t.grad).all() for t in [x, h0, *layer.parameters()])


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_float32_scan_error_is_bounded_by_the_cumulative_log_gate(cls, scale):
    """The module docstring's precision claim: relative error <~ eps * |a*_T|, against float64 steps."""
    layer = cls(I, H, mode="parallel")
    x, h0 = scale * torch.randn(2048, 2, I), torch.randn(1, 2, H)
    reference = cls(I, H, dtype=F64, mode="sequential")
    reference.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    with torch.no_grad():
        out, _ = layer(x, h0)
        expected, _ = reference(x.double(), h0.double())
        log_a, _ = reference.cell.log_coefficients(torch.nn.functional.linear(x.double(), reference.weight_ih_l0,
                                                                              reference.bias_ih_l0))
    a_star = log_a.sum(0).abs().max().item()  # |a*_T|: 1e3 to 2e4 here
    assert_rel(out.double(), expected, 4 * torch.finfo(torch.float32).eps * a_star, "float32 scan")


# -- layer conventions ----------------------------------------------------------------------

@pytest.mark.parametrize("cls,gates", [(MinGRU, 2), (MinLSTM, 3)])
def test_parameter_names_shapes_and_init(cls, gates):
    layer = cls(5, 16, 2)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {"weight_ih_l0": (gates * 16, 5), "bias_ih_l0": (gates * 16,),
                      "weight_ih_l1": (gates * 16, 16), "bias_ih_l1": (gates * 16,)}
    values = torch.cat([p.detach().flatten() for p in layer.parameters()])
    assert values.abs().max() <= 0.25 and values.abs().max() > 0.24  # U(-1/sqrt(H), 1/sqrt(H)), H = 16
    assert abs(values.mean()) < 0.02


@pytest.mark.parametrize("cls", CLASSES)
def test_unbatched_matches_batch_of_one(cls):
    layer = cls(I, H, 2, dtype=F64)
    x, h0 = torch.randn(T, I, dtype=F64), torch.randn(2, H, dtype=F64)
    out, h_n = layer(x, h0)
    out1, h1 = layer(x[:, None], h0[:, None])
    assert torch.equal(out, out1[:, 0]) and torch.equal(h_n, h1[:, 0])


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_empty_sequence_and_empty_batch(mode):
    layer = MinGRU(I, H, 2, mode=mode)
    h0 = torch.randn(2, B, H)
    out, h_n = layer(torch.randn(0, B, I), h0, lengths=torch.zeros(B, dtype=torch.long))
    assert out.shape == (0, B, H) and torch.equal(h_n, h0)
    out, h_n = layer(torch.randn(T, 0, I), lengths=torch.zeros(0, dtype=torch.long))
    assert out.shape == (T, 0, H) and h_n.shape == (2, 0, H)


def test_dropout_is_vertical_only_and_shared_by_both_modes():
    parallel, sequential = make_pair(MinLSTM, 3, dropout=0.5)
    x = torch.randn(T, B, I, dtype=F64)
    torch.manual_seed(1)
    out_p, h_p = parallel(x)
    torch.manual_seed(1)
    out_s, h_s = sequential(x)
    assert_rel(out_p, out_s, 1e-10, "output")
    assert_rel(h_p, h_s, 1e-10, "h_n")
    assert (out_p > 0).all()  # from h_0 = 0 every state is positive: the top layer's output is not dropped
    parallel.eval()
    assert not torch.allclose(parallel(x)[0], out_p)  # dropout acted in training, and only there
    assert torch.equal(parallel(x)[0], parallel(x)[0])


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="dropout=0.5 has no effect with num_layers=1"):
        MinGRU(I, H, dropout=0.5)


# -- bad input: errors name the argument and the value received ---------------------------

BAD_CONSTRUCTORS = [
    (lambda: MinGRU(I, H, dropout=1.5), ValueError, r"dropout.*\[0, 1\].*1.5"),
    (lambda: MinLSTM(I, H, dropout=-0.1), ValueError, r"dropout.*-0.1"),
    (lambda: MinGRU(I, H, mode="fast"), ValueError, r"mode.*'parallel'.*'fast'"),
    (lambda: MinLSTM(I, 0), ValueError, r"hidden_size.*0"),
    (lambda: MinGRU(0, H), ValueError, r"input_size.*0"),
    (lambda: MinGRU(I, H, num_layers=0), ValueError, r"num_layers.*0"),
    (lambda: MinLSTM(I, 4.5), ValueError, r"hidden_size.*4.5"),
    (lambda: MinGRU(I, H, bidirectional=True), TypeError, r"bidirectional"),
]


@pytest.mark.parametrize("build,error,message", BAD_CONSTRUCTORS)
def test_bad_constructor_arguments(build, error, message):
    with pytest.raises(error, match=message):
        build()


def _layer(**kwargs):
    return MinGRU(I, H, 2, **kwargs)


def _bad_mode_set_later():
    layer = _layer()
    layer.mode = "fast"
    layer(torch.randn(T, B, I))


BAD_CALLS = [
    (lambda: _layer()(torch.randn(T, B, I + 1)), ValueError, rf"input has {I + 1} features.*input_size={I}"),
    (lambda: _layer()(torch.randn(T, B, 1, I)), ValueError, r"3-D.*2-D.*\(6, 4, 1, 3\)"),
    (lambda: _layer()(torch.randn(I)), ValueError, r"3-D.*2-D.*\(3,\)"),
    (lambda: _layer()(torch.randn(T, B, I, dtype=F64)), ValueError, r"input.*torch.float64.*torch.float32"),
    (lambda: _layer()(torch.randn(T, B, I), torch.randn(1, B, H)), ValueError, r"h_0.*\(2, 4, 4\).*\(1, 4, 4\)"),
    (lambda: _layer()(torch.randn(T, B, I), torch.randn(2, B, H, dtype=F64)), ValueError, r"h_0.*float64"),
    (lambda: _layer()(torch.randn(T, B, I), (torch.randn(2, B, H),)), TypeError, r"h_0.*tuple"),
    (lambda: _layer()(torch.randn(T, B, I), lengths=torch.ones(B)), ValueError, r"lengths.*integer.*torch.float32"),
    (lambda: _layer()(torch.randn(T, B, I), lengths=torch.ones(B - 1, dtype=torch.long)), ValueError,
     r"lengths has 3 entries.*batch size 4"),
    (lambda: _layer()(torch.randn(T, B, I), lengths=torch.full((B,), T + 1)), ValueError, r"lengths.*\[0, 6\].*max 7"),
    (lambda: _layer()(torch.randn(T, B, I), lengths=torch.tensor([1, -1, 2, 3])), ValueError, r"lengths.*min -1"),
    (lambda: _layer()(torch.randn(T, B, I), lengths=torch.ones(1, B, dtype=torch.long)), ValueError,
     r"lengths must be a 1-D.*\(1, 4\)"),
    (lambda: _layer()(pack_padded_sequence(torch.randn(T, B, I), [T] * B)), TypeError, r"PackedSequence.*lengths="),
    (lambda: _layer().step(torch.randn(T, B, I)), ValueError, r"\(batch, input_size=3\).*\(6, 4, 3\)"),
    (lambda: _layer().step(torch.randn(B, I), torch.randn(2, B + 1, H)), ValueError, r"h_0.*\(2, 4, 4\).*\(2, 5, 4\)"),
    (_bad_mode_set_later, ValueError, r"mode.*'fast'"),
]


@pytest.mark.parametrize("call,error,message", BAD_CALLS)
def test_bad_call_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_repr_names_non_defaults():
    assert repr(MinLSTM(3, 4, 2, batch_first=True, mode="parallel")) == \
        "MinLSTM(3, 4, num_layers=2, batch_first=True, mode='parallel')"
