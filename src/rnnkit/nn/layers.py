"""Drop-in recurrent layers and cells with torch.nn's signatures, parameter names and state dicts.

A layer owns the parameters (`weight_ih_l0`, `bias_hh_l1_reverse`, ...) and builds depth and
direction by composition: for each layer and direction it hoists the input projection, runs the
engine, and reverses padded sequences for the backward direction. The math of a step lives in
cells.py, the time loop and BPTT in engine.py.

Shapes: B batch, T time, I input, H hidden, P = proj_size or H, L layers, D directions.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..engine import dispatch, loop, precision
from ..engine.cells import GRUStep, LSTMStep, RNNStep, Step
from ..errors import ArgumentTypeError, ShapeError, StateTypeError


def _check_int(value, name: str, minimum: int, below=ValueError) -> int:
    """An integer >= minimum: TypeError (as torch.nn) for another type, `below` for a smaller value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an integer >= {minimum}; got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise below(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _check_prob(value, name: str, one: bool = False) -> float:
    """A probability in [0, 1) ([0, 1] with `one`, as torch.nn's dropout: p = 1 drops everything)."""
    interval = "[0, 1]" if one else "[0, 1)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 <= value < 1 or one and value == 1):
        raise ValueError(f"{name} must be a number in {interval}; got {value!r}")
    return float(value)


def _check_bool(value, name: str) -> bool:
    """A flag that must be a bool, as torch.nn requires of bias and batch_first (TypeError)."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be True or False; got {value!r} ({type(value).__name__})")
    return value


def _check_choice(value, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def _warn_if_dropout_is_inert(dropout: float, num_layers: int) -> None:
    if dropout > 0 and num_layers == 1:
        warnings.warn(f"dropout={dropout} has no effect with num_layers=1: rnnkit applies "
                      "dropout between layers only, as torch.nn does", stacklevel=4)


def check_lengths(lengths, T: int, B: int) -> Tensor:
    """Validate `lengths=` for an input of T steps and B sequences; returns an int64 tensor."""
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dim() == 0:
        lengths = lengths.reshape(1)
    if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be a 1-D integer tensor; got dtype {lengths.dtype}, shape {tuple(lengths.shape)}")
    if lengths.numel() != B:
        raise ValueError(f"lengths has {lengths.numel()} entries; expected one per sequence, batch size {B}")
    if torch.compiler.is_compiling():  # no Python numbers from the data under a compiler: the check is an op
        torch._assert_async(((lengths >= 0) & (lengths <= T)).all(),
                            f"lengths must lie in [0, {T}] (the input's time steps)")
        return lengths.long()
    lo, hi = (int(lengths.min()), int(lengths.max())) if B else (0, 0)
    if lo < 0 or hi > T:
        raise ValueError(f"lengths must lie in [0, {T}] (the input's time steps); got min {lo}, max {hi}")
    return lengths.long()


def record_plan(module: nn.Module, plan: dispatch.Plan) -> None:
    """Keep the plan of a layer's call as its `last_plan`, outside a compiler's graph (which has no attribute to
    set)."""
    if not torch.compiler.is_compiling():
        module.last_plan = plan


def check_sequence_input(input: Tensor, input_size: int) -> None:
    """A sequence tensor: (T, B, I) or (B, T, I) batched, (T, I) unbatched."""
    if input.dim() not in (2, 3):
        raise ShapeError(f"input must be 3-D (batched) or 2-D (unbatched); got shape {tuple(input.shape)}")
    if input.shape[-1] != input_size:
        raise ShapeError(f"input has {input.shape[-1]} features (shape {tuple(input.shape)}); "
                         f"expected input_size={input_size}")


def _init_parameters(module: nn.Module, step: Step, named: dict[str, str], forget_bias: float | None):
    """torch.nn's init, U(-1/sqrt(H), 1/sqrt(H)), for weights, biases and peepholes; layer-norm
    gains 1 and biases 0; then the forget-gate bias, if one is asked for."""
    bound = 1 / math.sqrt(step.hidden_size) if step.hidden_size else 0.0  # cells may have H = 0
    with torch.no_grad():
        for generic, name in named.items():
            param = getattr(module, name)
            if generic.startswith("ln_weight"):
                param.fill_(1.0)
            elif generic.startswith("ln_bias"):
                param.zero_()
            else:
                param.uniform_(-bound, bound)
            if forget_bias is not None and generic in ("bias_ih", "bias_hh"):
                H = step.hidden_size
                f = 0 if getattr(step, "coupled", False) else 1  # gate order i, f, g, o or f, g, o
                param[f * H:(f + 1) * H] = forget_bias if generic == "bias_ih" else 0.0


class _Recurrent(nn.Module):
    """Stacked, optionally bidirectional layers of one cell, as torch.nn.RNNBase."""

    def __init__(self, step: Step, input_size, num_layers, batch_first, dropout, bidirectional,
                 recurrent_dropout, impl, forget_bias, device, dtype):
        super().__init__()
        self.cell = step
        self.input_size = _check_int(input_size, "input_size", 1)
        self.hidden_size = step.hidden_size
        self.num_layers = _check_int(num_layers, "num_layers", 1)
        self.bias = step.bias
        self.batch_first = _check_bool(batch_first, "batch_first")
        self.dropout = _check_prob(dropout, "dropout", one=True)
        self.bidirectional = bool(bidirectional)  # torch.nn takes any value here, as its truth value
        self.recurrent_dropout = _check_prob(recurrent_dropout, "recurrent_dropout")
        self.impl = dispatch.check_impl(_check_choice(impl, "impl", dispatch.IMPLS), step)
        _warn_if_dropout_is_inert(self.dropout, self.num_layers)
        D, P = self.num_directions, step.output_size
        factory = {"device": device, "dtype": dtype}
        self._names = []  # per (layer, direction): generic name -> attribute name
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else P * D
            for direction in range(D):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                named = {}
                for generic, shape in step.param_shapes(layer_input).items():
                    named[generic] = generic + suffix
                    self.register_parameter(generic + suffix, nn.Parameter(torch.empty(shape, **factory)))
                self._names.append(named)
        self.forget_bias = forget_bias
        self.last_plan: dispatch.Plan | None = None  # what ran the last forward() or step(), and why
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def proj_size(self) -> int:
        return getattr(self.cell, "proj_size", 0)

    def reset_parameters(self) -> None:
        for named in self._names:
            _init_parameters(self, self.cell, named, self.forget_bias)

    def flatten_parameters(self) -> None:
        """No-op, for code written against torch.nn (the engine needs no flat weight buffer)."""

    @property
    def _flat_weights_names(self) -> list[str]:
        return [name for named in self._names for name in named.values()]

    @property
    def _flat_weights(self) -> list[Tensor]:
        """The weights as the forward pass sees them: the Parameters, or what a reparametrization
        (torch.nn.utils.weight_norm, parametrize) computes in their place."""
        return [getattr(self, name) for name in self._flat_weights_names]

    def _weights(self, index: int, dtype: torch.dtype) -> dict[str, Tensor]:
        """Layer-direction `index`'s parameters by generic name, in the dtype the call computes in."""
        return {generic: precision.cast(getattr(self, name), dtype) for generic, name in self._names[index].items()}

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, name) for name in named.values()] for named in self._names]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for key, default in (("num_layers", 1), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False),
                             ("recurrent_dropout", 0.0), ("impl", "auto"), ("forget_bias", None)):
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)!r}"
        return s + _step_repr(self.cell)

    # -- forward -----------------------------------------------------------------------------
    def forward(self, input, hx=None, *, lengths=None):
        """Run the stack over a sequence.

        input: (T, B, I), (B, T, I) with batch_first, (T, I) unbatched, or a PackedSequence.
        hx: initial state(s), each (D*L, B, size) ((D*L, size) unbatched), zeros if None.
        lengths: optional 1-D integer tensor of B valid lengths in [0, T], any order. Outputs past
            a sequence's end are zero, the final state is the one at its last valid step, and the
            reverse direction starts at that step; a zero-length sequence returns its initial state.
        Returns output (T, B, D*P) (batch_first: (B, T, D*P); packed if the input was), and the
        final state(s) (D*L, B, size). What ran, and why, is then in `last_plan` (a dispatch.Plan).
        """
        packed = isinstance(input, PackedSequence)
        perm = unperm = None
        if packed:
            if lengths is not None:
                raise ValueError("lengths= cannot be given with a PackedSequence input, which carries its own lengths")
            x, lengths = pad_packed_sequence(input)  # (T, B, I), original batch order
            perm, unperm = input.sorted_indices, input.unsorted_indices
            batched = True
        else:
            x, batched = self._check_input(input)
            if lengths is not None:
                lengths = check_lengths(lengths, x.shape[0], x.shape[1])
        dtype = precision.compute_dtype(self.mode.split("_")[0], x, self.weight_ih_l0.dtype)
        autocast = precision.autocast_enabled(x.device.type)
        with precision.autocast_off(x.device.type):  # cast once to the call's dtype, then run without autocast
            return self._forward(input, packed, x, batched, hx, lengths, perm, unperm, dtype, autocast)

    def _forward(self, input, packed, x, batched, hx, lengths, perm, unperm, dtype, autocast):
        x = precision.cast(x, dtype)
        T, B = x.shape[:2]
        states = self._check_state(hx, B, batched, x, autocast)
        if lengths is not None and perm is None:
            perm = torch.sort(lengths, descending=True, stable=True)[1]
            unperm = torch.argsort(perm)
        if perm is not None:
            x = x.index_select(1, perm.to(x.device))
            states = tuple(s.index_select(1, perm.to(s.device)) for s in states)
            lengths = lengths.index_select(0, perm.to(lengths.device))
        plan = dispatch.plan(self.impl, self.cell, x.device, dtype, B, self.recurrent_dropout, self.training, lengths,
                             recording=torch.is_grad_enabled(), steps=T)
        record_plan(self, plan)
        if plan.impl == "native":
            weights = [w for index in range(len(self._names)) for w in self._weights(index, dtype).values()]
            out, finals = dispatch.run_native(self.cell, weights, x, states, lengths, self.num_layers, self.dropout,
                                              self.training, self.bidirectional)
        else:
            out, finals = self._run_stack(x, states, lengths, plan, dtype)  # (T, B, D*P), (D*L, B, .)
        if unperm is not None:
            finals = tuple(s.index_select(1, unperm.to(s.device)) for s in finals)
        if packed:
            data = pack_padded_sequence(out, lengths.cpu(), enforce_sorted=True).data
            return input._replace(data=data), self._pack_state(finals)
        if unperm is not None:
            out = out.index_select(1, unperm.to(out.device))
        if not batched:
            return out.squeeze(1), self._pack_state(tuple(s.squeeze(1) for s in finals))
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, self._pack_state(finals)

    def _run_stack(self, x, states, lengths, plan: dispatch.Plan, dtype):
        """x (T, B, I) in `dtype`, batch sorted longest first when lengths are given; on the engine, as `plan` says."""
        bptt, path = ("autograd" if plan.impl == "autograd" else "explicit"), plan.sequence
        step, D = self.cell, self.num_directions
        T, B = x.shape[:2]
        batch_sizes = None if lengths is None else loop.batch_sizes_of(lengths, T)  # (T,)
        finals = [[] for _ in range(step.num_states)]
        for layer in range(self.num_layers):
            outs = []
            for direction in range(D):
                index = layer * D + direction
                p = self._weights(index, dtype)
                state0 = tuple(s[index] for s in states)
                inp = reverse_or_keep(x, lengths, direction)
                mask = None
                if self.training and self.recurrent_dropout > 0:
                    keep = 1 - self.recurrent_dropout  # variational: one mask per sequence
                    mask = torch.bernoulli(x.new_full((B, step.output_size), keep)) / keep
                if loop.records(inp, *state0, *p.values()):
                    xp, finished = loop.project(step, inp, p, path)  # (T, B, G*H), one product for all steps
                    out, final = loop.run(step, xp, state0, p, batch_sizes, mask, bptt, source=inp, path=path,
                                          finished=finished)
                else:
                    out, final = _infer_in_chunks(step, inp, state0, p, batch_sizes, mask, path)
                outs.append(reverse_or_keep(out, lengths, direction))
                for collected, s in zip(finals, final):
                    collected.append(s)
            x = torch.cat(outs, 2) if D > 1 else outs[0]  # (T, B, D*P)
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)  # vertical connections only
        return x, tuple(torch.stack(f) for f in finals)

    def step(self, x_t: Tensor, hx=None):
        """One time step of a unidirectional layer, as in generation: x_t (B, I) and the state in
        forward()'s layout ((L, B, H) tensors, or None for zeros) -> (output (B, P), new state).

        The same numbers as forward() on a one-step sequence, with less work per call: PyTorch's
        fused cell functions (torch.lstm_cell, gru_cell, rnn_tanh_cell, rnn_relu_cell) where the
        cell has one, else the cell's own step. Inter-layer dropout applies in training mode;
        recurrent dropout is a per-sequence mask and needs forward().
        """
        if self.bidirectional:
            raise ValueError("step() runs one direction forward in time; this layer is bidirectional")
        if not isinstance(x_t, Tensor) or x_t.dim() != 2 or x_t.shape[1] != self.input_size:
            shape = tuple(x_t.shape) if isinstance(x_t, Tensor) else type(x_t).__name__
            raise ValueError(f"step() takes one time step of shape (batch, input_size={self.input_size}); got {shape}")
        dtype = precision.compute_dtype(self.mode.split("_")[0], x_t, self.weight_ih_l0.dtype)
        autocast = precision.autocast_enabled(x_t.device.type)
        with precision.autocast_off(x_t.device.type):  # cast once to the call's dtype, run without autocast
            return self._step(precision.cast(x_t, dtype), hx, dtype, autocast)

    def _step(self, x_t: Tensor, hx, dtype: torch.dtype, autocast: bool):
        states = self._check_state(hx, x_t.shape[0], True, x_t, autocast)
        plan, fused = dispatch.plan_step(self.cell)
        record_plan(self, plan)
        finals = [[] for _ in states]  # per state: its (B, H) at each layer
        x = x_t
        for layer in range(len(self._names)):
            state = tuple(s[layer] for s in states)
            p = self._weights(layer, dtype)
            if fused is not None:  # (weights and biases in torch's order, as the fused functions take them)
                state = fused(x, state, *p.values())
            else:
                state, _ = self.cell.step(self.cell.project_input(x.unsqueeze(0), p)[0], state, p, None)
            for collected, s in zip(finals, state):
                collected.append(s)
            x = state[0]  # (B, P)
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x, self._pack_state(tuple(torch.stack(f) for f in finals))

    # -- validation --------------------------------------------------------------------------
    def _check_input(self, input) -> tuple[Tensor, bool]:
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a Tensor or PackedSequence; got {type(input).__name__}")
        check_sequence_input(input, self.input_size)
        batched = input.dim() == 3
        if not batched:
            return input.unsqueeze(1), False  # (T, 1, I)
        return (input.transpose(0, 1) if self.batch_first else input), True

    def _state_shapes(self, B: int, batched: bool) -> list[tuple[int, ...]]:
        LD = self.num_layers * self.num_directions
        return [(LD, B, size) if batched else (LD, size) for size in self.cell.state_sizes()]

    def _check_state(self, hx, B: int, batched: bool, x: Tensor, autocast: bool = False) -> tuple[Tensor, ...]:
        """The initial states in forward()'s layout, checked against x's batch and dtype (under autocast
        any floating dtype but float64, cast to x's)."""
        if hx is None:
            return tuple(x.new_zeros(self.num_layers * self.num_directions, B, size)
                         for size in self.cell.state_sizes())
        shapes = self._state_shapes(B, batched)
        states = self._unpack_state(hx)
        for name, s, shape in zip(("h_0", "c_0"), states, shapes):
            if not isinstance(s, Tensor):
                raise StateTypeError(f"{name} must be a Tensor; got {type(s).__name__}")
            if tuple(s.shape) != shape:
                raise ShapeError(f"{name} must have shape {shape} (num_layers * num_directions, "
                                 f"{'batch, ' if batched else ''}size); got {tuple(s.shape)}")
            if s.dtype != x.dtype and not (autocast and s.is_floating_point() and s.dtype != torch.float64):
                raise ShapeError(f"{name} has dtype {s.dtype}; expected the input's dtype {x.dtype}")
        states = tuple(precision.cast(s, x.dtype) for s in states)  # autocast: in the call's dtype
        return states if batched else tuple(s.unsqueeze(1) for s in states)

    def _unpack_state(self, hx) -> tuple:
        if isinstance(hx, (tuple, list)):
            raise StateTypeError(f"{type(self).__name__} hx must be a Tensor h_0; got a {type(hx).__name__} "
                                 f"of {len(hx)}")
        return (hx,)

    def _pack_state(self, finals: tuple[Tensor, ...]):
        return finals[0]


def _step_repr(step: Step) -> str:
    """The cell options that differ from their defaults, as keyword arguments."""
    return "".join(f", {f.name}={getattr(step, f.name)!r}" for f in dataclasses.fields(step)
                   if f.name != "hidden_size" and getattr(step, f.name) != f.default)


INFERENCE_CHUNK_BYTES = 4 << 20  # see _infer_in_chunks


def _infer_in_chunks(step, inp: Tensor, state0: tuple, p: dict, batch_sizes, mask, path: str):
    """Inference on the engine: project the input and run the loop a chunk of time steps at a time (each
    chunk's projection at most INFERENCE_CHUNK_BYTES), carrying the state from chunk to chunk. The same
    numbers as one projection of all steps, which for long sequences is a tensor big enough (over glibc's
    32 MiB mmap threshold) to be page-faulted in afresh at every call: at B=32, T=512, H=128 that took six
    times as long as the matrix product itself. Training keeps the whole projection (BPTT needs it). Where the
    C++ sequence loop runs (path "cpp": loop.infer), it projects the chunks itself."""
    T, B = inp.shape[:2]
    chunk = max(1, INFERENCE_CHUNK_BYTES // max(1, B * step.gates * step.hidden_size * inp.element_size()))
    if path == "cpp":
        return loop.infer(step, inp, state0, p, batch_sizes, mask, chunk)  # the C++ loop, projection included
    outs, state = [], state0
    for start in range(0, max(T, 1), chunk):  # T = 0: one empty run, which returns the initial state
        sizes = None if batch_sizes is None else batch_sizes[start:start + chunk]
        out, state = loop.run(step, step.project_input(inp[start:start + chunk], p), state, p, sizes, mask,
                              path=path)
        outs.append(out)
    return (outs[0] if len(outs) == 1 else torch.cat(outs)), state


def reverse_or_keep(x: Tensor, lengths: Tensor | None, direction: int) -> Tensor:
    return loop.reverse_padded(x, lengths) if direction else x


class RNN(_Recurrent):
    """Elman RNN layer, drop-in for torch.nn.RNN: `h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`.

    Args (as torch.nn.RNN): input_size, hidden_size, num_layers=1, nonlinearity='tanh' ('relu',
    or 'softsign': v / (1 + |v|)), bias=True, batch_first=False, dropout=0.0 (between layers only),
    bidirectional=False, device, dtype.
    Keyword-only: recurrent_dropout=0.0 (variational, on h entering W_hh, one mask per sequence),
    impl='auto' (see dispatch.py: 'native' torch kernel, 'engine' hand-written BPTT, 'autograd', 'triton' the
    engine with Triton kernels on CUDA).
    proj_size, as in torch.nn, is refused with ValueError (LSTM only).
    forward(input, hx=None, *, lengths=None) -> (output, h_n).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None, *,
                 recurrent_dropout=0.0, impl="auto", proj_size=None):
        _refuse_projection(proj_size)
        step = RNNStep(_check_int(hidden_size, "hidden_size", 1), nonlinearity, _check_bool(bias, "bias"))
        super().__init__(step, input_size, num_layers, batch_first, dropout, bidirectional,
                         recurrent_dropout, impl, None, device, dtype)
        self.nonlinearity = nonlinearity

    @property
    def mode(self) -> str:
        return f"RNN_{self.nonlinearity.upper()}"


class LSTM(_Recurrent):
    """LSTM layer, drop-in for torch.nn.LSTM, with the variants torch.nn lacks (see LSTMStep).

    Args (as torch.nn.LSTM): input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0 (between layers only), bidirectional=False, proj_size=0, device, dtype.
    Keyword-only variants:
      forget_bias=None     at init the forget-gate slices of bias_ih and bias_hh sum to this value
                           (bias_ih holds it, bias_hh's slice is 0); None keeps torch.nn's init
      peephole=False       diagonal peepholes, parameter weight_peephole_l{k} (G'*H,)
      coupled=False        coupled input-forget gate (CIFG): c' = f*c + (1-f)*g; weights (3H, .)
      activation='tanh'    or 'softsign', for g and for h = o * act(c)
      layer_norm=False     layer-normalised gates and cell (Ba et al. 2016)
      recurrent_dropout=0  variational dropout on h entering W_hh, one mask per sequence
      impl='auto'          'native' (torch's kernel), 'engine' (hand-written BPTT), 'triton' (the engine with
                           Triton kernels, on CUDA) or 'autograd'
                           (the same loop recorded by autograd); see dispatch.py
    forward(input, hx=None, *, lengths=None) -> (output, (h_n, c_n)).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
                 forget_bias=None, peephole=False, coupled=False, activation="tanh", layer_norm=False,
                 recurrent_dropout=0.0, impl="auto"):
        step = _lstm_step(hidden_size, proj_size, _check_bool(bias, "bias"), activation, peephole, coupled,
                          layer_norm, forget_bias)
        super().__init__(step, input_size, num_layers, batch_first, dropout, bidirectional,
                         recurrent_dropout, impl, forget_bias, device, dtype)
        self.mode = "LSTM"

    def _unpack_state(self, hx):
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            got = f"a {type(hx).__name__} of {len(hx)}" if isinstance(hx, (tuple, list)) else type(hx).__name__
            raise StateTypeError(f"LSTM hx must be a tuple (h_0, c_0); got {got}")
        return tuple(hx)

    def _pack_state(self, finals):
        return finals[0], finals[1]


class GRU(_Recurrent):
    """GRU layer, drop-in for torch.nn.GRU, in both conventions (see GRUStep).

    Args (as torch.nn.GRU): input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0 (between layers only), bidirectional=False, device, dtype.
    Keyword-only: reset_after=True (torch.nn/cuDNN; False: the original n = act(W_in x + b_in +
    W_hn (r*h) + b_hn)), activation='tanh' or 'softsign', recurrent_dropout=0.0, impl='auto';
    proj_size, as in torch.nn, is refused with ValueError (LSTM only).
    forward(input, hx=None, *, lengths=None) -> (output, h_n).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *,
                 reset_after=True, activation="tanh", recurrent_dropout=0.0, impl="auto", proj_size=None):
        _refuse_projection(proj_size)
        step = GRUStep(_check_int(hidden_size, "hidden_size", 1), _check_bool(bias, "bias"),
                       _check_bool(reset_after, "reset_after"), activation)
        super().__init__(step, input_size, num_layers, batch_first, dropout, bidirectional,
                         recurrent_dropout, impl, None, device, dtype)
        self.mode = "GRU"


def _refuse_projection(proj_size) -> None:
    if proj_size is not None:  # torch.nn refuses the argument itself, whatever its value
        raise ValueError(f"proj_size argument is only supported for LSTM, not RNN or GRU; got proj_size={proj_size!r}")


def _lstm_step(hidden_size, proj_size, bias, activation, peephole, coupled, layer_norm, forget_bias,
               minimum_hidden=1) -> LSTMStep:
    hidden_size = _check_int(hidden_size, "hidden_size", minimum_hidden,
                             below=ShapeError if minimum_hidden == 0 else ValueError)
    proj_size = _check_int(proj_size, "proj_size", 0)
    if proj_size and proj_size >= hidden_size:
        raise ValueError(f"proj_size must be smaller than hidden_size ({hidden_size}); got {proj_size}")
    if forget_bias is not None:
        if isinstance(forget_bias, bool) or not isinstance(forget_bias, numbers.Real):
            raise ValueError(f"forget_bias must be a number or None; got {forget_bias!r}")
        if not bias:
            raise ValueError(f"forget_bias={forget_bias!r} needs bias=True (there is no bias to set)")
    return LSTMStep(hidden_size, proj_size, bool(bias), activation, _check_bool(peephole, "peephole"),
                    _check_bool(coupled, "coupled"), _check_bool(layer_norm, "layer_norm"))


# -- cells: one step, for code that writes its own loop -------------------------------------------

class _CellModule(nn.Module):
    """A single step with its own parameters, as torch.nn.RNNCellBase (names without _l0)."""

    def __init__(self, step: Step, input_size, forget_bias, device, dtype):
        super().__init__()
        self.cell = step
        self.input_size = _check_int(input_size, "input_size", 0, below=ShapeError)  # as torch.nn: sizes may be 0
        self.hidden_size = step.hidden_size
        self.bias = step.bias
        self.forget_bias = forget_bias
        self._param_names = tuple(step.param_shapes(self.input_size))
        for name, shape in step.param_shapes(self.input_size).items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_parameters(self, self.cell, {name: name for name in self._param_names}, self.forget_bias)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}" + _step_repr(self.cell)
        return s + ("" if self.forget_bias is None else f", forget_bias={self.forget_bias!r}")

    def forward(self, input, hx=None):
        """input (B, I) or (I,); hx as torch.nn's cell (None: zeros). Returns the new state."""
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a Tensor; got {type(input).__name__}")
        if input.dim() not in (1, 2) or input.shape[-1] != self.input_size:
            raise ShapeError(f"input must be (batch, {self.input_size}) or ({self.input_size},); "
                             f"got shape {tuple(input.shape)}")
        dtype = precision.compute_dtype(type(self).__name__, input, self.weight_ih.dtype)
        with precision.autocast_off(input.device.type):  # cast once to the call's dtype, run without autocast
            return self._forward(input, hx, dtype)

    def _forward(self, input, hx, dtype):
        batched = input.dim() == 2
        x = precision.cast(input if batched else input.unsqueeze(0), dtype)  # (B, I)
        B = x.shape[0]
        sizes = self.cell.state_sizes()
        if hx is None:
            states = tuple(x.new_zeros(B, size) for size in sizes)
        else:
            states = hx if isinstance(hx, (tuple, list)) else (hx,)
            if len(states) != len(sizes):
                raise StateTypeError(f"hx must be {'a tuple (h, c)' if len(sizes) == 2 else 'a Tensor'}; "
                                     f"got {type(hx).__name__}")
            expected = [(B, size) if batched else (size,) for size in sizes]
            for name, s, shape in zip(("h", "c"), states, expected):
                if not isinstance(s, Tensor):
                    raise StateTypeError(f"{name} must be a Tensor; got {type(s).__name__}")
                if tuple(s.shape) != shape:
                    raise ShapeError(f"{name} must have shape {shape}; got {tuple(s.shape)}")
            states = tuple(precision.cast(s if batched else s.unsqueeze(0), dtype) for s in states)
        p = {name: precision.cast(getattr(self, name), dtype) for name in self._param_names}
        new, _ = self.cell.step(self.cell.project_input(x, p), tuple(states), p)
        new = new if batched else tuple(s.squeeze(0) for s in new)
        return new if len(new) == 2 else new[0]


class RNNCell(_CellModule):
    """One Elman step, drop-in for torch.nn.RNNCell: `h' = act(W_ih x + b_ih + W_hh h + b_hh)`."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None, dtype=None):
        step = RNNStep(_check_int(hidden_size, "hidden_size", 0, below=ShapeError), nonlinearity, bool(bias))
        super().__init__(step, input_size, None, device, dtype)
        self.nonlinearity = nonlinearity


class LSTMCell(_CellModule):
    """One LSTM step, drop-in for torch.nn.LSTMCell, with LSTM's keyword-only variants
    (forget_bias, peephole, coupled, activation, layer_norm, proj_size); returns (h', c')."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, proj_size=0,
                 forget_bias=None, peephole=False, coupled=False, activation="tanh", layer_norm=False):
        step = _lstm_step(hidden_size, proj_size, bool(bias), activation, peephole, coupled, layer_norm, forget_bias,
                          minimum_hidden=0)
        super().__init__(step, input_size, forget_bias, device, dtype)


class GRUCell(_CellModule):
    """One GRU step, drop-in for torch.nn.GRUCell, with reset_after and activation (see GRUStep)."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 reset_after=True, activation="tanh"):
        step = GRUStep(_check_int(hidden_size, "hidden_size", 0, below=ShapeError), bool(bias),
                       _check_bool(reset_after, "reset_after"), activation)
        super().__init__(step, input_size, None, device, dtype)
