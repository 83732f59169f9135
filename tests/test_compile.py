"""torch.compile(fullgraph=True) of every layer, variant and cell (no graph break: fullgraph raises at the first),
against eager: outputs, final states and the gradients of the input, the initial states and every parameter, in
float64; the C++ sequences appear in the graph as rnnkit's ops. Then torch.export and torch.jit.trace of a layer.
Backend aot_eager (the compiler's autograd tracing, without code generation) to keep the file fast, and one case
with the default inductor."""
import pytest
import torch

import rnnkit
from rnnkit.kernels.cpu import fused

needs_ops = pytest.mark.skipif(not fused.sequence_available(torch.float64),
                               reason="the C++ sequence kernels are unavailable: no rnnkit ops in the graph")
TOL = dict(rtol=1e-10, atol=1e-10)


@pytest.fixture(autouse=True)
def _fresh_compiler():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _recording(graphs: list, backend="aot_eager"):
    """A backend that keeps each graph dynamo traced, then hands it to `backend`."""
    compile_with = torch._dynamo.lookup_backend(backend)

    def record(gm, example_inputs):
        graphs.append(gm)
        return compile_with(gm, example_inputs)
    return record


def _ops_in(graphs) -> set:
    """The rnnkit ops the traced graphs call."""
    return {str(node.target).removesuffix(".default") for gm in graphs for node in gm.graph.nodes
            if node.op == "call_function" and str(node.target).startswith("rnnkit.")}


def _run(module, x, hx, kwargs):
    """Outputs, final states, then the gradients of x, hx and every parameter of a weighted loss."""
    x = x.detach().requires_grad_()
    hx = None if hx is None else tuple(s.detach().requires_grad_() for s in hx)
    hx_arg = None if hx is None else hx if len(hx) == 2 else hx[0]
    result = module(x, hx_arg, **kwargs)
    result = result if isinstance(result, tuple) else (result,)
    flat = [t for r in result for t in (r if isinstance(r, tuple) else (r,))]
    loss = sum((k + 1) * (t * torch.linspace(-1, 1, t.shape[-1], dtype=t.dtype)).square().sum()
               for k, t in enumerate(flat))
    leaves = [x, *(hx or ()), *module.parameters()]
    return [*flat, *torch.autograd.grad(loss, leaves)]


def _assert_compiled_equals_eager(module, x, hx=None, ops=(), **kwargs):
    graphs = []
    compiled = torch.compile(module, fullgraph=True, backend=_recording(graphs))
    got, want = _run(compiled, x, hx, kwargs), _run(module, x, hx, kwargs)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)
    assert _ops_in(graphs) == set(ops), _ops_in(graphs)
    return compiled


def _states(layer, B):
    L = layer.num_layers * layer.num_directions
    sizes = [layer.proj_size or layer.hidden_size] + ([layer.hidden_size] if isinstance(layer, rnnkit.LSTM) else [])
    return tuple(torch.randn(L, B, n, dtype=torch.float64) for n in sizes)


VARIANTS = [("LSTM", {}), ("LSTM", dict(peephole=True)), ("LSTM", dict(coupled=True)),
            ("LSTM", dict(layer_norm=True)), ("LSTM", dict(activation="softsign")), ("LSTM", dict(proj_size=3)),
            ("GRU", {}), ("GRU", dict(reset_after=False)), ("GRU", dict(activation="softsign")),
            ("RNN", {}), ("RNN", dict(nonlinearity="relu"))]


def _id(cell, variant, *rest):
    return "-".join([cell, *(f"{k}={v}" for k, v in variant.items()), *map(str, rest)])


def _op(cell: str, inference: bool = False) -> str:
    return f"rnnkit.{cell.lower()}_sequence{'_infer' if inference else ''}"


@needs_ops
@pytest.mark.parametrize("cell, variant", VARIANTS, ids=[_id(*v) for v in VARIANTS])
def test_stacked_bidirectional_layers_with_lengths(cell, variant):
    """Two bidirectional layers, batch_first, lengths in any order (one zero), initial states, recurrent dropout
    off: impl='auto' runs the engine's ops under the compiler (torch.nn's packed kernels need the lengths as
    Python numbers)."""
    layer = getattr(rnnkit, cell)(4, 6, 2, batch_first=True, bidirectional=True, dtype=torch.float64, **variant)
    x = torch.randn(5, 7, 4, dtype=torch.float64)
    _assert_compiled_equals_eager(layer, x, _states(layer, 5), lengths=torch.tensor([3, 7, 0, 5, 1]),
                                  ops=[_op(cell)])


PLAIN = [("LSTM", {}, "native"), ("LSTM", {}, "engine"), ("LSTM", {}, "autograd"), ("LSTM", dict(proj_size=2), "auto"),
         ("GRU", {}, "auto"), ("GRU", {}, "native"), ("GRU", dict(reset_after=False), "autograd"),
         ("RNN", {}, "auto"), ("RNN", dict(nonlinearity="relu"), "engine")]


@pytest.mark.parametrize("cell, variant, impl", PLAIN, ids=[_id(*v) for v in PLAIN])
def test_one_layer_each_impl(cell, variant, impl):
    """One layer, time-major, no lengths, zero initial state, by each implementation the dispatcher can choose."""
    layer = getattr(rnnkit, cell)(3, 5, impl=impl, dtype=torch.float64, **variant)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    chosen = rnnkit.engine.dispatch.choose(impl, layer.cell, x.device, 2, 0.0, True, None, steps=6)
    ops = [_op(cell)] if chosen == "engine" and fused.sequence_available(torch.float64) else []
    _assert_compiled_equals_eager(layer, x, ops=ops)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_the_autograd_loop_with_lengths(cell):
    """impl='autograd' with lengths: under the compiler every step runs all rows and an ended row keeps its state
    (loop._masked_loop), the same numbers as the eager loop's slices of active rows."""
    layer = getattr(rnnkit, cell)(3, 4, 2, bidirectional=True, impl="autograd", dtype=torch.float64)
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    _assert_compiled_equals_eager(layer, x, _states(layer, 3), lengths=torch.tensor([6, 0, 4]))


@needs_ops
@pytest.mark.parametrize("cell, variant", VARIANTS[::2], ids=[_id(*v) for v in VARIANTS[::2]])
def test_inference(cell, variant):
    """eval() under no_grad: the infer op, the input projected inside it."""
    layer = getattr(rnnkit, cell)(4, 6, 2, bidirectional=True, impl="engine", dtype=torch.float64, **variant).eval()
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    lengths = torch.tensor([7, 2, 5])
    graphs = []
    compiled = torch.compile(layer, fullgraph=True, backend=_recording(graphs))
    with torch.no_grad():
        got, want = compiled(x, lengths=lengths), layer(x, lengths=lengths)
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        torch.testing.assert_close(a, b, **TOL)
    assert _ops_in(graphs) == {_op(cell, inference=True)}


CELLS = [("RNNCell", {}), ("RNNCell", dict(nonlinearity="relu")), ("LSTMCell", {}),
         ("LSTMCell", dict(peephole=True, layer_norm=True, proj_size=2)), ("GRUCell", {}),
         ("GRUCell", dict(reset_after=False, activation="softsign"))]


@pytest.mark.parametrize("cell, variant", CELLS, ids=[_id(*v) for v in CELLS])
def test_cells(cell, variant):
    module = getattr(rnnkit, cell)(3, 5, dtype=torch.float64, **variant)
    x = torch.randn(4, 3, dtype=torch.float64)
    P = variant.get("proj_size") or 5
    hx = (torch.randn(4, P, dtype=torch.float64),) + ((torch.randn(4, 5, dtype=torch.float64),)
                                                      if cell == "LSTMCell" else ())
    _assert_compiled_equals_eager(module, x, hx)


MINIMAL = [("MinGRU", "sequential", False), ("MinGRU", "parallel", True), ("MinLSTM", "sequential", True),
           ("MinLSTM", "parallel", False)]


@pytest.mark.parametrize("cell, mode, with_lengths", MINIMAL, ids=[f"{c}-{m}-{w}" for c, m, w in MINIMAL])
def test_minimal_layers(cell, mode, with_lengths):
    layer = getattr(rnnkit, cell)(3, 4, 2, batch_first=True, mode=mode, dtype=torch.float64)
    x = torch.randn(3, 6, 3, dtype=torch.float64)
    hx = (torch.randn(2, 3, 4, dtype=torch.float64),)
    kwargs = dict(lengths=torch.tensor([6, 2, 0])) if with_lengths else {}
    _assert_compiled_equals_eager(layer, x, hx, **kwargs)


@needs_ops
def test_inductor():
    """The default backend (inductor: generated C++ for the ops around rnnkit's) on a layer that runs the engine's
    ops, with lengths: float32, so to the float32 rounding of the generated code."""
    layer = rnnkit.LSTM(4, 8, bidirectional=True, peephole=True, batch_first=True)
    x = torch.randn(3, 6, 4)
    lengths = torch.tensor([6, 1, 4])
    compiled = torch.compile(layer, fullgraph=True)
    got = _run(compiled, x, None, dict(lengths=lengths))
    want = _run(layer, x, None, dict(lengths=lengths))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_native_with_lengths_runs_outside_the_graph():
    """impl='native' with lengths (and a PackedSequence input): torch.nn's packed kernels take the lengths as Python
    numbers, so they run outside the compiled graph (graph breaks; impl='auto' compiles whole), with eager's
    numbers."""
    layer = rnnkit.LSTM(3, 4, impl="native", dtype=torch.float64)
    x, lengths = torch.randn(5, 3, 3, dtype=torch.float64), torch.tensor([5, 2, 3])
    assert torch._dynamo.explain(layer)(x, lengths=lengths).graph_break_count > 0
    torch._dynamo.reset()
    got = _run(torch.compile(layer, backend="aot_eager"), x, None, dict(lengths=lengths))
    for a, b in zip(got, _run(layer, x, None, dict(lengths=lengths))):
        torch.testing.assert_close(a, b, **TOL)


# -- torch.export and torch.jit.trace ---------------------------------------------------------------

class _Outputs(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, lengths):
        out, state = self.layer(x, lengths=lengths)
        return out, *(state if isinstance(state, tuple) else (state,))


@needs_ops
@pytest.mark.parametrize("cell, variant", [("LSTM", dict(layer_norm=True, proj_size=2)), ("GRU", {}),
                                           ("RNN", dict(nonlinearity="relu"))], ids=["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "train"])
def test_export(cell, variant, grad):
    """torch.export of a layer with lengths: the program holds rnnkit's ops, and run on other inputs of the same
    shape gives eager's outputs (for a train step, the forward op, whose gradients autograd takes as eager's)."""
    torch.manual_seed(0)
    model = _Outputs(getattr(rnnkit, cell)(3, 5, bidirectional=True, impl="engine", dtype=torch.float64,
                                           **variant)).eval()
    x, lengths = torch.randn(6, 2, 3, dtype=torch.float64), torch.tensor([6, 3])
    with torch.set_grad_enabled(grad):
        program = torch.export.export(model, (x, lengths))
        targets = {str(node.target).removesuffix(".default") for node in program.graph.nodes
                   if node.op == "call_function"}
        assert _op(cell, inference=not grad) in targets, targets
        y, other = torch.randn(6, 2, 3, dtype=torch.float64), torch.tensor([2, 5])
        for a, b in zip(program.module()(y, other), model(y, other)):
            torch.testing.assert_close(a, b, **TOL)


@needs_ops
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_jit_trace_of_an_engine_layer_generalises_over_lengths_of_time(cell):
    """The trace records one op per sequence rather than unrolling the time loop: it passes its own check and
    runs sequences of another length (and of another batch size)."""
    variant = dict(peephole=True) if cell == "LSTM" else {}
    layer = getattr(rnnkit, cell)(3, 4, 2, bidirectional=True, impl="engine", **variant)

    class Outputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer(x)[0]

    model = Outputs().eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, (torch.randn(5, 2, 3),))
        assert f"rnnkit::{cell.lower()}_sequence_infer" in str(traced.inlined_graph)
        for shape in ((9, 2, 3), (2, 3, 3)):
            y = torch.randn(shape)
            torch.testing.assert_close(traced(y), model(y))
