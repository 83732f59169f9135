"""The math of one time step for every rnnkit cell: forward, and its hand-derived local backward.

A cell here is configuration plus two pure functions of tensors, with no loop, direction,
padding or parameters of its own (the layers own the parameters):

    cell.project_input(x, p)            -> xp              the time-independent part, (..., G*H),
                                                            b_hh included where it is additive
    cell.step(xp, state, p, mask)       -> state', saved    one step forward; saved is a flat
                                                            tuple of tensors (or None)
    cell.step_backward(d_state, saved, p, mask, out)
                                        -> d_xp, d_state_prev, grads     (d_xp written into
                                                            `out` when one is given and the step can)

`p` maps generic parameter names (`weight_hh`, `bias_hh`, ...) to tensors. `state` is `(h,)` or
`(h, c)`; `h` is both the step's output and its recurrent input. `mask` is the optional
recurrent-dropout mask on `h` as it enters the recurrent product.

`grads` maps a parameter name to its gradient contribution from this step, in one of two forms,
which the engine sums over batch and time at the end of the backward pass:
  - a list of `(d_pre, inp)` pairs: the parameter is a matrix used as `inp @ W.T`, its gradient
    is `cat([d_pre.T @ inp for each pair], dim=0)` (one pair per block of rows it holds);
  - a tensor `(B, n)`: the parameter is a vector, its gradient is the sum over the batch
    (or `(n,)`, already summed over the batch);
  - a `Summed(g)`: this step's whole contribution, of the parameter's shape, added as it comes
    (no per-step buffer: for products whose factors the engine would otherwise keep for all steps).
A step whose recurrent product's gradient is its gate gradient returns the very tensor it returns
as d_xp in the pair; the engine then reuses the buffer it already holds instead of copying.

Shapes: B batch, I input, H hidden, P = proj_size or H (the size of h), G gates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ..kernels.cpu import fused

LN_EPS = 1e-5
W_HH_T = "weight_hh.T"  # Step.prepare's entry in p
SUM_PER_STEP_ROWS = 16  # see LSTMStep._fused_step_backward


@dataclass(frozen=True)
class Activation:
    """A nonlinearity and its backward written in terms of its own output y = act(v)."""

    name: str
    fn: Callable[[Tensor], Tensor]
    backward: Callable[[Tensor, Tensor], Tensor]  # (d, y) -> d * act'(v)


def softsign(v: Tensor) -> Tensor:
    """softsign(v) = v / (1 + |v|): tanh's shape with polynomial, not exponential, saturation."""
    return v / (1 + v.abs())


_aten = torch.ops.aten  # fused backward kernels: one op each instead of three
ACTIVATIONS = {
    "tanh": Activation("tanh", torch.tanh, _aten.tanh_backward),  # d * (1 - y^2)
    "relu": Activation("relu", torch.relu, lambda d, y: _aten.threshold_backward(d, y, 0)),  # d * (y > 0)
    # y = v/(1+|v|)  =>  1 - |y| = 1/(1+|v|)  =>  dy/dv = (1 - |y|)^2
    "softsign": Activation("softsign", softsign, lambda d, y: d * (1 - y.abs()).square()),
}


def get_activation(name: object, argument: str, allowed: tuple[str, ...]) -> Activation:
    if not isinstance(name, str) or name not in allowed:
        raise ValueError(f"{argument} must be one of {', '.join(map(repr, allowed))}; got {name!r}")
    return ACTIVATIONS[name]


def sigmoid_backward(d: Tensor, y: Tensor) -> Tensor:
    """d * sigmoid'(v) in terms of y = sigmoid(v): d * y * (1 - y)."""
    return _aten.sigmoid_backward(d, y)


def layer_norm(a: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """LN(a) = (a - mean) / sqrt(var + eps) * weight + bias over the last dim, with the mean and
    1/std it used (PyTorch's fused kernel, which autograd also differentiates)."""
    return torch.native_layer_norm(a, a.shape[-1:], weight, bias, LN_EPS)


def layer_norm_backward(d_out: Tensor, a: Tensor, mean: Tensor, rstd: Tensor, weight: Tensor,
                        bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Gradients of LN w.r.t. a (B, n), and its weight and bias summed over the batch (n,)."""
    return _aten.native_layer_norm_backward(d_out, a, a.shape[-1:], mean, rstd, weight, bias,
                                            [True, True, bias is not None])


class Summed(NamedTuple):
    """A step's gradient contribution to a parameter, already of the parameter's shape (see above)."""

    value: Tensor


def _w_hh_t(p: dict[str, Tensor]) -> Tensor:
    """W_hh^T: Step.prepare's copy when the engine made one, else the transposed view."""
    return p[W_HH_T] if W_HH_T in p else p["weight_hh"].T


def _masked(h: Tensor, mask: Tensor | None) -> Tensor:
    return h if mask is None else h * mask


class Step:
    """What every cell shares: parameter bookkeeping and the hoisted input projection."""

    gates: int  # G: how many H-sized blocks the input projection has
    hidden_size: int
    bias: bool
    num_states: int  # 1 for (h,), 2 for (h, c)

    @property
    def output_size(self) -> int:
        """P, the size of h."""
        return self.hidden_size

    def param_shapes(self, input_size: int) -> dict[str, tuple[int, ...]]:
        G, H, P = self.gates, self.hidden_size, self.output_size
        shapes = {"weight_ih": (G * H, input_size), "weight_hh": (G * H, P)}
        if self.bias:
            shapes.update(bias_ih=(G * H,), bias_hh=(G * H,))
        return shapes

    def state_sizes(self) -> tuple[int, ...]:
        return (self.output_size,)

    def _input_bias(self, p: dict[str, Tensor]) -> Tensor | None:
        """b_ih + b_hh: both biases add to the gate pre-activations, so both are hoisted."""
        return p["bias_ih"] + p["bias_hh"] if self.bias else None

    def prepare(self, p: dict[str, Tensor]) -> dict[str, Tensor]:
        """p plus what every step of one sequence reuses, made once by the engine: W_hh^T as a contiguous
        copy (the per-step product runs up to ~1.3x faster on the CPU from it than from the transposed view,
        at batches of 8 or more; for a batch of one the view is as fast and the copy is not made)."""
        return {**p, W_HH_T: p["weight_hh"].T.contiguous()}

    def project_input(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        """xp = x W_ih^T + b_ih + b_hh for every time step at once: (..., I) -> (..., G*H)."""
        return torch.nn.functional.linear(x, p["weight_ih"], self._input_bias(p))

    # The input projection in two parts where the C++ sequence loop can do the second in its pass over each step
    # (`splits_input`: the layer-norm LSTM's input layer norm and biases, spared a pass of their own over the
    # whole (T, B, G*H) forward and backward): project_input(x, p) == finish_input(input_product(x, p), p).
    splits_input = False

    def input_product(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        """The part of project_input before finish_input (here all of it)."""
        return self.project_input(x, p)

    def finish_input(self, a: Tensor, p: dict[str, Tensor]) -> Tensor:
        """xp from input_product's a (here a itself)."""
        return a

    # A whole sequence in C++ (fused.py: the time loop, the recurrent products through PyTorch's BLAS, the gate
    # math; the same loop for every cell, each supplying its step through `_sequence_call`). The engine calls it
    # through rnnkit's custom ops (engine/ops.py), which autograd and the compilers see.
    def fused_sequence(self, x: Tensor, state0: tuple[Tensor, ...], p: dict[str, Tensor], batch_sizes, mask,
                       keep: bool, chunk: int = 0, clear: bool = False, finished: bool = True) -> "fused.Sequence":
        """The C++ loop over x, the input projections xp (T, B, G*H) (`finished`; else input_product's, which the
        loop finishes: splits_input), or with `chunk` > 0 the input (T, B, I), projected `chunk` steps at a time in
        the loop (inference); `keep`: keep what the backward needs (fused.sequence_backward), `clear`: with zeros past
        each row's end. batch_sizes: None, or as in rnnkit.engine.loop (a list or an int64 tensor)."""
        projection = None
        if chunk:
            projection = fused.Projection(x, p["weight_ih"], self._input_bias(p), p.get("ln_weight_ih"), chunk)
        finish = {} if finished else {"finish": self.finish_params(p)}
        return self._sequence_call(None if chunk else x, state0, p, batch_sizes, mask, keep, projection, clear,
                                   **finish)

    def finish_params(self, p: dict[str, Tensor]) -> tuple:
        """The tensors finish_input uses, as the C++ loop takes them (fused.lstm_sequence's `finish`)."""
        raise ValueError(f"{self} finishes its input projection before the loop (splits_input is False)")

    def _sequence_call(self, xp, state0, p, batch_sizes, mask, keep, projection, clear):
        raise NotImplementedError


@dataclass(frozen=True)
class RNNStep(Step):
    """Elman RNN step.

        h' = act(W_ih x + b_ih + W_hh h + b_hh),   act in {tanh, relu, softsign}

    Parameters as torch.nn.RNN: weight_ih (H, I), weight_hh (H, H), bias_ih (H,), bias_hh (H,).
    """

    hidden_size: int
    nonlinearity: str = "tanh"
    bias: bool = True

    gates = 1
    num_states = 1

    def __post_init__(self):
        get_activation(self.nonlinearity, "nonlinearity", ("tanh", "relu", "softsign"))

    @property
    def act(self) -> Activation:
        return ACTIVATIONS[self.nonlinearity]

    def step(self, xp, state, p, mask=None):
        (h,) = state
        hr = _masked(h, mask)
        h_new = self.act.fn(torch.addmm(xp, hr, _w_hh_t(p)))  # (B, H)
        return (h_new,), (hr, h_new)

    def step_backward(self, d_state, saved, p, mask=None, out=None):
        (d_h,) = d_state
        hr, h_new = saved
        d_pre = self.act.backward(d_h, h_new)  # (B, H)
        d_h_prev = _masked(d_pre @ p["weight_hh"], mask)
        return d_pre, (d_h_prev,), {"weight_hh": [(d_pre, hr)]}

    def _sequence_call(self, xp, state0, p, batch_sizes, mask, keep, projection, clear):
        return fused.rnn_sequence(xp, *state0, p["weight_hh"], mask, batch_sizes, self.nonlinearity, keep, projection,
                                  clear)


@dataclass(frozen=True)
class LSTMStep(Step):
    """LSTM step (torch.nn layout: gates i, f, g, o stacked in that order, two biases).

        i  = sigmoid(W_ii x + b_ii + W_hi h + b_hi [+ p_i * c])      input gate
        f  = sigmoid(W_if x + b_if + W_hf h + b_hf [+ p_f * c])      forget gate
        g  = act(W_ig x + b_ig + W_hg h + b_hg)                       candidate
        c' = f * c + i * g                  (coupled: c' = f * c + (1 - f) * g, no i gate)
        o  = sigmoid(W_io x + b_io + W_ho h + b_ho [+ p_o * c'])     output gate
        h' = o * act(c')                    (layer_norm: o * act(LN_c(c')))
        h' = W_hr h'                        (proj_size > 0)

    act is tanh, or softsign with activation='softsign'.

    Variants:
      peephole    diagonal peepholes (Gers & Schmidhuber 2000): i and f see c_{t-1}, o sees c_t;
                  weight_peephole (G'*H,) holds p_i, p_f, p_o (p_f, p_o when coupled).
      coupled     CIFG: the input gate is 1 - f; gates f, g, o so the weights are (3H, .).
      layer_norm  Ba et al. 2016: the gate pre-activations are LN_ih(W_ih x) + LN_hh(W_hh h) + b,
                  each LN over all G*H units with a gain (ln_weight_ih, ln_weight_hh) and no
                  bias of its own (b_ih and b_hh play that role); the carried cell state is
                  un-normalised and h' = o * act(LN_c(c')), LN_c with gain and bias
                  (ln_weight_c, ln_bias_c) over the H units.
      proj_size   as torch.nn.LSTM: h is projected to P units by weight_hr (P, H).
    """

    hidden_size: int
    proj_size: int = 0
    bias: bool = True
    activation: str = "tanh"
    peephole: bool = False
    coupled: bool = False
    layer_norm: bool = False

    num_states = 2

    def __post_init__(self):
        get_activation(self.activation, "activation", ("tanh", "softsign"))

    @property
    def gates(self) -> int:
        return 3 if self.coupled else 4

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size

    @property
    def act(self) -> Activation:
        return ACTIVATIONS[self.activation]

    def param_shapes(self, input_size):
        G, H = self.gates, self.hidden_size
        shapes = super().param_shapes(input_size)
        if self.proj_size:
            shapes["weight_hr"] = (self.proj_size, H)
        if self.peephole:
            shapes["weight_peephole"] = ((G - 1) * H,)
        if self.layer_norm:
            shapes.update(ln_weight_ih=(G * H,), ln_weight_hh=(G * H,), ln_weight_c=(H,))
            if self.bias:
                shapes["ln_bias_c"] = (H,)
        return shapes

    def state_sizes(self):
        return (self.output_size, self.hidden_size)

    def project_input(self, x, p):
        if not self.layer_norm:
            return super().project_input(x, p)
        return self.finish_input(self.input_product(x, p), p)

    @property
    def splits_input(self) -> bool:
        return self.layer_norm

    def input_product(self, x, p):
        return x @ p["weight_ih"].T if self.layer_norm else super().input_product(x, p)  # (..., G*H)

    def finish_input(self, a, p):
        if not self.layer_norm:
            return a
        return torch.nn.functional.layer_norm(a, a.shape[-1:], p["ln_weight_ih"], self._input_bias(p), LN_EPS)

    def finish_params(self, p):
        if not self.layer_norm:
            return super().finish_params(p)
        return p["ln_weight_ih"], self._input_bias(p)

    def step(self, xp, state, p, mask=None):
        h, c = state  # (B, P), (B, H)
        hr = _masked(h, mask)
        if fused.direct(xp, c, hr, *p.values()):
            return self._fused_step(xp, hr, c, p)
        a = mean = rstd = mean_c = rstd_c = None
        if self.layer_norm:
            a = hr @ _w_hh_t(p)  # (B, G*H)
            rec, mean, rstd = layer_norm(a, p["ln_weight_hh"], None)
            gates = xp + rec
        else:
            gates = torch.addmm(xp, hr, _w_hh_t(p))
        gates = gates.chunk(self.gates, 1)  # G x (B, H)
        peep = p["weight_peephole"].chunk(self.gates - 1) if self.peephole else None
        if self.coupled:
            f, g, o = gates
            i = None
        else:
            i, f, g, o = gates
            if peep:
                i = torch.addcmul(i, peep[0], c)  # i + p_i * c
            i = torch.sigmoid(i)
        if peep:
            f = torch.addcmul(f, peep[-2], c)
        f = torch.sigmoid(f)
        g = self.act.fn(g)
        if self.coupled:
            c_new = torch.lerp(g, c, f)  # g + f * (c - g) = f * c + (1 - f) * g
        else:
            c_new = torch.addcmul(f * c, i, g)  # f * c + i * g
        if peep:
            o = torch.addcmul(o, peep[-1], c_new)
        o = torch.sigmoid(o)
        if self.layer_norm:
            c_out, mean_c, rstd_c = layer_norm(c_new, p["ln_weight_c"], p.get("ln_bias_c"))
        else:
            c_out = c_new
        act_c = self.act.fn(c_out)
        h_new = o * act_c  # (B, H)
        if self.proj_size:
            h_out = h_new @ p["weight_hr"].T  # (B, P)
        else:
            h_out = h_new
        return (h_out, c_new), (hr, c, i, f, g, o, c_new, act_c, h_new, a, mean, rstd, mean_c, rstd_c)

    def step_backward(self, d_state, saved, p, mask=None, out=None):
        d_h, d_c = d_state
        hr, c, i, f, g, o, c_new, act_c, h_new, a, mean, rstd, mean_c, rstd_c = saved
        grads = {}
        if self.proj_size:
            grads["weight_hr"] = [(d_h, h_new)]
            d_h = d_h @ p["weight_hr"]  # (B, H)
        if f is None:  # the forward ran fused
            return self._fused_step_backward(d_h, d_c, saved, p, mask, out, grads)
        d_o = sigmoid_backward(d_h * act_c, o)
        d_c_out = self.act.backward(d_h * o, act_c)
        if self.layer_norm:
            d_c_out, grads["ln_weight_c"], d_ln_bias = layer_norm_backward(
                d_c_out, c_new, mean_c, rstd_c, p["ln_weight_c"], p.get("ln_bias_c"))
            if self.bias:
                grads["ln_bias_c"] = d_ln_bias
        d_c_new = d_c + d_c_out
        peep = p["weight_peephole"].chunk(self.gates - 1) if self.peephole else None
        if peep:
            d_c_new = torch.addcmul(d_c_new, d_o, peep[-1])
        if self.coupled:
            d_f = sigmoid_backward(d_c_new * (c - g), f)
            d_g = self.act.backward(d_c_new * (1 - f), g)
            d_gates = [d_f, d_g, d_o]
        else:
            d_i = sigmoid_backward(d_c_new * g, i)
            d_f = sigmoid_backward(d_c_new * c, f)
            d_g = self.act.backward(d_c_new * i, g)
            d_gates = [d_i, d_f, d_g, d_o]
        d_c_prev = d_c_new * f
        if peep:
            d_c_prev = torch.addcmul(d_c_prev, d_f, peep[-2])
            peep_grads = [d_f * c, d_o * c_new]
            if not self.coupled:
                d_c_prev = torch.addcmul(d_c_prev, d_i, peep[0])
                peep_grads.insert(0, d_i * c)
            grads["weight_peephole"] = torch.cat(peep_grads, 1)
        d_xp = torch.cat(d_gates, 1, out=out)  # (B, G*H)
        d_pre = d_xp
        if self.layer_norm:
            d_pre, grads["ln_weight_hh"], _ = layer_norm_backward(d_xp, a, mean, rstd, p["ln_weight_hh"], None)
        grads["weight_hh"] = [(d_pre, hr)]
        d_h_prev = _masked(d_pre @ p["weight_hh"], mask)
        return d_xp, (d_h_prev, d_c_prev), grads

    def _sequence_call(self, xp, state0, p, batch_sizes, mask, keep, projection, clear, finish=None):
        ln = (p["ln_weight_hh"], p["ln_weight_c"], p.get("ln_bias_c")) if self.layer_norm else None
        return fused.lstm_sequence(xp, *state0, p["weight_hh"], p.get("weight_hr"), mask, batch_sizes,
                                   p.get("weight_peephole"), ln, self.coupled, self.activation == "softsign", keep,
                                   projection, clear, finish)

    # The same equations with the gate math in one C++ pass (fused.py): f = None in the cache marks it,
    # the activated gates (B, G*H) in g's place and the layer-norm moments (B, fused.STATS) in mean's.
    def _fused_step(self, xp, hr, c, p):
        if self.layer_norm:
            ln = (hr @ _w_hh_t(p), p["ln_weight_hh"], p["ln_weight_c"], p.get("ln_bias_c"))
            gates = xp.clone()  # LN(h W_hh^T) is added in the kernel
        else:
            ln, gates = None, torch.addmm(xp, hr, _w_hh_t(p))
        c_new, act_c, h_new, stats = fused.lstm_forward(
            gates, c, p.get("weight_peephole"), self.coupled, self.activation == "softsign", ln)
        h_out = h_new @ p["weight_hr"].T if self.proj_size else h_new
        a = ln[0] if ln else None
        return (h_out, c_new), (hr, c, None, None, gates, None, c_new, act_c, h_new, a, stats, None, None, None)

    def _fused_step_backward(self, d_h, d_c, saved, p, mask, out, grads):
        hr, c, _, _, gates, _, c_new, act_c, _, a, stats, *_ = saved
        d_xp = out if out is not None else torch.empty_like(gates)
        ln = (a, p["ln_weight_hh"], p["ln_weight_c"], p.get("ln_bias_c")) if self.layer_norm else None
        d_c_prev, d_a, vector_grads = fused.lstm_backward(d_h, d_c, gates, c, c_new, act_c, stats,
                                                          p.get("weight_peephole"), d_xp, self.coupled,
                                                          self.activation == "softsign", ln)
        grads.update(vector_grads)
        if d_a is None:
            d_pre, grads["weight_hh"] = d_xp, [(d_xp, hr)]  # d_xp is kept for all steps anyway
        elif len(d_a) >= SUM_PER_STEP_ROWS:  # layer norm: summing now spares keeping d_a and h for every step
            d_pre, grads["weight_hh"] = d_a, Summed(d_a.T @ hr)
        else:  # a pass over the whole gradient per step costs more than it spares with few rows
            d_pre, grads["weight_hh"] = d_a, [(d_a, hr)]
        return d_xp, (_masked(d_pre @ p["weight_hh"], mask), d_c_prev), grads


@dataclass(frozen=True)
class GRUStep(Step):
    """GRU step (torch.nn layout: gates r, z, n stacked in that order, two biases).

        r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)                   reset gate
        z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)                   update gate
        n  = act(W_in x + b_in + r * (W_hn h + b_hn))                 reset_after=True (torch.nn, cuDNN)
        n  = act(W_in x + b_in + W_hn (r * h) + b_hn)                 reset_after=False (the original
                                                                      form of Cho et al., the notes)
        h' = (1 - z) * n + z * h

    act is tanh, or softsign with activation='softsign'. Both conventions have the same parameters.
    In this (torch.nn) convention z is the share of the *old* state that is kept; the course notes'
    update gate, the share of the new candidate, is 1 - z.
    """

    hidden_size: int
    bias: bool = True
    reset_after: bool = True
    activation: str = "tanh"

    gates = 3
    num_states = 1

    def __post_init__(self):
        get_activation(self.activation, "activation", ("tanh", "softsign"))

    @property
    def act(self) -> Activation:
        return ACTIVATIONS[self.activation]

    def _input_bias(self, p):
        if self.reset_after and self.bias:  # b_hn is multiplied by r: only b_ih is hoisted
            return p["bias_ih"]
        return super()._input_bias(p)

    def step(self, xp, state, p, mask=None):
        (h,) = state  # (B, H)
        H = self.hidden_size
        hr = _masked(h, mask)
        xn = xp[:, 2 * H :]
        if self.reset_after:
            b = p.get("bias_hh")  # b_hn sits inside r * (...): the bias stays in the loop
            rec = hr @ _w_hh_t(p) if b is None else torch.addmm(b, hr, _w_hh_t(p))
            hh_n = rec[:, 2 * H :]
            r, z = torch.sigmoid(xp[:, : 2 * H] + rec[:, : 2 * H]).chunk(2, 1)
            n = self.act.fn(torch.addcmul(xn, r, hh_n))  # xn + r * hh_n
            rh = None
        else:
            w = p["weight_hh"]
            r, z = torch.sigmoid(torch.addmm(xp[:, : 2 * H], hr, w[: 2 * H].T)).chunk(2, 1)
            rh = r * hr
            hh_n = None
            n = self.act.fn(torch.addmm(xn, rh, w[2 * H :].T))
        h_new = torch.lerp(n, h, z)  # n + z * (h - n) = (1 - z) * n + z * h
        return (h_new,), (h, hr, r, z, n, hh_n, rh)

    def step_backward(self, d_state, saved, p, mask=None, out=None):
        (d_h,) = d_state
        h, hr, r, z, n, hh_n, rh = saved
        H = self.hidden_size
        w = p["weight_hh"]
        d_n = self.act.backward(d_h * (1 - z), n)  # gradient at n's pre-activation
        d_z = sigmoid_backward(d_h * (h - n), z)
        d_h_prev = d_h * z
        if self.reset_after:
            d_r = sigmoid_backward(d_n * hh_n, r)
            d_rec = torch.cat([d_r, d_z, d_n * r], 1)  # (B, 3H), at W_hh h + b_hh
            grads = {"weight_hh": [(d_rec, hr)]}
            if self.bias:
                grads["bias_hh"] = d_rec
            d_hr = d_rec @ w
        else:
            d_rh = d_n @ w[2 * H :]
            d_r = sigmoid_backward(d_rh * hr, r)
            d_rz = torch.cat([d_r, d_z], 1)  # (B, 2H)
            grads = {"weight_hh": [(d_rz, hr), (d_n, rh)]}
            d_hr = d_rh * r + d_rz @ w[: 2 * H]
        d_xp = torch.cat([d_r, d_z, d_n], 1, out=out)  # (B, 3H)
        return d_xp, (d_h_prev + _masked(d_hr, mask),), grads

    def _sequence_call(self, xp, state0, p, batch_sizes, mask, keep, projection, clear):
        b_hh = p.get("bias_hh") if self.reset_after else None  # hoisted into xp otherwise
        return fused.gru_sequence(xp, *state0, p["weight_hh"], b_hh, mask, batch_sizes, self.reset_after,
                                  self.activation, keep, projection, clear)
