"""The Triton kernels as rnnkit's custom ops (rnnkit.engine.triton: rnnkit::triton_{lstm,gru,rnn}_sequence, _backward,
_infer), on the CPU through Triton's interpreter: torch.library.opcheck of each (schema and aliasing, the autograd
registration, the fake implementation against the real one, the op under the compiler's autograd tracing), a dispatch
mode that sees one op per sequence with eager's numbers, and torch.compile(fullgraph=True) of impl="triton" layers with
the ops in the graph and eager's outputs and gradients. Tiny shapes: the interpreter is slow."""
import os

import pytest
import torch

if not torch.cuda.is_available():  # with a GPU the kernels compile for it instead
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel is defined: @triton.jit reads it then

pytest.importorskip("triton", reason="the optional triton package (the gpu extra) is not installed")

import rnnkit  # noqa: E402
from rnnkit.engine import ops, triton  # noqa: E402
from rnnkit.engine.cells import GRUStep, LSTMStep, RNNStep  # noqa: E402
from rnnkit.kernels.triton import _common  # noqa: E402
from test_cells import step_id  # noqa: E402
from test_compile import _ops_in, _recording  # noqa: E402
from test_custom_ops import _detached, _inputs, run_seen_by_a_dispatch_mode  # noqa: E402

if not _common.INTERPRETED:
    pytest.skip("Triton's kernels are compiled, not interpreted, in this process", allow_module_level=True)

STEPS = [LSTMStep(4, proj_size=2, peephole=True, layer_norm=True), LSTMStep(4, coupled=True, activation="softsign"),
         GRUStep(4, reset_after=False), GRUStep(4), RNNStep(4, "softsign")]


@pytest.fixture(autouse=True)
def _fresh_compiler():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("step", STEPS, ids=step_id)
def test_opcheck(step):
    """Each op with lengths (one of them zero) and a recurrent-dropout mask, float64."""
    args, _ = _inputs(step, [4, 2, 0], True)
    xp, state0, params, mask, batch_sizes, _, *config = args
    torch.library.opcheck(triton.TRITON.op(step), args)
    out, *rest = triton.TRITON.op(step)(*args)
    gen = torch.Generator().manual_seed(1)
    d_out = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    d_final = [torch.randn(s.shape, generator=gen, dtype=s.dtype) for s in state0]
    kept = rest[len(state0):]
    torch.library.opcheck(triton.TRITON.op(step, "_backward"),
                          _detached((d_out, d_final, state0, params, mask, batch_sizes, out, kept, *config)))
    torch.library.opcheck(triton.TRITON.op(step, "_infer"),
                          _detached((xp, state0, params, mask, batch_sizes, 0, *config)))


@pytest.mark.parametrize("step", STEPS[:1] + STEPS[2:3], ids=step_id)
def test_the_ops_give_the_cpp_ops_numbers(step):
    """Forward and backward op against the C++ kernels' ops on the same arguments: two implementations of one
    contract."""
    args, _ = _inputs(step, [4, 2, 0], True)
    xp, state0, params, mask, batch_sizes, _, *config = args
    n = len(state0)

    def run(backend):
        xp_, *tensors = (t.detach().requires_grad_() for t in (xp, *state0, *params))
        out, *rest = backend.op(step)(xp_, tensors[:n], tensors[n:], mask, batch_sizes, None, *config)
        loss = (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).square().sum() + rest[0].sum()
        wanted = [xp_, *tensors[:n], *(t for t, name in zip(tensors[n:], step.param_shapes(5))
                                       if name in ops.sequence_params(step))]
        return out, *rest[:n], *torch.autograd.grad(loss, wanted)

    for a, b in zip(run(triton.TRITON), run(ops.CPU), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("grad", [True, False], ids=["train", "inference"])
def test_layers_call_the_ops_where_the_dispatcher_watches(grad):
    """Seen by a dispatch mode, an impl="triton" layer calls one forward and one backward op per direction and layer
    in a train step, one infer op in inference; with eager's numbers (which call the kernels directly)."""
    layer = rnnkit.GRU(3, 4, 2, bidirectional=True, reset_after=False, impl="triton", dtype=torch.float64)
    x, lengths = torch.randn(5, 2, 3, dtype=torch.float64), torch.tensor([5, 3])
    run_seen_by_a_dispatch_mode(layer, x, lengths, grad, "triton_gru_sequence")
    assert (layer.last_plan.impl, layer.last_plan.sequence) == ("triton", "triton")


@pytest.mark.parametrize("make", [
    lambda: rnnkit.LSTM(3, 4, proj_size=2, layer_norm=True, bidirectional=True, impl="triton", dtype=torch.float64),
    lambda: rnnkit.RNN(3, 4, nonlinearity="softsign", num_layers=2, impl="triton", dtype=torch.float64),
], ids=["lstm-ln-proj-bidirectional", "rnn-softsign-2-layers"])
def test_compiled_triton_layers_run_the_ops_with_eagers_numbers(make):
    torch.manual_seed(0)
    layer = make()
    x, lengths = torch.randn(4, 2, 3, dtype=torch.float64), torch.tensor([4, 2])
    kind = type(layer).__name__.lower()

    def run(module):
        inp = x.detach().requires_grad_()
        out, _ = module(inp, lengths=lengths)
        return out, *torch.autograd.grad(out.square().sum(), [inp, *layer.parameters()])

    graphs = []
    compiled = torch.compile(layer, fullgraph=True, backend=_recording(graphs))
    got, want = run(compiled), run(layer)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert _ops_in(graphs) == {f"rnnkit.triton_{kind}_sequence"}  # (its autograd formula: the backward op)
