"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): gates that see only x_t, so
a layer is the linear recurrence h_t = a_t * h_{t-1} + b_t, trained with a parallel scan in log space.

    minGRU:   z = sigmoid(W_z x + b_z),  h~ = g(W_h x + b_h)
              h_t = (1 - z) * h_{t-1} + z * h~                     a = 1 - z,  b = z * h~
    minLSTM:  f = sigmoid(W_f x + b_f),  i = sigmoid(W_i x + b_i),  h~ = g(W_h x + b_h)
              f' = f / (f + i),  i' = i / (f + i)                   (the paper's length-independent scaling)
              h_t = f' * h_{t-1} + i' * h~                          a = f',     b = i' * h~
    g(v) = v + 0.5 for v >= 0, sigmoid(v) for v < 0, so that h~ > 0 and log b exists.

A cell gives a and b for any number of steps at once (`coefficients`, written as the equations
above) and their logarithms (`log_coefficients`, from softplus and log-sigmoid). A layer runs the
recurrence in one of two ways, which agree to rounding (tests/test_minimal.py):
  - sequential: a and b for all steps in one pass, then the loop h_t = a_t * h_{t-1} + b_t
                (one fused multiply-add per step; generation, T = 1);
  - parallel:   h_t = A_t h_0 + exp(a*_t + logcumsumexp_{k<=t}(log b_k - a*_k)),  a*_t = sum_{j<=t} log a_j,
                A_t = exp(a*_t) (Heinsen 2023), no loop over time.

The initial state h_0 enters the scan as its own linear term A_t h_0, outside the logarithm, so it
may be any real tensor (zeros, negative values, the h_n of a previous chunk) and both modes give the
same result for every h_0. This departs from the paper's listing, which puts log g(h_0) first in the
logcumsumexp: that applies g to h_0 in the parallel form but not in the sequential one, so the two
forms disagree and carrying h_n from one chunk to the next changes the result.

Precision: a*_t falls roughly linearly with t, and the scan adds a*_t to a logcumsumexp of about
-a*_t, so the relative error of h grows like |a*_t| * eps: about 1e-4 at T = 2048 in float32 with
gates near 1/2. Values stay finite at any length.

Departures from torch.nn.GRU: no recurrent weights (weight_hh) and one bias per layer (bias_ih);
no bidirectional option, these are causal layers; no PackedSequence, pass `lengths=` instead.

Shapes: B batch, T time, I input, H hidden, L layers, G gate blocks (2 for minGRU, 3 for minLSTM).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine import dispatch, precision
from ..errors import ShapeError, StateTypeError
from .layers import (_check_bool, _check_choice, _check_int, _check_prob, _warn_if_dropout_is_inert, check_lengths,
                     check_sequence_input, record_plan)

MODES = ("auto", "parallel", "sequential")


def g(v: Tensor) -> Tensor:
    """The paper's positive candidate activation: v + 0.5 for v >= 0, sigmoid(v) below."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def log_g(v: Tensor) -> Tensor:
    """log g(v), with both branches finite everywhere so that torch.where passes no NaN gradient."""
    return torch.where(v >= 0, torch.log(F.relu(v) + 0.5), -F.softplus(-v))


@dataclass(frozen=True)
class MinGRUStep:
    """minGRU: xp = W_ih x + b_ih holds the pre-activations [k_z; k_h], each (..., H).

        z  = sigmoid(k_z)
        h~ = g(k_h)
        h' = (1 - z) * h + z * h~
    """

    hidden_size: int
    gates = 2

    def coefficients(self, xp: Tensor) -> tuple[Tensor, Tensor]:
        """a = 1 - z and b = z * h~, so that h' = a * h + b."""
        k_z, k_h = xp.chunk(2, -1)
        z = torch.sigmoid(k_z)
        h_tilde = g(k_h)
        return torch.sigmoid(-k_z), z * h_tilde  # sigmoid(-k) is 1 - z without the cancellation

    def log_coefficients(self, xp: Tensor) -> tuple[Tensor, Tensor]:
        """log a = log(1 - z) = -softplus(k_z), log b = log z + log h~ = -softplus(-k_z) + log g(k_h)."""
        k_z, k_h = xp.chunk(2, -1)
        return -F.softplus(k_z), -F.softplus(-k_z) + log_g(k_h)


@dataclass(frozen=True)
class MinLSTMStep:
    """minLSTM: xp = W_ih x + b_ih holds the pre-activations [k_f; k_i; k_h], each (..., H).

        f  = sigmoid(k_f)
        i  = sigmoid(k_i)
        h~ = g(k_h)
        f', i' = f / (f + i), i / (f + i)
        h' = f' * h + i' * h~
    """

    hidden_size: int
    gates = 3

    def coefficients(self, xp: Tensor) -> tuple[Tensor, Tensor]:
        """a = f' and b = i' * h~, so that h' = a * h + b."""
        k_f, k_i, k_h = xp.chunk(3, -1)
        f = torch.sigmoid(k_f)
        i = torch.sigmoid(k_i)
        h_tilde = g(k_h)
        f_prime, i_prime = f / (f + i), i / (f + i)
        return f_prime, i_prime * h_tilde

    def log_coefficients(self, xp: Tensor) -> tuple[Tensor, Tensor]:
        """With d = log f - log i = softplus(-k_i) - softplus(-k_f):
        log f' = -log(1 + i/f) = -softplus(-d), log i' = -softplus(d), log b = log i' + log g(k_h)."""
        k_f, k_i, k_h = xp.chunk(3, -1)
        d = F.softplus(-k_i) - F.softplus(-k_f)  # log f - log i
        return -F.softplus(-d), -F.softplus(d) + log_g(k_h)


class _LogCumSumExp(torch.autograd.Function):
    """torch.logcumsumexp along dim 0, with a backward that is itself differentiable everywhere.

    torch's backward takes log|g| of the incoming gradient and masks the entries where g is 0, so its
    own derivative there is 0/0: every second-order gradient through it is NaN as soon as one output
    gets no gradient (a loss on some steps only, or padding past a sequence's end). Here the log is
    taken of g with its zeros replaced by ones before masking, which gives the same first derivative
    and a finite second one. One approximation remains: the derivative with respect to an incoming
    gradient entry that is exactly 0 is taken as 0 (it is exp(v_k - y_t)); that is exact where the zero
    is structural (padding, steps the loss does not see), whose own derivative is 0 as well."""

    @staticmethod
    def forward(v):
        return torch.logcumsumexp(v, 0)

    @staticmethod
    def setup_context(ctx, inputs, output):  # in this form torch.func's transforms can run the Function
        ctx.save_for_backward(inputs[0], output)

    @staticmethod
    def backward(ctx, g):
        v, y = ctx.saved_tensors
        # d v_k = sum_{t >= k} g_t exp(v_k - y_t), in log space for the positive and negative parts of g
        lowest = torch.finfo(g.dtype).min
        log_abs = torch.where(g == 0, torch.ones_like(g), g).abs().log()
        parts = [torch.where(sign, log_abs, lowest) - y for sign in (g > 0, g < 0)]
        pos, neg = (torch.logcumsumexp(part.flip(0), 0).flip(0) + v for part in parts)
        return pos.exp() - neg.exp()


def parallel_scan_log(log_a: Tensor, log_b: Tensor, h0: Tensor | None = None) -> Tensor:
    """Every h_t of h_t = a_t * h_{t-1} + b_t (t = 1..T along dim 0) at once, from log a and log b.

    h_t = A_t h_0 + sum_{k<=t} (A_t / A_k) b_k with A_t = prod_{j<=t} a_j = exp(a*_t); the sum is
    exp(a*_t + logcumsumexp_k(log b_k - a*_k)). h0 (None: zeros) enters linearly, so any sign works.
    log_a, log_b: (T, ...); h0: log_a.shape[1:]. Returns h (T, ...).
    """
    a_star = torch.cumsum(log_a, 0)  # (T, B, H) log A_t
    h = torch.exp(a_star + _LogCumSumExp.apply(log_b - a_star))  # (T, B, H)
    if h0 is not None:
        h = h + torch.exp(a_star) * h0
    return h


class _MinimalRNN(nn.Module):
    """Stacked layers of one minimal cell, with torch.nn.GRU's call signature."""

    def __init__(self, cell, input_size, num_layers, bias, batch_first, dropout, mode, device, dtype):
        super().__init__()
        self.cell = cell
        self.input_size = _check_int(input_size, "input_size", 1)
        self.hidden_size = cell.hidden_size
        self.num_layers = _check_int(num_layers, "num_layers", 1)
        self.bias = _check_bool(bias, "bias")
        self.batch_first = _check_bool(batch_first, "batch_first")
        self.dropout = _check_prob(dropout, "dropout", one=True)
        self.mode = _check_choice(mode, "mode", MODES)
        self.last_plan: dispatch.Plan | None = None  # what ran the last forward(), and why
        _warn_if_dropout_is_inert(self.dropout, self.num_layers)
        G, H = cell.gates, self.hidden_size
        factory = {"device": device, "dtype": dtype}
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else H
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(G * H, layer_input, **factory)))
            if self.bias:
                self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.empty(G * H, **factory)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn's init: every parameter U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for param in self.parameters():
                param.uniform_(-bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for key, default in (("num_layers", 1), ("bias", True), ("batch_first", False), ("dropout", 0.0),
                             ("mode", "auto")):
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)!r}"
        return s

    def _weights(self, layer: int, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        weight, bias = getattr(self, f"weight_ih_l{layer}"), getattr(self, f"bias_ih_l{layer}", None)
        return precision.cast(weight, dtype), precision.cast(bias, dtype)

    # -- forward -----------------------------------------------------------------------------
    def forward(self, input, hx=None, *, lengths=None):
        """Run the stack over a sequence.

        input: (T, B, I), (B, T, I) with batch_first, or (T, I) unbatched.
        hx: initial state h_0 (L, B, H) ((L, H) unbatched), any real values; zeros if None.
        lengths: optional 1-D integer tensor of B valid lengths in [0, T], any order. Outputs past
            a sequence's end are zero and h_n is the state at its last valid step (h_0 for length 0).
        The mode chosen at construction decides how: 'parallel' (log-space scan), 'sequential'
        (step loop) or 'auto' (the scan on CUDA when T > 1; the loop on CPU, where it measured
        3-4x faster than the scan at T = 128-2048, see benchmarks/bench_minimal.py).
        Returns output (T, B, H) ((B, T, H) with batch_first) and h_n (L, B, H).
        """
        x, batched = self._check_input(input)  # (T, B, I)
        T, B = x.shape[:2]
        if lengths is not None:
            lengths = check_lengths(lengths, T, B)
        out, h_n = self._cast_and_run(x, hx, batched, lengths, self._use_scan(T, x.device))
        if not batched:
            return out.squeeze(1), h_n.squeeze(1)
        return (out.transpose(0, 1) if self.batch_first else out), h_n

    def step(self, input, hx=None):
        """One time step of every layer, for generation: input (B, I), hx (L, B, H) (None: zeros).
        Returns (output (B, H), h' (L, B, H)), the same numbers as forward over one step."""
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a Tensor; got {type(input).__name__}")
        if input.dim() != 2 or input.shape[1] != self.input_size:
            raise ShapeError(f"input must have shape (batch, input_size={self.input_size}) for one step; "
                             f"got {tuple(input.shape)}")
        out, h = self._cast_and_run(input.unsqueeze(0), hx, True, None, use_scan=False)  # (1, B, I) in
        return out[0], h

    def _cast_and_run(self, x, hx, batched, lengths, use_scan):
        """The run in the dtype the call computes in (see precision.py): under autocast, parameters, input
        and state are cast once and the run goes on without autocast."""
        dtype = precision.compute_dtype(type(self).__name__, x, self.weight_ih_l0.dtype)
        autocast = precision.autocast_enabled(x.device.type)
        x = precision.cast(x, dtype)
        h0 = self._check_state(hx, x.shape[1], batched, x, autocast)
        with precision.autocast_off(x.device.type):
            return self._run(x, h0, lengths, use_scan, dtype)

    def _use_scan(self, T: int, device: torch.device) -> bool:
        plan = dispatch.plan_minimal(self.mode, T, device, MODES)
        record_plan(self, plan)
        return plan.impl == "scan"

    def _run(self, x, h0, lengths, use_scan, dtype):
        """x (T, B, I) time-major; h0 (L, B, H) or None. Returns output (T, B, H), h_n (L, B, H)."""
        T, B = x.shape[:2]
        valid = None
        if lengths is not None:
            t = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
            valid = (t < lengths.to(x.device)).unsqueeze(-1)  # (T, B, 1)
        run = self._scan if use_scan else self._loop
        finals = []
        for layer in range(self.num_layers):
            xp = F.linear(x, *self._weights(layer, dtype))  # (T, B, G*H), one product for all steps
            x, h_n = run(xp, None if h0 is None else h0[layer], valid, lengths)
            finals.append(h_n)
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)  # vertical connections only
        return x, torch.stack(finals)

    def _loop(self, xp, h, valid, lengths):
        """Sequential form: xp (T, B, G*H), h (B, H) or None. A row that has ended keeps its state."""
        T, B = xp.shape[:2]
        h = xp.new_zeros(B, self.hidden_size) if h is None else h
        a, b = self.cell.coefficients(xp)  # (T, B, H) each: the gates see only x, so they leave the loop
        outs = []
        # unbind, not a[t]: autograd then builds one gradient buffer for a, not one per step
        for t, (a_t, b_t) in enumerate(zip(a.unbind(0), b.unbind(0))):
            h_new = torch.addcmul(b_t, a_t, h)  # (B, H) h' = a * h + b
            h = h_new if valid is None else torch.where(valid[t], h_new, h)
            outs.append(h)
        out = torch.stack(outs) if outs else xp.new_zeros(0, B, self.hidden_size)  # (T, B, H)
        return (out if valid is None else out.masked_fill(~valid, 0)), h

    def _scan(self, xp, h0, valid, lengths):
        """Parallel form: xp (T, B, G*H) with T > 0, h0 (B, H) or None. The scan runs over the padding
        too (it is causal, so valid steps never see it); h_n is then gathered at each last valid step."""
        log_a, log_b = self.cell.log_coefficients(xp)  # (T, B, H) each
        h = parallel_scan_log(log_a, log_b, h0)  # (T, B, H)
        if valid is None:
            return h, h[-1]
        B, H = h.shape[1:]
        lengths = lengths.to(h.device)
        last = (lengths - 1).clamp(min=0)  # (B,)
        h_n = h.gather(0, last.view(1, B, 1).expand(1, B, H))[0]  # (B, H)
        start = h.new_zeros(B, H) if h0 is None else h0
        h_n = torch.where((lengths == 0).unsqueeze(1), start, h_n)  # a length-0 row keeps h_0
        return h.masked_fill(~valid, 0), h_n

    # -- validation --------------------------------------------------------------------------
    def _check_input(self, input) -> tuple[Tensor, bool]:
        if not isinstance(input, Tensor):
            hint = " (pass the padded tensor with lengths= instead)" if type(input).__name__ == "PackedSequence" else ""
            raise TypeError(f"input must be a Tensor; got {type(input).__name__}{hint}")
        check_sequence_input(input, self.input_size)
        if input.dim() == 2:
            return input.unsqueeze(1), False  # (T, 1, I)
        return (input.transpose(0, 1) if self.batch_first else input), True

    def _check_state(self, hx, B: int, batched: bool, x: Tensor, autocast: bool = False) -> Tensor | None:
        if hx is None:
            return None
        if not isinstance(hx, Tensor):
            raise StateTypeError(f"h_0 must be a Tensor; got {type(hx).__name__}")
        shape = (self.num_layers, B, self.hidden_size) if batched else (self.num_layers, self.hidden_size)
        if tuple(hx.shape) != shape:
            raise ShapeError(f"h_0 must have shape {shape} (num_layers, {'batch, ' if batched else ''}"
                             f"hidden_size); got {tuple(hx.shape)}")
        if hx.dtype != x.dtype and not (autocast and hx.is_floating_point() and hx.dtype != torch.float64):
            raise ShapeError(f"h_0 has dtype {hx.dtype}; expected the input's dtype {x.dtype}")
        hx = precision.cast(hx, x.dtype)
        return hx if batched else hx.unsqueeze(1)


class MinGRU(_MinimalRNN):
    """minGRU layer (Feng et al. 2024): h_t = (1 - z_t) * h_{t-1} + z_t * g(W_h x_t + b_h), z_t = sigmoid(W_z x_t + b_z).

    Args: input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0
    (between layers only), device, dtype; keyword-only mode='auto' ('parallel', 'sequential').
    Parameters: weight_ih_l{k} (2H, I_k) holding rows [W_z; W_h], bias_ih_l{k} (2H,) [b_z; b_h].
    forward(input, hx=None, *, lengths=None) -> (output, h_n); step(x_t, h) -> (out, h').
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 device=None, dtype=None, *, mode="auto"):
        cell = MinGRUStep(_check_int(hidden_size, "hidden_size", 1))
        super().__init__(cell, input_size, num_layers, bias, batch_first, dropout, mode, device, dtype)


class MinLSTM(_MinimalRNN):
    """minLSTM layer (Feng et al. 2024): h_t = f'_t * h_{t-1} + i'_t * g(W_h x_t + b_h), with
    f' = f / (f + i), i' = i / (f + i), f = sigmoid(W_f x_t + b_f), i = sigmoid(W_i x_t + b_i).

    Args as MinGRU. Parameters: weight_ih_l{k} (3H, I_k) holding rows [W_f; W_i; W_h],
    bias_ih_l{k} (3H,). There is no cell state: the state is h alone, as in the paper.
    forward(input, hx=None, *, lengths=None) -> (output, h_n); step(x_t, h) -> (out, h').
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 device=None, dtype=None, *, mode="auto"):
        cell = MinLSTMStep(_check_int(hidden_size, "hidden_size", 1))
        super().__init__(cell, input_size, num_layers, bias, batch_first, dropout, mode, device, dtype)
