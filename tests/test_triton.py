"""The Triton kernels (impl="triton", rnnkit/kernels/triton) against the engine's loop of PyTorch ops (impl="autograd",
the same weights), on the CPU through Triton's interpreter: every LSTM, GRU and RNN variant, two layers, both
directions, batch_first both ways, lengths with a zero, initial states and recurrent dropout; outputs, final states
and the gradients of the input, the initial states and every parameter, 1e-10 relative in float64, 1e-5 in float32.
Tiny shapes: the interpreter runs every tile operation through NumPy. Skipped without the triton package."""
import os

import pytest
import torch

if not torch.cuda.is_available():  # with a GPU the kernels compile for it instead: tests/test_triton_cuda.py
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel is defined: @triton.jit reads it then

pytest.importorskip("triton", reason="the optional triton package (the gpu extra) is not installed")

import rnnkit  # noqa: E402
from conftest import assert_rel  # noqa: E402
from rnnkit.kernels.triton import _common, rnn  # noqa: E402

if not _common.INTERPRETED:
    pytest.skip("Triton's kernels are compiled, not interpreted, in this process (a GPU, or TRITON_INTERPRET=1 set "
                "after they were defined)", allow_module_level=True)

LAYERS = {"LSTM": rnnkit.LSTM, "GRU": rnnkit.GRU, "RNN": rnnkit.RNN}
T, B, I, H = 4, 3, 3, 4
LENGTHS = torch.tensor([2, 4, 0])  # unsorted, with a zero

# every option at least once, and the combinations that share a kernel pass (layer norm with projection, peepholes
# with the coupled gate); recurrent_dropout runs the layer in training mode with one mask per sequence
LSTM_CASES = [
    {}, dict(peephole=True), dict(coupled=True), dict(activation="softsign"), dict(layer_norm=True),
    dict(proj_size=3), dict(recurrent_dropout=0.3), dict(bias=False),
    dict(peephole=True, coupled=True, activation="softsign"),
    dict(layer_norm=True, proj_size=2, peephole=True, recurrent_dropout=0.3),
    dict(layer_norm=True, coupled=True, bias=False, proj_size=3),
    dict(peephole=True, proj_size=2, activation="softsign", recurrent_dropout=0.3),
]
GRU_CASES = [dict(reset_after=r, activation=a) for r in (True, False) for a in ("tanh", "softsign")]
GRU_CASES += [dict(reset_after=r, bias=False, recurrent_dropout=0.3) for r in (True, False)]
RNN_CASES = [dict(nonlinearity=n) for n in ("tanh", "relu", "softsign")]
RNN_CASES += [dict(nonlinearity="relu", bias=False, recurrent_dropout=0.3)]
CASES = [("LSTM", v) for v in LSTM_CASES] + [("GRU", v) for v in GRU_CASES] + [("RNN", v) for v in RNN_CASES]
FLOAT32_CASES = [("LSTM", {}), ("LSTM", LSTM_CASES[9]), ("LSTM", LSTM_CASES[10]), ("GRU", GRU_CASES[0]),
                 ("GRU", GRU_CASES[5]), ("RNN", RNN_CASES[3])]


def case_id(case) -> str:
    cell, variant = case
    return "-".join([cell, *(f"{k}={w}" for k, w in variant.items())])


def _layer(cell, variant, dtype, hidden=H, num_layers=2, batch_first=True):
    torch.manual_seed(0)
    layer = LAYERS[cell](I, hidden, num_layers, batch_first=batch_first, bidirectional=True, dtype=dtype, **variant)
    with torch.no_grad():  # away from layer norm's identity gains and zero biases, so every gradient is exercised
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return layer.train("recurrent_dropout" in variant)


def _initial_states(layer, batch, dtype):
    L = layer.num_layers * layer.num_directions
    sizes = [layer.proj_size or layer.hidden_size] + ([layer.hidden_size] if isinstance(layer, rnnkit.LSTM) else [])
    return tuple(torch.randn(L, batch, n, dtype=dtype) for n in sizes)


def _run(layer, impl, x, hx, lengths):
    """Outputs, final states and the gradients of x, the initial states and every parameter, by `impl`."""
    layer.impl = impl
    x = x.detach().requires_grad_()
    hx = tuple(s.detach().requires_grad_() for s in hx)
    torch.manual_seed(1)  # the same recurrent-dropout masks for both impls
    out, finals = layer(x, hx if len(hx) == 2 else hx[0], lengths=lengths)
    finals = finals if isinstance(finals, tuple) else (finals,)
    loss = (out * torch.linspace(-1, 1, out.shape[-1], dtype=x.dtype)).square().sum()
    loss = loss + sum((k + 1) * s.sum() for k, s in enumerate(finals))
    grads = torch.autograd.grad(loss, [x, *hx, *layer.parameters()])
    names = ["output", *(f"final state {k}" for k in range(len(finals))), "grad input",
             *(f"grad initial state {k}" for k in range(len(hx))), *(f"grad {n}" for n, _ in layer.named_parameters())]
    return dict(zip(names, (out, *finals, *grads)))


def _assert_triton_equals_the_engine(cell, variant, dtype, tol, batch_first=True, lengths=LENGTHS, hidden=H,
                                     num_layers=2):
    layer = _layer(cell, variant, dtype, hidden, num_layers, batch_first)
    x = torch.randn(*((B, T) if batch_first else (T, B)), I, dtype=dtype)
    hx = _initial_states(layer, B, dtype)
    got, want = _run(layer, "triton", x, hx, lengths), _run(layer, "autograd", x, hx, lengths)
    assert got.keys() == want.keys()
    for name in want:
        assert_rel(got[name], want[name], tol, name)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_triton_equals_the_engine_float64(case):
    cell, variant = case
    batch_first = len(variant) % 2 == 0  # both layouts, spread over the cases
    _assert_triton_equals_the_engine(cell, variant, torch.float64, 1e-10, batch_first)


@pytest.mark.parametrize("case", FLOAT32_CASES, ids=case_id)
def test_triton_equals_the_engine_float32(case):
    _assert_triton_equals_the_engine(*case, torch.float32, 1e-5, batch_first=False)


@pytest.mark.parametrize("case", [("LSTM", dict(layer_norm=True, proj_size=20, peephole=True)),
                                  ("LSTM", dict(coupled=True, recurrent_dropout=0.3)),
                                  ("GRU", dict(reset_after=False)), ("GRU", {}), ("RNN", {})], ids=case_id)
def test_several_tiles_of_hidden_units(case):
    """H = 40: two tiles of hidden units in float64 (32 wide) and several of the reduction (8 deep); one layer."""
    _assert_triton_equals_the_engine(*case, torch.float64, 1e-10, lengths=torch.tensor([4, 1, 3]), hidden=40,
                                     num_layers=1)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_whole_batches_without_lengths(cell):
    _assert_triton_equals_the_engine(cell, {}, torch.float64, 1e-10, lengths=None, num_layers=1)


@pytest.mark.parametrize("case", [("LSTM", dict(layer_norm=True, proj_size=2, peephole=True)),
                                  ("GRU", dict(reset_after=False)), ("RNN", dict(nonlinearity="softsign"))],
                         ids=case_id)
def test_inference_equals_the_engine(case):
    """No gradient recorded: the forward kernel alone (keeping nothing), the input projected in chunks."""
    layer = _layer(*case, torch.float64).eval()
    x = torch.randn(B, T, I, dtype=torch.float64)
    hx = _initial_states(layer, B, torch.float64)
    results = []
    for impl in ("triton", "autograd"):
        layer.impl = impl
        with torch.no_grad():
            out, finals = layer(x, hx if len(hx) == 2 else hx[0], lengths=LENGTHS)
        results.append((out, *(finals if isinstance(finals, tuple) else (finals,))))
    for a, b in zip(*results, strict=True):
        assert_rel(a, b, 1e-10, "inference")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_half_precision_is_close_to_float64(cell, dtype):
    """bfloat16 and float16 (products and gate math in float32): within the dtype's rounding of the float64 result."""
    variant = dict(layer_norm=True, peephole=True) if cell == "LSTM" else dict(reset_after=False)
    exact_layer = _layer(cell, variant, torch.float64, num_layers=1)
    layer = _layer(cell, variant, dtype, num_layers=1)
    # the same weights, rounded to the half dtype
    exact_layer.load_state_dict({k: v.to(torch.float64) for k, v in layer.state_dict().items()})
    x = torch.randn(B, T, I, dtype=dtype)
    hx = _initial_states(layer, B, dtype)
    got = _run(layer, "triton", x, hx, LENGTHS)
    want = _run(exact_layer, "autograd", x.double(), tuple(s.double() for s in hx), LENGTHS)
    for name in want:
        assert got[name].dtype == dtype
        assert_rel(got[name].double(), want[name], 5e-2, name)


def test_double_backward_recomputes_with_pytorch_ops():
    """create_graph=True: the engine recomputes the loop under autograd; the same second derivative as autograd's."""
    layer = _layer("LSTM", dict(peephole=True, layer_norm=True), torch.float64, num_layers=1)
    x = torch.randn(B, T, I, dtype=torch.float64)
    results = []
    for impl in ("triton", "autograd"):
        layer.impl = impl
        xi = x.clone().requires_grad_()
        out = layer(xi, lengths=LENGTHS)[0]
        (g,) = torch.autograd.grad(out.square().sum(), xi, create_graph=True)
        results.append(torch.autograd.grad(g.square().sum(), [xi, layer.weight_hh_l0]))
    for a, b in zip(*results):
        assert_rel(a, b, 1e-10, "double backward")


def test_the_layer_runs_one_kernel_launch_per_sequence(monkeypatch):
    """impl="triton": each direction of each layer is one forward and one backward launch of the cell's kernels."""
    calls = []
    for name in ("rnn_sequence", "rnn_sequence_backward"):
        fn = getattr(rnn, name)
        monkeypatch.setattr(rnn, name, lambda *a, fn=fn, name=name, **k: calls.append(name) or fn(*a, **k))
    layer = _layer("RNN", {}, torch.float64)
    layer.impl = "triton"
    layer(torch.randn(B, T, I, dtype=torch.float64))[0].sum().backward()
    assert calls == ["rnn_sequence"] * 4 + ["rnn_sequence_backward"] * 4


def test_kernels_refuse_cpu_tensors_without_the_interpreter(monkeypatch):
    monkeypatch.setattr(_common, "INTERPRETED", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        rnn.rnn_sequence(torch.zeros(2, 1, 3), torch.zeros(1, 3), torch.zeros(3, 3))
