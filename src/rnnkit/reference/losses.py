"""A linear softmax head on the recurrent outputs, and the cross-entropy losses of the two usual
tasks, each returning the loss and the gradient that Recurrent.backward takes.

    logits = W_y h + b_y            head = {"weight": (V, D*H), "bias": (V,)}, torch.nn.Linear's names
    p      = softmax(logits)
    CE     = -log p[y]              averaged over the batch
    dCE/dlogits = (p - onehot(y)) / B

many-to-one   one label per sequence, read from the last step's output:  L = CE(out_{T-1}, y)
              d_out is zero except at t = T-1. (Bidirectional: out_{T-1} is [the forward
              direction's last h, the backward direction's first], as torch.nn's output[-1].)
              A loss that is not a classification gives dL/dh_T itself: pass it to
              Recurrent.backward as d_final instead.
many-to-many  a label at every step (a language model): L = sum over t of CE(out_t, y_t), summed
              over time so that a long sequence's loss is the sum of its windows' losses (training.py)

Shapes: B batch, T time, H hidden, D directions, V vocabulary (classes).
"""
from __future__ import annotations

import numpy as np


def init_head(rng, in_features, num_classes):
    """torch.nn.Linear's initialisation: uniform in (-1/sqrt(in), 1/sqrt(in))."""
    bound = 1 / np.sqrt(in_features)
    return {"weight": rng.uniform(-bound, bound, (num_classes, in_features)),
            "bias": rng.uniform(-bound, bound, num_classes)}


def softmax(logits):
    """exp(z) / sum exp(z) over the last axis; shifting z by its max changes nothing but overflow."""
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def cross_entropy(logits, targets):
    """Mean over the batch of -log softmax(logits)[target]: logits (B, V), targets (B,) integers.

    Returns the loss and dL/dlogits (B, V) = (softmax(logits) - onehot(targets)) / B.
    """
    B = logits.shape[0]
    p = softmax(logits)                                     # (B, V)
    rows = np.arange(B)
    loss = -np.log(p[rows, targets]).mean()
    d_logits = p.copy()
    d_logits[rows, targets] -= 1
    return loss, d_logits / B


def head_step(head, h, targets):
    """Cross-entropy of the head on one step's outputs h (B, D*H).

    Returns the loss, dL/dh (B, D*H) and the head's gradients."""
    logits = h @ head["weight"].T + head["bias"]            # (B, V)
    loss, d_logits = cross_entropy(logits, targets)
    d_head = {"weight": d_logits.T @ h, "bias": d_logits.sum(0)}
    return loss, d_logits @ head["weight"], d_head


def many_to_one(head, out, targets):
    """L = CE(W_y out_{T-1} + b_y, y): out (T, B, D*H), targets (B,).

    Returns the loss, d_out (T, B, D*H) and the head's gradients."""
    loss, d_last, d_head = head_step(head, out[-1], targets)
    d_out = np.zeros_like(out)
    d_out[-1] = d_last                                      # the only step the loss reads
    return loss, d_out, d_head


def many_to_many(head, out, targets):
    """L = sum over t of CE(W_y out_t + b_y, y_t): out (T, B, D*H), targets (T, B).

    Returns the loss, d_out (T, B, D*H) and the head's gradients, summed over the steps."""
    loss = 0.0
    d_out = np.zeros_like(out)
    d_head = {name: np.zeros_like(value) for name, value in head.items()}
    for t in range(out.shape[0]):
        loss_t, d_out[t], d_head_t = head_step(head, out[t], targets[t])
        loss += loss_t
        for name in d_head:
            d_head[name] += d_head_t[name]                  # the head is shared by every step
    return loss, d_out, d_head
