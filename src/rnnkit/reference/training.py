"""Training: truncated BPTT, gradient clipping by global norm, and the Adagrad and Adam updates.

Truncated BPTT with windows of k steps. A long sequence (a text) is cut into windows
[0, k), [k, 2k), ...; each window runs forward from the state the previous window ended in,
so the network still carries information across the whole sequence, but its backward pass
stops at the window's start: the carried state is treated as a constant input. Memory is that
of k steps, the weights can be updated after every window, and no gradient sees dependencies
longer than k steps. Its gradient is the sum of the windows' gradients, each computed with the
incoming state detached.

Clipping by global norm. With g all the gradients as one vector and a threshold tau:

    k = ||g|| / tau;   if k > 1:  g <- g / k        (so that ||g|| = tau afterwards)

The direction of the step is kept, only its length is capped: one exploding gradient cannot
throw the weights far away.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .losses import many_to_many


class Window(NamedTuple):
    """What truncated_bptt yields for each window."""

    start: int      # the window is steps [start, start + k)
    loss: float     # the window's many-to-many loss
    grads: dict     # d loss / d params, this window only
    d_head: dict    # d loss / d head
    state: tuple    # the state after the window's last step: the next window's initial state


def truncated_bptt(net, params, head, x, targets, k, state=None):
    """Walk x (T, B, I) and targets (T, B) in windows of k steps, carrying the state across them.

    Yields one Window per window (the last may be shorter than k). Each window runs forward from
    the state the previous one ended in, and backward with no gradient flowing out of its end
    (d_final=None) nor into the state it started from, which is used but not differentiated.
    The caller may update params in place between windows (the next window then runs with the
    new weights); summing the windows' grads gives the truncated gradient of the whole sequence.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1; got {k!r}")
    for start in range(0, x.shape[0], k):
        out, final, cache = net.forward(params, x[start:start + k], state)
        loss, d_out, d_head = many_to_many(head, out, targets[start:start + k])
        grads, _, _ = net.backward(params, cache, d_out)  # d_x and d_state0 are not needed
        state = final
        yield Window(start, loss, grads, d_head, state)


def global_norm(arrays):
    """||g||: the Euclidean norm of all the arrays taken together as one vector."""
    return float(np.sqrt(sum(np.sum(g * g) for g in arrays)))


def clip_grad_norm(arrays, tau):
    """Scale the arrays in place by 1/k, k = ||g|| / tau, when k > 1; return ||g|| before clipping.

    torch.nn.utils.clip_grad_norm_ does the same, with the scale tau / (||g|| + 1e-6).
    """
    if not tau > 0:
        raise ValueError(f"tau must be positive; got {tau!r}")
    arrays = list(arrays)
    norm = global_norm(arrays)
    k = norm / tau
    if k > 1:
        for g in arrays:
            g /= k
    return norm


class Adagrad:
    """Adagrad (Duchi et al. 2011), as torch.optim.Adagrad with its defaults:

        G <- G + g^2                     per parameter entry, summed over every step so far
        w <- w - lr * g / (sqrt(G) + eps)

    Entries that have had large gradients take small steps, and rare ones large steps.
    """

    def __init__(self, params, lr=0.01, eps=1e-10):
        self.params, self.lr, self.eps = params, lr, eps
        self.sum_sq = {name: np.zeros_like(w) for name, w in params.items()}

    def step(self, grads):
        for name, w in self.params.items():
            g = grads[name]
            self.sum_sq[name] += g * g
            w -= self.lr * g / (np.sqrt(self.sum_sq[name]) + self.eps)


class Adam:
    """Adam (Kingma & Ba 2015), as torch.optim.Adam with its defaults:

        m <- beta1 m + (1 - beta1) g              a running mean of the gradient
        v <- beta2 v + (1 - beta2) g^2            a running mean of its square
        m_hat = m / (1 - beta1^t),  v_hat = v / (1 - beta2^t)     undo the bias towards 0 of the first steps
        w <- w - lr * m_hat / (sqrt(v_hat) + eps)
    """

    def __init__(self, params, lr=0.001, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = {name: np.zeros_like(w) for name, w in params.items()}
        self.v = {name: np.zeros_like(w) for name, w in params.items()}
        self.t = 0

    def step(self, grads):
        beta1, beta2 = self.betas
        self.t += 1
        for name, w in self.params.items():
            g = grads[name]
            self.m[name] = beta1 * self.m[name] + (1 - beta1) * g
            self.v[name] = beta2 * self.v[name] + (1 - beta2) * g * g
            m_hat = self.m[name] / (1 - beta1 ** self.t)
            v_hat = self.v[name] / (1 - beta2 ** self.t)
            w -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
