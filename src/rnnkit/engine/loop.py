"""The engine: runs any cell over a sequence, with backpropagation through time written out.

One direction of one layer is `run(step, xp, state0, p, batch_sizes, mask, bptt)`:

  - `xp` (T, B, G*H) is the input projection of every time step, computed before the loop as one
    matrix product (`step.project_input`), so autograd carries its gradient to W_ih, b_ih and x;
  - the loop applies `step.step` once per time step;
  - with `bptt="explicit"` the backward pass walks time in reverse, each step supplying its local
    derivative (`step.step_backward`), and the gradients of the shared recurrent weights are
    summed over time at the end as one matrix product per weight block;
  - with `bptt="autograd"` the same loop is recorded by torch.autograd (the reference; slower).
    Both are twice differentiable: asked for a graph of its backward (create_graph=True), the
    explicit BPTT recomputes the loop under autograd and differentiates that.

The LSTM, GRU and RNN cells run a whole sequence in one call instead of a loop over `step` where the plan says
(`path`, rnnkit.engine.dispatch): "cpp", the C++ kernels (rnnkit.kernels.cpu.fused, on the CPU), or "triton", the
Triton kernels, each family as rnnkit's custom operators (ops.Backend: ops.CPU, triton.TRITON). Where a compiler, a
tracer or a dispatch mode watches (ops.dispatched), the engine calls the forward op, whose autograd formula this
module registers: the backward op, or for a double backward the step loop recorded by autograd. In plain eager mode
_ExplicitBPTT calls the ops' implementations directly, the same functions without the dispatcher's cost.

Variable lengths use the layout of torch's PackedSequence: the batch is sorted longest first and
`batch_sizes[t]` rows are active at step t (a list, or a (T,) int64 tensor: `batch_sizes_of`), so each step runs
on a prefix of the batch; a row that has ended keeps its state, which becomes its final state; outputs past a row's
end are zero.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import dispatch, ops, precision, triton
from .cells import Step, Summed

BPTT_MODES = ("explicit", "autograd")


def batch_sizes_from_lengths(sorted_lengths: Sequence[int], T: int) -> list[int]:
    """Active rows per step for lengths sorted longest first: batch_sizes[t] = #{b: len_b > t}."""
    sizes, b = [], len(sorted_lengths)
    for t in range(T):
        while b and sorted_lengths[b - 1] <= t:
            b -= 1
        sizes.append(b)
    return sizes


def batch_sizes_of(sorted_lengths: Tensor, T: int) -> Tensor:
    """batch_sizes_from_lengths as tensor ops, (T,) int64 (no Python numbers: a compiler traces it as it is)."""
    t = torch.arange(T, device=sorted_lengths.device).unsqueeze(1)  # (T, 1)
    return (sorted_lengths.unsqueeze(0) > t).sum(1)  # (T,)


def _sizes_list(batch_sizes) -> list[int] | None:
    """batch_sizes as Python numbers, for the loop of steps (which slices the active rows)."""
    return batch_sizes.tolist() if isinstance(batch_sizes, Tensor) else batch_sizes


def _sizes_tensor(batch_sizes) -> Tensor | None:
    """batch_sizes as an int64 tensor, for the ops."""
    if batch_sizes is None or isinstance(batch_sizes, Tensor):
        return batch_sizes
    return torch.tensor(batch_sizes, dtype=torch.int64)


def reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence within its own length: y[t, b] = x[len_b - 1 - t, b] for t < len_b.

    x is (T, B, ...), time-major; positions past a sequence's end are zero in the result. The
    operation is its own inverse on the valid steps.
    """
    if lengths is None:
        return x.flip(0)
    T, B = x.shape[:2]
    t = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
    lengths = lengths.to(x.device).unsqueeze(0)  # (1, B)
    valid = t < lengths  # (T, B)
    src = torch.where(valid, lengths - 1 - t, t)  # (T, B)
    feature_dims = [1] * (x.dim() - 2)
    y = x.gather(0, src.reshape(T, B, *feature_dims).expand_as(x))
    return y * valid.reshape(T, B, *feature_dims).to(y.dtype)


PREPARE_MIN_BATCH = 8  # below, Step.prepare's copy of W_hh^T costs more than the per-step products gain


def _forward_loop(step: Step, xp, state0, p, batch_sizes, mask, keep_saved: bool, path: str = "steps"):
    """The time loop shared by both modes. Returns out (T, B, P), final states, per-step saved. Keeping nothing,
    the sequence runs on `path` (dispatch.sequence_path)."""
    if not keep_saved and not records(xp, *state0, *p.values()):
        if path in BACKENDS:
            out, final = BACKENDS[path].infer(step, xp, state0, p, _sizes_tensor(batch_sizes), mask)
            return out, final, []
    T, B = xp.shape[:2]
    if B >= PREPARE_MIN_BATCH:
        p = step.prepare(p)
    if isinstance(batch_sizes, Tensor) and torch.compiler.is_compiling():
        return _masked_loop(step, xp, state0, p, batch_sizes, mask)
    batch_sizes = _sizes_list(batch_sizes)
    state = state0
    outs, saved, finished = [], [], []
    active = B
    for t in range(T):
        bs = B if batch_sizes is None else batch_sizes[t]
        if bs < active:  # rows bs..active ended at the previous step: their state is final
            finished.append(tuple(s[bs:active] for s in state))
            state = tuple(s[:bs] for s in state)
            active = bs
        if bs == 0:  # every sequence has ended; the rest is padding
            outs.append(xp.new_zeros(B, step.output_size))
            saved.append(None)  # keeps saved[t] aligned with t
            continue
        state, cache = step.step(xp[t, :bs], state, p, None if mask is None else mask[:bs])
        h = state[0]
        outs.append(h if bs == B else F.pad(h, (0, 0, 0, B - bs)))
        saved.append(cache if keep_saved else None)
    # rows ended in decreasing blocks: the still-active prefix first, then the blocks in reverse
    final = state
    if finished:
        final = tuple(torch.cat([s, *reversed(parts)]) for s, parts in zip(state, zip(*finished)))
    out = torch.stack(outs) if outs else xp.new_zeros(0, B, step.output_size)  # (T, B, P)
    return out, final, saved


def _masked_loop(step: Step, xp, state0, p, batch_sizes: Tensor, mask):
    """_forward_loop's steps for a compiler, which has no Python numbers for batch_sizes to slice rows with: every
    step runs all rows, and a row that has ended keeps its state (torch.where) and outputs zeros. Rows are
    independent, so the active rows' numbers are the slicing loop's; nothing is saved (the compiler differentiates
    the loop it traces)."""
    B = xp.shape[1]
    active = (batch_sizes.unsqueeze(1) > torch.arange(B, device=batch_sizes.device)).unsqueeze(-1)  # (T, B, 1)
    active = active.to(xp.device)
    state, outs = state0, []
    for t in range(xp.shape[0]):
        new, _ = step.step(xp[t], state, p, mask)
        state = tuple(torch.where(active[t], n, s) for n, s in zip(new, state))
        outs.append(torch.where(active[t], new[0], 0))
    out = torch.stack(outs) if outs else xp.new_zeros(0, B, step.output_size)  # (T, B, P)
    return out, state, []


class _Kept:
    """What _ExplicitBPTT's forward hands to its setup_context (an object, not a dict: torch.func
    rebuilds dicts among a Function's inputs, so a dict would not come back)."""

    whole: bool
    tensors: list
    options: dict
    ran: list
    cache_size: int


class _ExplicitBPTT(torch.autograd.Function):
    """Forward: the time loop without autograd. Backward: BPTT by hand.

    forward() runs without a ctx (so torch.func's transforms, grad and functional_call, can run it):
    what the backward keeps goes into `kept`, a _Kept passed as an input, and setup_context() saves it.
    Saved tensors, in order: the inputs (the recomputation's source, mask, initial states, parameters:
    alive anyway, so saving them costs no memory), then what the backward keeps."""

    @staticmethod
    def forward(step, batch_sizes, names, kept, path, finished, xp, source, mask, *tensors):
        n_states = step.num_states
        state0, params = tensors[:n_states], dict(zip(names, tensors[n_states:]))
        whole = _sequence(step, xp, state0, params, batch_sizes, mask, path, finished)
        if whole is not None:  # the step ran the sequence itself and keeps what its backward needs
            out, final, (tensors_kept, options) = whole
            kept.whole, kept.tensors, kept.options = True, tensors_kept, options
        else:
            out, final, saved = _forward_loop(step, xp, state0, params, batch_sizes, mask, keep_saved=True)
            ran = [t for t, cache in enumerate(saved) if cache is not None]
            kept.whole, kept.ran, kept.cache_size = False, ran, len(saved[ran[0]]) if ran else 0
            kept.tensors = [x for cache in saved if cache for x in cache]
        # a final state that is an initial one (no step ran) leaves as a view: autograd cannot both save
        # an input and return it as it is
        final = tuple(s.view_as(s) if any(s is s0 for s0 in state0) else s for s in final)
        return (out, *final)

    @staticmethod
    def setup_context(ctx, inputs, output):
        step, batch_sizes, names, kept, path, finished, xp, source, mask, *tensors = inputs
        ctx.step, ctx.batch_sizes, ctx.names, ctx.xp_shape, ctx.finished = step, batch_sizes, names, xp.shape, finished
        # A double backward recomputes the step loop under autograd from `source`, the input the
        # projection was made from (or from xp itself when the caller has no such input).
        ctx.from_source = source is not None
        ctx.whole = kept.whole
        if ctx.whole:
            ctx.kept_options = kept.options
        else:
            ctx.ran, ctx.cache_size = kept.ran, kept.cache_size
        # autograd owns the kept tensors: freed after backward, checked against in-place edits
        ctx.save_for_backward(source if ctx.from_source else xp, mask, *tensors, *kept.tensors)

    @staticmethod
    def backward(ctx, d_out, *d_final):
        step, names = ctx.step, ctx.names
        n_inputs = 2 + step.num_states + len(names)
        saved = ctx.saved_tensors
        inputs, rest = saved[:n_inputs], saved[n_inputs:]
        nothing = (None,) * 6  # step, batch_sizes, names, kept, path, finished
        if torch.is_grad_enabled():  # create_graph=True: a graph of the backward is asked for
            source, mask, state0, params = _saved_inputs(ctx, inputs)
            wanted = ctx.needs_input_grad[6:]  # xp, source, mask, *state0, *params
            grads = _recorded_backward(step, ctx.batch_sizes, source, ctx.from_source, mask, state0, params,
                                       (wanted[0], *wanted[3:]), d_out, d_final, ctx.finished)
            return (*nothing, grads[0], None, None, *grads[1:])
        if ctx.whole:  # rest: out, then the forward op's kept outputs; kept_options: the backend's path
            _, mask, state0, params = _saved_inputs(ctx, inputs)
            d_final = [torch.zeros_like(s) if d is None else d for s, d in zip(state0, d_final)]
            d_xp, d_state, grads = BACKENDS[ctx.kept_options].backward(
                step, d_out, d_final, state0, params, mask, _sizes_tensor(ctx.batch_sizes), rest[0], rest[1:],
                finished=ctx.finished)
            return (*nothing, d_xp, None, None, *d_state, *(grads.get(name) for name in names))
        batch_sizes, k = ctx.batch_sizes, ctx.cache_size
        _, mask, state0, params = _saved_inputs(ctx, inputs)
        cache = {t: rest[j * k:(j + 1) * k] for j, t in enumerate(ctx.ran)}
        B = ctx.xp_shape[1]
        d_state = [torch.zeros_like(s) if d is None else d.clone() for s, d in zip(state0, d_final)]
        # every entry is written unless rows end early or steps are skipped: only then zero-fill
        new = d_out.new_empty if batch_sizes is None else d_out.new_zeros
        d_xp = new(ctx.xp_shape)  # (T, B, G*H)
        sums = _TimeSums(d_xp, new)
        for t in reversed(ctx.ran):
            bs = B if batch_sizes is None else batch_sizes[t]
            d_s = [d[:bs] for d in d_state]
            d_s[0] = d_s[0] + d_out[t, :bs]
            target = d_xp[t, :bs]
            d_xp_t, d_prev, grads = step.step_backward(
                d_s, cache[t], params, None if mask is None else mask[:bs], out=target)
            if d_xp_t is not target:
                target.copy_(d_xp_t)
            if bs == B:
                d_state = list(d_prev)
            else:  # rows bs.. have ended: their gradients wait for their last step
                for d, g in zip(d_state, d_prev):
                    d[:bs] = g
            sums.add(t, bs, d_xp_t, grads)
        d_params = [sums.total(name, params[name]) for name in names]
        return (*nothing, d_xp, None, None, *d_state, *d_params)


BACKENDS = {"cpp": ops.CPU, "triton": triton.TRITON}  # the sequence paths that run as rnnkit's custom ops


def _sequence(step, xp, state0, params, batch_sizes, mask, path: str, finished: bool = True):
    """_ExplicitBPTT's whole-sequence call on `path` (dispatch.sequence_path), where it is a backend's: the forward
    op's computation (Backend.forward; here in eager mode, and under torch.func's transforms, which cannot run a
    custom op's autograd formula). Returns (out, final states, (kept tensors, path)), or None: the loop of steps."""
    if path not in BACKENDS:
        return None
    out, final, kept = BACKENDS[path].forward(step, xp, state0, params, _sizes_tensor(batch_sizes), mask,
                                              finished=finished)
    return out, final, ([out, *kept], path)


def _transformed(*tensors: Tensor) -> bool:
    """Whether torch.func's transforms (grad, vmap, ...) run on these tensors."""
    return not torch.compiler.is_compiling() and any(torch._C._functorch.is_functorch_wrapped_tensor(t)
                                                     for t in tensors)


def _saved_inputs(ctx, inputs):
    """(source or xp, mask, initial states, {name: parameter}) from the first saved tensors."""
    source, mask, *tensors = inputs
    n = ctx.step.num_states
    return source, mask, tuple(tensors[:n]), dict(zip(ctx.names, tensors[n:]))


def _recorded_backward(step, batch_sizes, source, from_source: bool, mask, state0, params: dict, wanted, d_out,
                       d_final, finished: bool = True) -> list:
    """The backward as PyTorch ops that autograd records, for a double backward: the step loop is run again under
    autograd from the saved inputs and differentiated with create_graph=True. `source` is the input xp was
    projected from (`from_source`), else xp itself; `wanted` says which of (xp, *state0, *params) need a gradient.
    Returns the gradients of (xp, *state0, *params), None where not wanted. `finished` False: xp is the cell's
    input_product, which the loop finished (run's `finished`).

    Each input enters the loop through an alias (a view), so that the gradient taken with respect to it
    counts only the loop's use of it: the projection xp = project_input(source, p) (or input_product) is
    differentiated by autograd outside this function, and again here only through the recomputed xp."""
    names, n = list(params), step.num_states
    tensors = (*state0, *params.values())
    if from_source:
        xp = step.project_input(source, params) if finished else step.input_product(source, params)
    else:
        xp = source
    loop_xp, *loop_tensors = (t.view_as(t) if t.requires_grad else t for t in (xp, *tensors))
    loop_state0, loop_params = tuple(loop_tensors[:n]), dict(zip(names, loop_tensors[n:]))
    loop_in = loop_xp if finished else step.finish_input(loop_xp, loop_params)
    out, final, _ = _forward_loop(step, loop_in, loop_state0, loop_params, batch_sizes, mask, keep_saved=True)
    outputs = [out, *final]
    grad_outputs = [torch.zeros_like(o) if d is None else d for o, d in zip(outputs, (d_out, *d_final))]
    targets = [loop_xp, *loop_tensors]
    asked = [i for i, (t, w) in enumerate(zip(targets, wanted)) if w and t.requires_grad]
    found = () if not asked else torch.autograd.grad(outputs, [targets[i] for i in asked], grad_outputs,
                                                     create_graph=True, allow_unused=True)
    grads = [None] * len(targets)
    for i, g in zip(asked, found):
        grads[i] = torch.zeros_like(targets[i]) if g is None else g
    return grads


def _register_sequence_autograd(backend: ops.Backend, kind: type) -> None:
    """The forward op's autograd formula (ops.Backend): the backward op over what the forward kept, or under
    create_graph=True the step loop recorded by autograd, as _ExplicitBPTT's."""

    def setup_context(ctx, inputs, output):
        xp, state0, params, mask, batch_sizes, source, *config = inputs
        ctx.step = step = kind(*config)
        ctx.n_params, ctx.n_config, ctx.from_source = len(params), len(config), source is not None
        kept = output[1 + step.num_states:]
        ctx.mark_non_differentiable(*kept)
        ctx.set_materialize_grads(False)  # no zeros for the kept outputs, which never get a gradient
        # the inputs (alive anyway), then the kept outputs: autograd owns them, checked against in-place edits
        ctx.save_for_backward(source if ctx.from_source else xp, mask, batch_sizes, *state0, *params, output[0],
                              *kept)

    def backward(ctx, d_out, *d_rest):
        step, n, m = ctx.step, ctx.step.num_states, ctx.n_params
        source, mask, batch_sizes, *saved = ctx.saved_tensors
        state0, params, out, kept = saved[:n], saved[n:n + m], saved[n + m], saved[n + m + 1:]
        d_final = d_rest[:n]
        nothing = (None,) * (3 + ctx.n_config)  # mask, batch_sizes, source, the cell's fields
        if torch.is_grad_enabled():  # create_graph=True: a graph of the backward is asked for
            needs_xp, needs_state0, needs_params = ctx.needs_input_grad[:3]
            p = dict(zip(step.param_shapes(0), params))
            grads = _recorded_backward(step, _sizes_list(batch_sizes), source, ctx.from_source, mask, state0, p,
                                       (needs_xp, *needs_state0, *needs_params), d_out, d_final)
            return grads[0], grads[1:1 + n], grads[1 + n:], *nothing
        d_out = torch.zeros_like(out) if d_out is None else d_out
        d_final = [torch.zeros_like(s) if d is None else d for s, d in zip(state0, d_final)]
        d_xp, d_state0, grads = backend.backward(step, d_out, d_final, state0,
                                                 dict(zip(step.param_shapes(0), params)), mask, batch_sizes, out, kept)
        return d_xp, list(d_state0), [grads.get(name) for name in step.param_shapes(0)], *nothing

    torch.library.register_autograd(f"rnnkit::{backend.name(kind)}", backward, setup_context=setup_context)


for _backend in BACKENDS.values():
    for _kind in ops.CELLS:
        _register_sequence_autograd(_backend, _kind)


class _TimeSums:
    """Sums the shared parameters' per-step gradient terms (see cells.py) over time.

    Each term is written into a (T, B, n) buffer as it is made, while it is in cache; at the end a
    matrix parameter's gradient is one product over all steps and a vector's one reduction. Rows
    past a sequence's end stay zero, so they add nothing.
    """

    def __init__(self, d_xp: Tensor, new):
        self.d_xp = d_xp  # (T, B, G*H), filled by the backward loop
        self.new = new  # new_zeros, or new_empty when every entry will be written
        self.buffers: dict[str, object] = {}
        self.summed: dict[str, Tensor] = {}  # Summed contributions, added as they come

    def _buffer(self, like: Tensor) -> Tensor:
        T, B = self.d_xp.shape[:2]
        return self.new(T, B, like.shape[1])

    def add(self, t: int, bs: int, d_xp_t: Tensor, grads: dict) -> None:
        for name, g in grads.items():
            if isinstance(g, Summed):
                total = self.summed.get(name)
                self.summed[name] = g.value.clone() if total is None else total.add_(g.value)
                continue
            if isinstance(g, Tensor) and g.dim() == 1:  # vector parameter, summed over the batch
                if name not in self.buffers:
                    self.buffers[name] = self.new(self.d_xp.shape[0], 1, g.shape[0])
                self.buffers[name][t, 0] = g
                continue
            if isinstance(g, Tensor):  # vector parameter, one row per sequence
                if name not in self.buffers:
                    self.buffers[name] = self._buffer(g)
                self.buffers[name][t, :bs] = g
                continue
            if name not in self.buffers:  # matrix parameter: (d_pre, inp) per block of rows
                self.buffers[name] = [(None if d is d_xp_t else self._buffer(d), self._buffer(x)) for d, x in g]
            for (d_buf, x_buf), (d, x) in zip(self.buffers[name], g):
                if d_buf is not None:
                    d_buf[t, :bs] = d
                x_buf[t, :bs] = x

    def total(self, name: str, param: Tensor) -> Tensor:
        buf, summed = self.buffers.get(name), self.summed.get(name)
        if buf is None:
            return torch.zeros_like(param) if summed is None else summed
        if isinstance(buf, Tensor):
            total = buf.sum((0, 1))
        else:
            blocks = [(self.d_xp if d is None else d).flatten(0, 1).T @ x.flatten(0, 1) for d, x in buf]
            total = torch.cat(blocks) if len(blocks) > 1 else blocks[0]
        return total if summed is None else total + summed


def records(*tensors: Tensor) -> bool:
    """Whether autograd records a computation on these tensors (a backward pass may follow)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def run(step: Step, xp: Tensor, state0: tuple[Tensor, ...], p: dict[str, Tensor],
        batch_sizes: list[int] | Tensor | None = None, mask: Tensor | None = None,
        bptt: str = "explicit", source: Tensor | None = None, path: str | None = None, finished: bool = True
        ) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run `step` over time: xp (T, B, G*H), state0 each (B, ·) -> out (T, B, P), final states.

    With `batch_sizes`, rows must be sorted longest first (see the module docstring).
    `mask` (B, P) is the recurrent-dropout mask, reused at every step.
    `source`: the input xp was projected from (xp == step.project_input(source, p)), if the caller has
    it. The explicit BPTT is twice differentiable: under create_graph=True its backward runs the step
    loop again as recorded PyTorch ops, starting from `source` (which autograd keeps anyway for the
    projection's own backward); without `source` it keeps xp for that.
    `path`: how the sequence runs, "cpp", "triton" or "steps", as a layer's dispatch.Plan says; None: as
    dispatch.sequence_path says for these tensors.
    `finished` False: xp is step.input_product(source, p) (a cell that `splits_input`), finished by the C++ loop
    where the engine calls it directly (the explicit BPTT on path "cpp"), else by step.finish_input here (`project`).
    """
    if bptt not in BPTT_MODES:
        raise ValueError(f"bptt must be one of {', '.join(map(repr, BPTT_MODES))}; got {bptt!r}")
    device_type = xp.device.type
    if precision.autocast_enabled(device_type):
        # the loop mixes many ops: run all of it in autocast's dtype, casting once, differentiably
        dtype = torch.get_autocast_dtype(device_type)
        cast = lambda t: precision.cast(t, dtype)  # noqa: E731
        with torch.autocast(device_type, enabled=False):
            return run(step, cast(xp), tuple(map(cast, state0)), {k: cast(v) for k, v in p.items()},
                       batch_sizes, cast(mask), bptt, cast(source), path, finished)
    if bptt == "autograd":
        path = "steps"
    elif path is None:
        path = dispatch.sequence_path(step, xp, *state0, *p.values())[0]
    recording = records(xp, *state0, *p.values())
    op = bptt == "explicit" and recording and ops.dispatched() and path in BACKENDS \
        and not _transformed(xp, *state0, *p.values())  # the forward op, with its autograd formula
    # under torch.compile the compiler derives the backward of the loop it traces: the loop recorded by autograd
    recorded = bptt == "autograd" or not recording or torch.compiler.is_compiling()
    if not finished and (op or recorded or path != "cpp"):
        xp, finished = step.finish_input(xp, p), True
    if op:
        return BACKENDS[path].sequence(step, xp, state0, p, _sizes_tensor(batch_sizes), mask, source)
    if recorded:
        out, final, _ = _forward_loop(step, xp, state0, p, batch_sizes, mask, keep_saved=False, path=path)
        return out, final
    names, batch_sizes = tuple(p), _sizes_list(batch_sizes)
    out, *final = _ExplicitBPTT.apply(step, batch_sizes, names, _Kept(), path, finished, xp, source, mask,
                                      *state0, *p.values())
    return out, tuple(final)


def project(step: Step, x: Tensor, p: dict[str, Tensor], path: str | None) -> tuple[Tensor, bool]:
    """The input projection of x (T, B, I) for run's `xp` and `finished`: xp and whether it is finished, which it is
    not for a cell that `splits_input` on path "cpp" (the C++ loop finishes it, see run)."""
    if step.splits_input and path == "cpp":
        return step.input_product(x, p), False
    return step.project_input(x, p), True


def infer(step, x: Tensor, state0: tuple[Tensor, ...], p: dict[str, Tensor], batch_sizes, mask: Tensor | None,
          chunk: int) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Inference over a whole sequence on the C++ ops (path "cpp") from the layer's input x (T, B, I), the input
    projection included (`chunk` steps of it at a time): out, final states."""
    return ops.CPU.infer(step, x, state0, p, _sizes_tensor(batch_sizes), mask, chunk)
