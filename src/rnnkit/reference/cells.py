"""One time step of RNN, LSTM and GRU in NumPy: the forward math and its hand-derived backward.

Every cell is configuration plus three methods, and nothing else (no loop, no direction):

    cell.param_shapes(I)                   -> {name: shape}, torch.nn's cell names and layout
    cell.step(xp, state, p)                -> state', cache
    cell.step_backward(d_state', cache, p) -> d_xp, d_state, grads

`xp = W_ih x + b_ih` is the input's share of the gate pre-activations; recurrent.py computes it
for every time step before the loop, so a step adds only the recurrent share. `state` is `(h,)`
or `(h, c)` (torch's order); `h` is both the step's output and its recurrent input. `p` maps the
generic names below (`weight_hh`, `bias_hh`, `weight_peephole`) to arrays.

`step_backward` takes dL/d(new state) and returns dL/d(xp) (the gradient at the gate
pre-activations), dL/d(old state), and this step's share of the gradient of each recurrent
parameter: the time loop sums the shares over the steps, since every step uses the same weights.

Notation: `d_v` is dL/dv; `*` is elementwise, `@` the matrix product; a row of an array is one
sequence of the batch, so `h @ W.T` is W h for every row. An activation's derivative is written
in terms of its output y = act(v), which is what the forward pass saved.
Shapes: B batch, I input, H hidden, G gates (1 RNN, 4 LSTM, 3 coupled LSTM, 3 GRU).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def sigmoid(v):
    """1 / (1 + exp(-v)), written through tanh, which cannot overflow for large negative v."""
    return 0.5 * (1 + np.tanh(0.5 * v))


def dsigmoid(y):
    """sigmoid'(v) = y (1 - y), in terms of y = sigmoid(v)."""
    return y * (1 - y)


def softsign(v):
    """v / (1 + |v|): tanh's shape, but it saturates polynomially instead of exponentially."""
    return v / (1 + np.abs(v))


# name -> (act, act' in terms of y = act(v))
ACTIVATIONS = {
    "tanh": (np.tanh, lambda y: 1 - y * y),
    "relu": (lambda v: np.maximum(v, 0), lambda y: (y > 0).astype(y.dtype)),
    # y = v / (1 + |v|)  =>  1 - |y| = 1 / (1 + |v|)  =>  dy/dv = 1 / (1 + |v|)^2 = (1 - |y|)^2
    "softsign": (softsign, lambda y: (1 - np.abs(y)) ** 2),
}


def _check_options(hidden_size, name, value, allowed):
    if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
        raise ValueError(f"hidden_size must be an integer >= 1; got {hidden_size!r}")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _recurrent_shapes(G, H, I):
    """weight_ih (G*H, I), weight_hh (G*H, H), bias_ih and bias_hh (G*H,): gates stacked in rows."""
    return {"weight_ih": (G * H, I), "weight_hh": (G * H, H), "bias_ih": (G * H,), "bias_hh": (G * H,)}


@dataclass(frozen=True)
class RNNCell:
    """Elman RNN step, as torch.nn.RNNCell:

        a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh        pre-activation
        h_t = act(a_t)                                       act: tanh, relu or softsign

    Backward, given d_h_t (the loss's gradient with respect to h_t, from every later use of it):

        d_a_t     = d_h_t * act'(a_t)
        d_h_{t-1} = W_hh^T d_a_t
        d_W_hh   += d_a_t h_{t-1}^T,   d_b_hh += d_a_t
    """

    hidden_size: int
    nonlinearity: str = "tanh"

    gates = 1
    num_states = 1

    def __post_init__(self):
        _check_options(self.hidden_size, "nonlinearity", self.nonlinearity, ("tanh", "relu", "softsign"))

    def param_shapes(self, input_size):
        return _recurrent_shapes(self.gates, self.hidden_size, input_size)

    def step(self, xp, state, p):
        act, _ = ACTIVATIONS[self.nonlinearity]
        (h,) = state                                            # (B, H)
        a = xp + h @ p["weight_hh"].T + p["bias_hh"]           # (B, H)
        h_new = act(a)                                          # (B, H)
        return (h_new,), (h, h_new)

    def step_backward(self, d_state, cache, p):
        _, dact = ACTIVATIONS[self.nonlinearity]
        (d_h_new,) = d_state
        h, h_new = cache
        d_a = d_h_new * dact(h_new)                             # (B, H)
        d_h = d_a @ p["weight_hh"]                              # (B, H)  W_hh^T d_a, for every row
        grads = {"weight_hh": d_a.T @ h, "bias_hh": d_a.sum(0)}  # summed over the batch
        return d_a, (d_h,), grads


@dataclass(frozen=True)
class LSTMCell:
    """LSTM step, as torch.nn.LSTMCell (gates i, f, g, o stacked in that order), with variants:

        a   = W_ih x + b_ih + W_hh h + b_hh                 (B, 4H), split into a_i, a_f, a_g, a_o
        i   = sigmoid(a_i + w_ci * c)                        input gate
        f   = sigmoid(a_f + w_cf * c)                        forget gate
        g   = act(a_g)                                        candidate
        c'  = f * c + i * g                                   the cell state
        o   = sigmoid(a_o + w_co * c')                        output gate
        h'  = o * act(c')

    act is tanh, or softsign with activation='softsign'.
    peephole=True  adds the diagonal peepholes w_ci, w_cf, w_co (Gers & Schmidhuber 2000): i and f
                   see the old cell state, o the new one. They are one parameter, weight_peephole
                   ((G-1)*H,), ordered i, f, o (f, o when coupled). Without it they are zero.
    coupled=True   CIFG: there is no input gate, i = 1 - f, so c' = f * c + (1 - f) * g; the gates
                   are f, g, o and the weights (3H, .).

    Backward, given d_h' and d_c' (from step t+1, which reads c' directly):

        d_a_o = d_h' * act(c') * o (1 - o)
        d_c'  = d_c' + d_h' * o * act'(c') + d_a_o * w_co     every path out of c'
        d_i = d_c' * g,   d_f = d_c' * c,   d_a_g = d_c' * i * act'(g)
        d_a_i = d_i * i (1 - i),   d_a_f = d_f * f (1 - f)     (coupled: d_a_f = (d_f - d_i) * f (1 - f))
        d_c = d_c' * f + d_a_i * w_ci + d_a_f * w_cf           the cell-state path: a product of f's
        d_h = W_hh^T d_a
    """

    hidden_size: int
    activation: str = "tanh"
    peephole: bool = False
    coupled: bool = False

    num_states = 2

    def __post_init__(self):
        _check_options(self.hidden_size, "activation", self.activation, ("tanh", "softsign"))

    @property
    def gates(self):
        return 3 if self.coupled else 4

    def param_shapes(self, input_size):
        shapes = _recurrent_shapes(self.gates, self.hidden_size, input_size)
        if self.peephole:
            shapes["weight_peephole"] = ((self.gates - 1) * self.hidden_size,)
        return shapes

    def _peepholes(self, p):
        """(w_ci, w_cf, w_co), each (H,); zeros where the cell has none."""
        zero = np.zeros(self.hidden_size, p["weight_hh"].dtype)
        if not self.peephole:
            return zero, zero, zero
        if self.coupled:
            w_cf, w_co = np.split(p["weight_peephole"], 2)
            return zero, w_cf, w_co
        return tuple(np.split(p["weight_peephole"], 3))

    def step(self, xp, state, p):
        act, _ = ACTIVATIONS[self.activation]
        h, c = state                                            # (B, H), (B, H)
        w_ci, w_cf, w_co = self._peepholes(p)                   # (H,) each
        a = xp + h @ p["weight_hh"].T + p["bias_hh"]           # (B, G*H)
        if self.coupled:
            a_f, a_g, a_o = np.split(a, 3, axis=1)              # (B, H) each
            f = sigmoid(a_f + w_cf * c)
            i = 1 - f
        else:
            a_i, a_f, a_g, a_o = np.split(a, 4, axis=1)         # (B, H) each
            i = sigmoid(a_i + w_ci * c)
            f = sigmoid(a_f + w_cf * c)
        g = act(a_g)
        c_new = f * c + i * g                                   # (B, H)
        o = sigmoid(a_o + w_co * c_new)
        s = act(c_new)
        h_new = o * s                                           # (B, H)
        return (h_new, c_new), (h, c, i, f, g, o, c_new, s)

    def step_backward(self, d_state, cache, p):
        _, dact = ACTIVATIONS[self.activation]
        d_h_new, d_c_new = d_state
        h, c, i, f, g, o, c_new, s = cache
        w_ci, w_cf, w_co = self._peepholes(p)
        d_a_o = d_h_new * s * dsigmoid(o)
        d_c_new = d_c_new + d_h_new * o * dact(s) + d_a_o * w_co
        d_i = d_c_new * g
        d_f = d_c_new * c
        d_a_g = d_c_new * i * dact(g)
        if self.coupled:
            d_a_i = np.zeros_like(d_i)                          # no input gate of its own
            d_a_f = (d_f - d_i) * dsigmoid(f)                   # i = 1 - f: f also acts through i
            d_a = np.concatenate([d_a_f, d_a_g, d_a_o], axis=1)  # (B, 3H)
        else:
            d_a_i = d_i * dsigmoid(i)
            d_a_f = d_f * dsigmoid(f)
            d_a = np.concatenate([d_a_i, d_a_f, d_a_g, d_a_o], axis=1)  # (B, 4H)
        d_c = d_c_new * f + d_a_i * w_ci + d_a_f * w_cf         # (B, H)
        d_h = d_a @ p["weight_hh"]                              # (B, H)
        grads = {"weight_hh": d_a.T @ h, "bias_hh": d_a.sum(0)}
        if self.peephole:
            d_w_ci, d_w_cf, d_w_co = (d_a_i * c).sum(0), (d_a_f * c).sum(0), (d_a_o * c_new).sum(0)
            pieces = [d_w_cf, d_w_co] if self.coupled else [d_w_ci, d_w_cf, d_w_co]
            grads["weight_peephole"] = np.concatenate(pieces)
        return d_a, (d_h, d_c), grads


@dataclass(frozen=True)
class GRUCell:
    """GRU step, as torch.nn.GRUCell (gates r, z, n stacked in that order, two biases):

        r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)          reset gate
        z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)          update gate
        n  = act(W_in x + b_in + r * (W_hn h + b_hn))        reset_after=True (torch.nn, cuDNN)
        n  = act(W_in x + b_in + W_hn (r * h) + b_hn)        reset_after=False (Cho et al. 2014)
        h' = (1 - z) * n + z * h

    act is tanh, or softsign with activation='softsign'. Both conventions have the same parameters.
    As in torch.nn, z is the share of the old state that is kept; some texts call 1 - z the
    update gate.

    Backward, given d_h' (a_n is n's pre-activation, m = W_hn h + b_hn when reset_after):

        d_a_n = d_h' * (1 - z) * act'(a_n),   d_a_z = d_h' * (h - n) * z (1 - z)
        reset_after:  d_m = d_a_n * r,                d_a_r = d_a_n * m * r (1 - r)
        reset before: d_(r*h) = W_hn^T d_a_n,        d_a_r = d_(r*h) * h * r (1 - r)
        d_h = d_h' * z + (every path through W_hh h)
    """

    hidden_size: int
    reset_after: bool = True
    activation: str = "tanh"

    gates = 3
    num_states = 1

    def __post_init__(self):
        _check_options(self.hidden_size, "activation", self.activation, ("tanh", "softsign"))

    def param_shapes(self, input_size):
        return _recurrent_shapes(self.gates, self.hidden_size, input_size)

    def step(self, xp, state, p):
        act, _ = ACTIVATIONS[self.activation]
        (h,) = state                                            # (B, H)
        x_r, x_z, x_n = np.split(xp, 3, axis=1)                 # (B, H) each
        W_hr, W_hz, W_hn = np.split(p["weight_hh"], 3)          # (H, H) each
        b_hr, b_hz, b_hn = np.split(p["bias_hh"], 3)            # (H,) each
        r = sigmoid(x_r + h @ W_hr.T + b_hr)
        z = sigmoid(x_z + h @ W_hz.T + b_hz)
        if self.reset_after:
            m = h @ W_hn.T + b_hn                               # (B, H)
            n = act(x_n + r * m)
        else:
            m = r * h                                           # (B, H)  the reset state
            n = act(x_n + m @ W_hn.T + b_hn)
        h_new = (1 - z) * n + z * h                             # (B, H)
        return (h_new,), (h, r, z, n, m)

    def step_backward(self, d_state, cache, p):
        _, dact = ACTIVATIONS[self.activation]
        (d_h_new,) = d_state
        h, r, z, n, m = cache
        W_hr, W_hz, W_hn = np.split(p["weight_hh"], 3)
        d_a_n = d_h_new * (1 - z) * dact(n)                     # (B, H)
        d_a_z = d_h_new * (h - n) * dsigmoid(z)
        d_h = d_h_new * z                                       # the direct path h -> h'
        if self.reset_after:
            d_m = d_a_n * r                                     # at W_hn h + b_hn
            d_a_r = d_a_n * m * dsigmoid(r)
            d_hh = np.concatenate([d_a_r, d_a_z, d_m], axis=1)  # (B, 3H), at W_hh h + b_hh
            d_h = d_h + d_hh @ p["weight_hh"]
            grads = {"weight_hh": d_hh.T @ h, "bias_hh": d_hh.sum(0)}
        else:
            d_m = d_a_n @ W_hn                                  # at m = r * h
            d_a_r = d_m * h * dsigmoid(r)
            d_h = d_h + d_m * r + d_a_r @ W_hr + d_a_z @ W_hz
            d_W_hh = np.concatenate([d_a_r.T @ h, d_a_z.T @ h, d_a_n.T @ m])  # (3H, H)
            d_b_hh = np.concatenate([d_a_r.sum(0), d_a_z.sum(0), d_a_n.sum(0)])
            grads = {"weight_hh": d_W_hh, "bias_hh": d_b_hh}
        d_xp = np.concatenate([d_a_r, d_a_z, d_a_n], axis=1)   # (B, 3H)
        return d_xp, (d_h,), grads
