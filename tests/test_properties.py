"""Properties of the layers over random configurations (hypothesis, derandomized, float64):

  (a) impl="engine" (the explicit BPTT) equals impl="autograd": outputs, final states, every gradient;
  (b) with lengths=, outputs past each sequence's end are exactly zero, and each sequence's
      outputs and final state are those of the sequence run alone, unpadded (length 0: hx);
  (c) extra time steps beyond max(lengths) change nothing.

(b) and (c) run through every implementation a layer may pick: "auto" (torch's kernel where it can
run, the engine otherwise), "engine" and "autograd".
"""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rnnkit
from conftest import assert_rel

DTYPE = torch.float64
TOL = 1e-10
SETTINGS = settings(max_examples=500, deadline=None, derandomize=True)
IMPLS = st.sampled_from(["auto", "engine", "autograd"])


# -- strategies ---------------------------------------------------------------------------------

@st.composite
def layer_configs(draw):
    """(layer class, input_size, hidden_size, constructor keywords) over every variant."""
    cls = draw(st.sampled_from([rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU]))
    input_size, hidden_size = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kwargs = dict(num_layers=draw(st.integers(1, 3)), bidirectional=draw(st.booleans()),
                  batch_first=draw(st.booleans()), bias=draw(st.booleans()))
    if cls is rnnkit.RNN:
        kwargs["nonlinearity"] = draw(st.sampled_from(["tanh", "relu", "softsign"]))
    elif cls is rnnkit.LSTM:
        kwargs.update(peephole=draw(st.booleans()), coupled=draw(st.booleans()), layer_norm=draw(st.booleans()),
                      activation=draw(st.sampled_from(["tanh", "softsign"])),
                      proj_size=draw(st.integers(0, hidden_size - 1)))
    else:
        kwargs.update(reset_after=draw(st.booleans()), activation=draw(st.sampled_from(["tanh", "softsign"])))
    return cls, input_size, hidden_size, kwargs


@st.composite
def batches(draw, with_lengths):
    """(T, B, lengths or None, with_hx, seed); lengths unsorted, zeros included, max may be < T."""
    T, B = draw(st.integers(0, 6)), draw(st.integers(1, 4))
    use_lengths = with_lengths if with_lengths is not None else draw(st.booleans())
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B)) if use_lengths else None
    return T, B, lengths, draw(st.booleans()), draw(st.integers(0, 2 ** 16))


# -- helpers ------------------------------------------------------------------------------------

def make_layer(config, **options):
    cls, input_size, hidden_size, kwargs = config
    return cls(input_size, hidden_size, dtype=DTYPE, **kwargs, **options)


def state_shapes(layer, B):
    """[(L*D, B, P)] or, for an LSTM, [(L*D, B, P), (L*D, B, H)]."""
    LD = layer.num_layers * (2 if layer.bidirectional else 1)
    sizes = [layer.proj_size or layer.hidden_size, layer.hidden_size] if isinstance(layer, rnnkit.LSTM) \
        else [layer.hidden_size]
    return [(LD, B, size) for size in sizes]


def make_input(layer, T, B):
    """Random input in the layer's layout, (T, B, I) or (B, T, I) with batch_first."""
    shape = (B, T, layer.input_size) if layer.batch_first else (T, B, layer.input_size)
    return torch.randn(shape, dtype=DTYPE, requires_grad=True)


def time_major(t, layer):
    return t.transpose(0, 1) if layer.batch_first else t


def call(layer, x, states, lengths=None):
    """Run the layer; returns output time-major (T, B, D*P) and the list of final states."""
    hx = None if states is None else (tuple(states) if len(states) == 2 else states[0])
    out, finals = layer(x, hx, lengths=None if lengths is None else torch.tensor(lengths))
    return time_major(out, layer), list(finals) if isinstance(finals, tuple) else [finals]


def grads_of(outputs, weights, inputs):
    loss = sum((o * w).sum() for o, w in zip(outputs, weights))
    if not loss.requires_grad:  # e.g. T = 0 and no hx: nothing depends on the inputs
        return [torch.zeros_like(i) for i in inputs]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, grads)]


# -- (a) the explicit BPTT equals autograd ------------------------------------------------------------

@SETTINGS
@given(config=layer_configs(), batch=batches(with_lengths=None),
       dropout=st.sampled_from([0.0, 0.3]), recurrent_dropout=st.sampled_from([0.0, 0.3]))
def test_explicit_equals_autograd(config, batch, dropout, recurrent_dropout):
    T, B, lengths, with_hx, seed = batch
    torch.manual_seed(seed)
    if config[3]["num_layers"] == 1:
        dropout = 0.0  # torch.nn's rule: no dropout after the last layer (it would only warn)
    options = dict(dropout=dropout, recurrent_dropout=recurrent_dropout)
    explicit = make_layer(config, impl="engine", **options)
    reference = make_layer(config, impl="autograd", **options)
    reference.load_state_dict(explicit.state_dict())
    x = make_input(explicit, T, B)
    states = [torch.randn(s, dtype=DTYPE, requires_grad=True) for s in state_shapes(explicit, B)] if with_hx else None

    results = []
    for layer in (explicit, reference):
        torch.manual_seed(seed + 1)  # the same dropout masks in both runs
        out, finals = call(layer, x, states, lengths)
        results.append((out, finals, [x, *(states or []), *layer.parameters()]))
    (out, finals, inputs), (ref_out, ref_finals, ref_inputs) = results

    assert_rel(out, ref_out, TOL, "output")
    for k, (a, e) in enumerate(zip(finals, ref_finals, strict=True)):
        assert_rel(a, e, TOL, f"final state {k}")
    weights = [torch.randn_like(t) for t in (ref_out, *ref_finals)]
    grads = grads_of([out, *finals], weights, inputs)
    ref_grads = grads_of([ref_out, *ref_finals], weights, ref_inputs)
    names = ["input"] + [f"hx[{k}]" for k in range(len(states or []))] + [n for n, _ in explicit.named_parameters()]
    for what, a, e in zip(names, grads, ref_grads, strict=True):
        assert_rel(a, e, TOL, f"grad {what}")


# -- (b) padding is inert: zeros past the end, each sequence as if alone ---------------------------

@SETTINGS
@given(config=layer_configs(), batch=batches(with_lengths=True), impl=IMPLS)
def test_each_sequence_as_if_alone(config, batch, impl):
    T, B, lengths, with_hx, seed = batch
    torch.manual_seed(seed)
    layer = make_layer(config, impl=impl)
    x = make_input(layer, T, B).detach()
    shapes = state_shapes(layer, B)
    states = [torch.randn(s, dtype=DTYPE) for s in shapes] if with_hx else None
    out, finals = call(layer, x, states, lengths)  # (T, B, D*P), [(L*D, B, .)]
    x_tm = time_major(x, layer)  # (T, B, I)

    for b, n in enumerate(lengths):
        assert torch.equal(out[n:, b], torch.zeros_like(out[n:, b])), f"output past the end of sequence {b}"
        row_states = None if states is None else [s[:, b:b + 1] for s in states]
        if n == 0:  # nothing to run: the final state is the initial state
            initial = [torch.zeros(s[0], 1, s[2], dtype=DTYPE) for s in shapes] if states is None else row_states
            for k, (final, init) in enumerate(zip(finals, initial, strict=True)):
                assert torch.equal(final[:, b:b + 1], init), f"final state {k} of empty sequence {b}"
            continue
        alone = x_tm[:n, b:b + 1]  # (n, 1, I), no padding
        alone_out, alone_finals = call(layer, time_major(alone, layer), row_states)
        assert_rel(out[:n, b:b + 1], alone_out, TOL, f"output of sequence {b}")
        for k, (final, ref) in enumerate(zip(finals, alone_finals, strict=True)):
            assert_rel(final[:, b:b + 1], ref, TOL, f"final state {k} of sequence {b}")


# -- (c) extra time steps beyond max(lengths) change nothing ---------------------------------------

@SETTINGS
@given(config=layer_configs(), batch=batches(with_lengths=True), extra=st.integers(1, 3),
       impl=IMPLS)
def test_extra_padding_changes_nothing(config, batch, extra, impl):
    T, B, lengths, with_hx, seed = batch
    torch.manual_seed(seed)
    layer = make_layer(config, impl=impl)
    x_tm = time_major(make_input(layer, T, B), layer).detach()  # (T, B, I)
    garbage = torch.randn(extra, B, layer.input_size, dtype=DTYPE)  # not zeros: it must be ignored
    short = time_major(x_tm, layer).clone().requires_grad_(True)
    long = time_major(torch.cat([x_tm, garbage]), layer).requires_grad_(True)
    states = [torch.randn(s, dtype=DTYPE, requires_grad=True) for s in state_shapes(layer, B)] if with_hx else None
    inputs = [*(states or []), *layer.parameters()]

    out, finals = call(layer, short, states, lengths)
    long_out, long_finals = call(layer, long, states, lengths)
    assert_rel(long_out[:T], out, TOL, "output")
    assert torch.equal(long_out[T:], torch.zeros_like(long_out[T:])), "output at the extra steps"
    for k, (a, e) in enumerate(zip(long_finals, finals, strict=True)):
        assert_rel(a, e, TOL, f"final state {k}")

    weights = [torch.randn_like(t) for t in (out, *finals)]
    grads = grads_of([out, *finals], weights, [short, *inputs])
    long_weights = [torch.cat([weights[0], torch.randn_like(long_out[T:])]), *weights[1:]]  # any weight past T
    long_grads = grads_of([long_out, *long_finals], long_weights, [long, *inputs])
    d_long = time_major(long_grads[0], layer)  # (T + extra, B, I)
    assert_rel(d_long[:T], time_major(grads[0], layer), TOL, "grad input")
    assert torch.equal(d_long[T:], torch.zeros_like(d_long[T:])), "grad of the extra steps"
    names = [f"hx[{k}]" for k in range(len(states or []))] + [n for n, _ in layer.named_parameters()]
    for what, a, e in zip(names, long_grads[1:], grads[1:], strict=True):
        assert_rel(a, e, TOL, f"grad {what}")


# -- (d) dtypes and devices: float32 (and CUDA, where present) agree with the float64 reference ---------

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@settings(max_examples=150, deadline=None, derandomize=True)
@given(config=layer_configs(), batch=batches(with_lengths=None), impl=IMPLS, device=st.sampled_from(DEVICES))
def test_float32_on_every_device_agrees_with_float64(config, batch, impl, device):
    T, B, lengths, with_hx, seed = batch
    torch.manual_seed(seed)
    reference = make_layer(config, impl="autograd")
    layer = make_layer(config, impl=impl).float().to(device)
    layer.load_state_dict({k: v.float() for k, v in reference.state_dict().items()})
    x = make_input(reference, T, B).detach()
    states = [torch.randn(s, dtype=DTYPE) for s in state_shapes(reference, B)] if with_hx else None
    ref_out, ref_finals = call(reference, x, states, lengths)
    out, finals = call(layer, x.float().to(device), None if states is None else [s.float().to(device) for s in states],
                       lengths)
    assert out.dtype == torch.float32 and out.device.type == device
    assert_rel(out.double().cpu(), ref_out.detach(), 1e-4, "output")
    for k, (a, e) in enumerate(zip(finals, ref_finals, strict=True)):
        assert_rel(a.double().cpu(), e.detach(), 1e-4, f"final state {k}")
