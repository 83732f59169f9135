"""The time loop and backpropagation through time (BPTT), written once for every cell; depth and
direction by composition.

One direction of one layer, forward (`run_forward`):

    xp_t = W_ih x_t + b_ih                                 every t at once, before the loop
    state_t, cache_t = cell.step(xp_t, state_{t-1})        t = 0, 1, ..., T-1
    out_t = h_t

and backward (`run_backward`), walking time in reverse. h_t is used twice, by the loss (or the
layer above) at step t and by step t+1, so its gradient is the sum of both uses:

    d_h_t = d_out_t + (what step t+1 sent back)            for t = T-1: d_out_{T-1} + d_final
    d_xp_t, d_state_{t-1}, shares = cell.step_backward(d_state_t, cache_t)
    d_W_hh = sum over t of the steps' shares                 (the same for b_hh and peepholes)

then, after the loop, d_W_ih = sum_t d_xp_t x_t^T, d_b_ih = sum_t d_xp_t, d_x_t = W_ih^T d_xp_t.

`Recurrent` stacks layers, the output of layer l being the input of layer l+1; a bidirectional
layer runs a second cell, with its own weights, over the time-reversed input, and concatenates
[forward, backward] outputs on the feature axis, as torch.nn does. Its parameters are a dict with
torch.nn's names: weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, weight_ih_l0_reverse, ...,
weight_ih_l1 (which reads the D*H outputs of layer 0), ... and weight_peephole_l{k} for the LSTM
variant. States are tuples (h,) or (h, c) of (L*D, B, H) arrays, indexed layer * D + direction.

Shapes: B batch, T time, I input, H hidden, G gates, L layers, D directions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def run_forward(cell, p, xp, state):
    """Run `cell` over the steps of xp (T, B, G*H) from `state`; p holds this direction's weights.

    Returns out (T, B, H), the h of every step; the final state; and the per-step caches.
    """
    outs, caches = [], []
    for t in range(xp.shape[0]):
        state, cache = cell.step(xp[t], state, p)
        outs.append(state[0])
        caches.append(cache)
    return np.stack(outs), state, caches


def run_backward(cell, p, caches, d_out, d_final):
    """BPTT through one direction of one layer.

    d_out (T, B, H) is dL/dh_t from outside the recurrence at each step (the loss at step t, or
    the layer above); d_final is dL/d(final state), a tuple like the state.
    Returns d_xp (T, B, G*H), dL/d(initial state), and the recurrent parameters' gradients,
    each summed over the time steps.
    """
    T = len(caches)
    d_xp = [None] * T
    grads = {}
    d_state = d_final
    for t in reversed(range(T)):
        d_state = (d_state[0] + d_out[t],) + tuple(d_state[1:])  # h_t feeds step t+1 and out_t
        d_xp[t], d_state, shares = cell.step_backward(d_state, caches[t], p)
        for name, share in shares.items():
            grads[name] = grads.get(name, 0) + share                 # shared weights: sum over t
    return np.stack(d_xp), d_state, grads


@dataclass(frozen=True)
class Recurrent:
    """A stack of `num_layers` layers of `cell`, optionally bidirectional: the NumPy counterpart of
    rnnkit.RNN / LSTM / GRU (and torch.nn's) with bias=True, batch_first=False and no dropout.

    cell           an RNNCell, LSTMCell or GRUCell (cells.py), which also gives H
    input_size     I, the features of x_t
    num_layers     L
    bidirectional  D = 2 if True else 1
    """

    cell: object
    input_size: int
    num_layers: int = 1
    bidirectional: bool = False

    def __post_init__(self):
        for name in ("input_size", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    def param_shapes(self):
        """{torch.nn name: shape} for every parameter, in torch.nn's order."""
        H, D = self.cell.hidden_size, self.num_directions
        shapes = {}
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else D * H
            for direction in range(D):
                suffix = _suffix(layer, direction)
                for name, shape in self.cell.param_shapes(layer_input).items():
                    shapes[name + suffix] = shape
        return shapes

    def init_params(self, rng):
        """torch.nn's initialisation: every parameter uniform in (-1/sqrt(H), 1/sqrt(H))."""
        bound = 1 / np.sqrt(self.cell.hidden_size)
        return {name: rng.uniform(-bound, bound, shape) for name, shape in self.param_shapes().items()}

    def layer_params(self, params, layer, direction):
        """The weights of one direction of one layer, under the cell's generic names."""
        suffix = _suffix(layer, direction)
        return {name: params[name + suffix] for name in self.cell.param_shapes(1)}

    def zero_state(self, batch_size, dtype):
        L, D, H = self.num_layers, self.num_directions, self.cell.hidden_size
        return tuple(np.zeros((L * D, batch_size, H), dtype) for _ in range(self.cell.num_states))

    def _check_state(self, name, states, batch_size):
        """A state (or its gradient) must be a tuple of num_states arrays (L*D, B, H)."""
        shape = (self.num_layers * self.num_directions, batch_size, self.cell.hidden_size)
        if len(states) != self.cell.num_states or any(s is not None and s.shape != shape for s in states):
            got = [None if s is None else s.shape for s in states]
            raise ValueError(f"{name} must be a tuple of {self.cell.num_states} arrays of shape {shape}; got {got}")

    def forward(self, params, x, state0=None):
        """Run the stack over x (T, B, I) from state0 (zeros if None).

        Returns out (T, B, D*H), the top layer's h at every step; the final state, as state0;
        and the cache that `backward` needs.
        """
        if x.ndim != 3 or x.shape[0] < 1 or x.shape[2] != self.input_size:
            raise ValueError(f"x must have shape (T, B, {self.input_size}) with T >= 1; got {x.shape}")
        D = self.num_directions
        if state0 is None:
            state0 = self.zero_state(x.shape[1], x.dtype)
        self._check_state("state0", state0, x.shape[1])
        final = [np.empty_like(s) for s in state0]
        cache = []
        inp = x                                                     # (T, B, I), then (T, B, D*H)
        for layer in range(self.num_layers):
            outs = []
            for direction in range(D):
                index = layer * D + direction                       # in the states: l0, l0_reverse, l1, ...
                p = self.layer_params(params, layer, direction)
                seq = inp[::-1] if direction else inp               # the reverse direction reads t = T-1 first
                xp = seq @ p["weight_ih"].T + p["bias_ih"]          # (T, B, G*H), hoisted out of the loop
                out, last, caches = run_forward(self.cell, p, xp, tuple(s[index] for s in state0))
                outs.append(out[::-1] if direction else out)        # back in forward time order
                for f, s in zip(final, last):
                    f[index] = s
                cache.append((seq, caches))
            inp = np.concatenate(outs, axis=2)                      # (T, B, D*H)
        return inp, tuple(final), cache

    def backward(self, params, cache, d_out=None, d_final=None):
        """BPTT through the whole stack, given the loss's gradients with respect to the outputs.

        d_out    (T, B, D*H): dL/d out_t at every step, or None for zeros. Many-to-many: every
                 step's loss contributes; many-to-one: zero except at the step the loss reads.
        d_final  dL/d(final state), a tuple like the state whose entries may be None (zeros), or
                 None. Nonzero when the loss reads the final state itself, e.g. a given dL/dh_T;
                 None cuts the gradient there, which truncated BPTT does at a window's end.
        Returns grads (a dict like params), d_x (T, B, I) and dL/d(initial state).
        """
        D, H = self.num_directions, self.cell.hidden_size
        T, B = cache[0][0].shape[:2]
        zero = self.zero_state(B, cache[0][0].dtype)
        if d_final is None:
            d_final = zero
        self._check_state("d_final", d_final, B)
        d_final = tuple(z if d is None else d for z, d in zip(zero, d_final))
        d_state0 = tuple(np.zeros_like(z) for z in zero)
        if d_out is None:
            d_out = np.zeros((T, B, D * H), zero[0].dtype)
        if d_out.shape != (T, B, D * H):
            raise ValueError(f"d_out must have the output's shape {(T, B, D * H)}; got {d_out.shape}")
        d_inp = d_out                                               # (T, B, D*H)
        grads = {}
        for layer in reversed(range(self.num_layers)):
            d_below = 0                                             # dL/d(this layer's input)
            for direction in range(D):
                index = layer * D + direction
                p = self.layer_params(params, layer, direction)
                seq, caches = cache[index]
                d_seq_out = d_inp[:, :, direction * H:(direction + 1) * H]  # (T, B, H), this direction's share
                if direction:
                    d_seq_out = d_seq_out[::-1]
                d_xp, d_first, g = run_backward(self.cell, p, caches, d_seq_out, tuple(d[index] for d in d_final))
                g["weight_ih"] = np.einsum("tbg,tbi->gi", d_xp, seq)  # sum over t and b of d_xp_t x_t^T
                g["bias_ih"] = d_xp.sum(axis=(0, 1))
                d_seq = d_xp @ p["weight_ih"]                       # (T, B, this layer's input size)
                d_below = d_below + (d_seq[::-1] if direction else d_seq)
                for name, value in g.items():
                    grads[name + _suffix(layer, direction)] = value
                for d, s in zip(d_state0, d_first):
                    d[index] = s
            d_inp = d_below
        return {name: grads[name] for name in self.param_shapes()}, d_inp, d_state0


def _suffix(layer, direction):
    return f"_l{layer}" + ("_reverse" if direction else "")
