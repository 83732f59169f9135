"""rnnkit's custom ops (rnnkit.engine.ops): torch.library.opcheck of each (schema and aliasing, the autograd
registration, the fake implementation against the real one, and the op under the compiler's autograd tracing
against eager), for every cell kind and a representative set of variants, with and without lengths and a
recurrent-dropout mask; and the layers' use of them."""
import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import rnnkit
from rnnkit.engine import loop, ops
from rnnkit.engine.cells import GRUStep, LSTMStep, RNNStep
from rnnkit.kernels.cpu import fused
from test_cells import step_id

pytestmark = pytest.mark.skipif(not fused.sequence_available(torch.float64),
                                reason=f"the C++ sequence kernels are unavailable: {fused.unavailable_reason()}")

STEPS = [LSTMStep(4), LSTMStep(4, proj_size=2, peephole=True), LSTMStep(4, layer_norm=True, coupled=True, bias=False),
         LSTMStep(4, activation="softsign", layer_norm=True, peephole=True), GRUStep(4),
         GRUStep(4, reset_after=False, activation="softsign"), GRUStep(4, bias=False), RNNStep(4),
         RNNStep(4, "relu", bias=False), RNNStep(4, "softsign")]
LAYOUTS = {"whole": (None, False), "lengths-mask": ([4, 2, 0], True)}


def _inputs(step, lengths, masked, T=4, B=3, I=5):
    """The forward op's arguments (xp, state0, params, mask, batch_sizes, source, *config), float64, every
    differentiable input a leaf that requires grad; and the layer input x the projection was made from."""
    gen = torch.Generator().manual_seed(0)
    p = {n: torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_()
         for n, s in step.param_shapes(I).items()}
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
    xp = step.project_input(x, p).detach().requires_grad_()
    state0 = [torch.randn(B, n, generator=gen, dtype=torch.float64).requires_grad_() for n in step.state_sizes()]
    batch_sizes = None if lengths is None else loop.batch_sizes_of(torch.tensor(lengths), T)
    mask = torch.rand(B, step.output_size, generator=gen, dtype=torch.float64) if masked else None
    return (xp, state0, list(p.values()), mask, batch_sizes, None, *ops.config(step)), x


def _detached(args):
    return tuple([t.detach() for t in a] if isinstance(a, list) else a.detach() if isinstance(a, torch.Tensor)
                 else a for a in args)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("step", STEPS, ids=step_id)
def test_opcheck(step, layout):
    args, x = _inputs(step, *LAYOUTS[layout])
    xp, state0, params, mask, batch_sizes, _, *config = args
    torch.library.opcheck(ops._op(step), args)

    out, *rest = ops._op(step)(*args)
    gen = torch.Generator().manual_seed(1)
    d_out = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    d_final = [torch.randn(s.shape, generator=gen, dtype=s.dtype) for s in state0]
    kept = rest[len(state0):]
    torch.library.opcheck(ops._op(step, "_backward"),
                          _detached((d_out, d_final, state0, params, mask, batch_sizes, out, kept, *config)))
    for chunk in (0, 3):  # the projection given, or made inside 3 steps at a time
        source = xp if chunk == 0 else x
        torch.library.opcheck(ops._op(step, "_infer"),
                              _detached((source, state0, params, mask, batch_sizes, chunk, *config)))


@pytest.mark.parametrize("step", STEPS[::3], ids=step_id)
def test_the_backward_op_is_the_forward_ops_gradient(step):
    """float64 gradcheck of the forward op's outputs (out and the final states) through its registered autograd
    formula, with lengths and a mask."""
    args, _ = _inputs(step, [4, 2, 0], True)
    xp, state0, params, mask, batch_sizes, source, *config = args
    n = len(state0)

    def f(xp, *tensors):
        out, *rest = ops._op(step)(xp, list(tensors[:n]), list(tensors[n:]), mask, batch_sizes, None, *config)
        return (out, *rest[:n])

    projection_only = set(step.param_shapes(5)) - set(ops.sequence_params(step))
    for t, name in zip(params, step.param_shapes(5)):  # the op takes them for a double backward only
        t.requires_grad_(name not in projection_only)
    assert torch.autograd.gradcheck(f, (xp, *state0, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_inference_ops_have_no_autograd_formula():
    """Inference keeps nothing a backward could use: through the infer op, a gradient is refused, not wrong."""
    step = GRUStep(4)
    args, _ = _inputs(step, None, False)
    xp, state0, params, mask, batch_sizes, _, *config = args
    out, _ = ops._op(step, "_infer")(xp, state0, params, mask, batch_sizes, 0, *config)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        out.sum().backward()


class _Recording(TorchDispatchMode):
    """Records the ops dispatched while it is active."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def run_seen_by_a_dispatch_mode(layer, x, lengths, grad: bool, op: str, eager=None):
    """Runs `layer` (a train step, or inference) in eager mode and seen by a dispatch mode: asserts that the mode
    sees one call of rnnkit::{op} per direction and layer (then as many of its backward op in a train step; its
    infer op in inference) and that both give the same numbers. `eager`, if given, runs around the eager run."""
    def run():
        inp = x.detach().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            out, _ = layer(inp, lengths=lengths)
            grads = torch.autograd.grad(out.square().sum(), [inp, *layer.parameters()]) if grad else ()
        return out, *grads

    with eager or contextlib.nullcontext():
        want = run()
    with _Recording() as mode:
        got = run()
    ours = [name.removesuffix(".default") for name in mode.ops if name.startswith("rnnkit.")]
    n = layer.num_layers * layer.num_directions
    assert ours == ([f"rnnkit.{op}"] * n + [f"rnnkit.{op}_backward"] * n if grad else [f"rnnkit.{op}_infer"] * n)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("grad", [True, False], ids=["train", "inference"])
def test_layers_call_the_ops(grad, monkeypatch):
    """Seen by a dispatch mode (as by the compilers' tracing), a layer on the engine calls one op per direction and
    layer: the forward op, then the backward op, in a train step; the infer op in inference. In plain eager mode the
    engine calls the ops' implementations directly (ops.dispatched), with the same numbers."""
    layer = rnnkit.LSTM(3, 4, 2, bidirectional=True, peephole=True, impl="engine")
    direct = []

    @contextlib.contextmanager
    def counting():
        with monkeypatch.context() as m:
            m.setattr(ops.CPU, "op", lambda step, suffix="", op=ops.CPU.op: direct.append(suffix) or op(step, suffix))
            yield

    run_seen_by_a_dispatch_mode(layer, torch.randn(5, 2, 3), torch.tensor([5, 3]), grad, "lstm_sequence", counting())
    assert direct == []
