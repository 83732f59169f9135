"""
An RNN from scratch in NumPy
============================

:mod:`rnnkit.reference` is the same math written again with NumPy alone: the forward pass and the
hand-derived backward pass (BPTT) of RNN, LSTM and GRU cells, stacked and bidirectional, the losses,
truncated BPTT, clipping, Adagrad and Adam. It is written to be read top to bottom, and it is an independent
oracle for the tests of rnnkit's layers. :doc:`/bptt` derives every line of it; this tutorial runs it.

``rnnkit.reference`` is the same math written again with NumPy alone (no torch import), for
learners and as an independent oracle: forward and hand-derived BPTT for RNN (tanh, relu,
softsign), LSTM (peephole, coupled, softsign) and GRU (both conventions), stacked and
bidirectional, many-to-one and many-to-many losses, truncated BPTT, clipping by global norm,
Adam and Adagrad written out. Its weights use the layers' names and layout
(``{k: v.detach().numpy() for k, v in layer.state_dict().items()}``). It is bias-on, time-major,
without dropout, projection, layer norm or variable lengths.
"""

# %%
# Forward and backward, by hand
# -----------------------------
# The parameters are a dict with rnnkit's (and torch.nn's) names, shapes and gate orders.
import matplotlib.pyplot as plt
import numpy as np
import torch

import rnnkit
from rnnkit.reference import Adam, LSTMCell, Recurrent, RNNCell, clip_grad_norm, init_head, many_to_many, \
    softmax, truncated_bptt

rng = np.random.default_rng(0)
T, B, I, H = 6, 2, 3, 5
net = Recurrent(RNNCell(H), I)
params = net.init_params(rng)
print({name: p.shape for name, p in params.items()})
x = rng.standard_normal((T, B, I))
out, final, cache = net.forward(params, x)                     # out (T, B, H)
u = rng.standard_normal(out.shape)                             # L = sum(u * out)
grads, d_x, d_state0 = net.backward(params, cache, d_out=u)

# %%
# A central finite difference of one weight checks the hand-derived gradient:
eps, (i, j) = 1e-6, (2, 1)
plus, minus = {k: v.copy() for k, v in params.items()}, {k: v.copy() for k, v in params.items()}
plus["weight_hh_l0"][i, j] += eps
minus["weight_hh_l0"][i, j] -= eps
numeric = (np.sum(u * net.forward(plus, x)[0]) - np.sum(u * net.forward(minus, x)[0])) / (2 * eps)
print(f"dL/dW_hh[{i},{j}]: BPTT {grads['weight_hh_l0'][i, j]:.8f}, finite difference {numeric:.8f}")

# %%
# The same weights in :class:`rnnkit.RNN`, differentiated by torch's autograd, give the same numbers:
layer = rnnkit.RNN(I, H).double()
layer.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
xt = torch.from_numpy(x).requires_grad_()
out_t, _ = layer(xt)
(out_t * torch.from_numpy(u)).sum().backward()
print("outputs:", np.abs(out_t.detach().numpy() - out).max(),
      " dL/dW_hh:", np.abs(layer.weight_hh_l0.grad.numpy() - grads["weight_hh_l0"]).max(),
      " dL/dx:", np.abs(xt.grad.numpy() - d_x).max())

# %%
# Tested by ``tests/test_reference.py::test_gradients_match_finite_differences`` (every gradient, every cell
# and variant) and ``tests/test_reference.py::test_matches_rnnkit_layers``.
#
# Training: a character model in NumPy
# ------------------------------------
# One-hot characters, an LSTM, a softmax head at every step, truncated BPTT with the carried state, clipping
# by global norm and Adam, all from :mod:`rnnkit.reference` (``rnnkit numpy-demo`` is this loop with options).
text = "the gradient flows back through time, step by step. " * 4
chars = sorted(set(text))
V = len(chars)
ids = np.array([chars.index(ch) for ch in text])
one_hot = np.eye(V)[ids[:-1]][:, None, :]                      # (N-1, 1, V)
targets = ids[1:, None]                                        # (N-1, 1)

rng = np.random.default_rng(0)
net = Recurrent(LSTMCell(32), V)
params, head = net.init_params(rng), init_head(rng, 32, V)
optimiser, head_optimiser = Adam(params, lr=1e-2), Adam(head, lr=1e-2)
losses = []
for epoch in range(25):
    for window in truncated_bptt(net, params, head, one_hot, targets, k=20):
        clip_grad_norm([*window.grads.values(), *window.d_head.values()], 5.0)
        optimiser.step(window.grads)
        head_optimiser.step(window.d_head)
        losses.append(window.loss / len(targets[window.start:window.start + 20]))
print(f"{len(losses)} windows: {losses[0]:.3f} -> {np.mean(losses[-5:]):.3f} nats/char (ln V = {np.log(V):.3f})")

state, ix, drawn = None, ids[0], []
for _ in range(60):                                            # greedy, one character at a time
    out, state, _ = net.forward(params, np.eye(V)[[ix]][:, None, :], state)
    ix = int(np.argmax(softmax(out[0, 0] @ head["weight"].T + head["bias"])))
    drawn.append(chars[ix])
print("greedy sample:", repr(text[0] + "".join(drawn)))

fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
ax.plot(losses)
ax.axhline(np.log(V), color="grey", linestyle=":", label="uniform guess, ln V")
ax.set_xlabel("window")
ax.set_ylabel("nats/char")
ax.set_title("an LSTM in NumPy learns a sentence")
ax.legend()

# %%
# From the command line
# ---------------------
# The same trainer, with options:
#
# .. code-block:: bash
#
#    .venv/bin/rnnkit numpy-demo      # a character-level LSTM learns a paragraph in ~6 s, printing loss and samples
#    .venv/bin/rnnkit numpy-demo --cell gru --text notes.txt --hidden 128 --steps 5000
