r"""
The RNN step and its tensor shapes
==================================

The notes' Elman RNN keeps a hidden state h_t and updates it once per input x_t:

.. math::

    h_t = \tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})

with W_ih of shape (H, I), W_hh (H, H) and the two biases (H,), shared by every
step. This tutorial computes that step by hand from a layer's own parameters, checks it against
:class:`rnnkit.RNN`, and then follows the shapes through one layer, a stack and a bidirectional layer.
Shapes use the project's legend: B batch, T time, I input, H hidden, L layers, D directions.
"""

# %%
# One step, by hand and by rnnkit
# -------------------------------
# :class:`rnnkit.RNN` is drop-in for ``torch.nn.RNN``: the same arguments, parameter names and shapes.
import inspect

import matplotlib.pyplot as plt
import torch

import rnnkit

torch.manual_seed(0)
T, B, I, H = 12, 3, 4, 5
rnn = rnnkit.RNN(I, H)                                  # time-major by default: x is (T, B, I)
for name, p in rnn.named_parameters():
    print(f"{name:14s} {tuple(p.shape)}")

x = torch.randn(T, B, I)
output, h_n = rnn(x)
print("output", tuple(output.shape), " h_n", tuple(h_n.shape))

# %%
# The loop of the equation, written out with the layer's weights, gives the same numbers:
h = torch.zeros(B, H)                                   # h_0 = 0
by_hand = []
for t in range(T):
    h = torch.tanh(x[t] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0)
    by_hand.append(h)
by_hand = torch.stack(by_hand)                          # (T, B, H)
print("largest difference from rnnkit.RNN:", (by_hand - output).abs().max().item())
assert torch.allclose(by_hand, output, atol=1e-6)
assert torch.equal(output[-1], h_n[0])                  # h_n is the last step's state

# %%
# The code that computes it
# -------------------------
# A cell is one time step of math and nothing else; the layer holds the parameters and the engine runs the
# loop. The input's share ``W_ih x_t + b_ih + b_hh`` does not depend on the state, so it is
# computed for all steps at once before the loop (``project_input``); the step adds the recurrent product
# and applies the nonlinearity. Here is rnnkit's step, read from the installed package (its page, with a
# ``[source]`` link, is :class:`rnnkit.engine.cells.RNNStep`):
print(inspect.getsource(type(rnn.cell).step))

# %%
# The test that proves it: ``tests/test_layers.py::test_parity_with_torch_float64`` runs every
# configuration against ``torch.nn.RNN`` with copied weights (outputs, final states and every gradient to
# 1e-10 in float64), and ``tests/test_cells.py::test_rnn_cell_softsign_matches_equation`` checks the
# equation written out by hand, as above, for the softsign variant.
#
# The hidden state over time
# --------------------------
# Each column below is one step's ``h_t`` for the first sequence of the batch: every unit lies in
# (-1, 1), the range of tanh.
fig, ax = plt.subplots(figsize=(7, 2.6), layout="constrained")
image = ax.imshow(output[:, 0].detach().T, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
ax.set_xlabel("time step t")
ax.set_ylabel("hidden unit")
ax.set_title("h_t of rnnkit.RNN(4, 5), one sequence")
fig.colorbar(image)

# %%
# A stack of layers
# -----------------
# With ``num_layers=L`` the output of layer l is the input sequence of layer l + 1. ``output`` holds the
# top layer's ``h_t`` at every step; ``h_n`` holds every layer's last state, (L, B, H).
deep = rnnkit.RNN(I, H, num_layers=3, batch_first=True)   # batch_first: x is (B, T, I)
xb = x.transpose(0, 1)                                      # (B, T, I)
output, h_n = deep(xb)
print("output", tuple(output.shape), " h_n", tuple(h_n.shape))
assert torch.equal(output[:, -1], h_n[-1])                  # the top layer's last state

# %%
# Bidirectional
# -------------
# A bidirectional layer runs a second RNN from the last step to the first, with its own weights
# (``weight_ih_l0_reverse``, ...), and puts both directions' outputs side by side: ``output`` is
# (B, T, 2H). ``h_n`` is (D*L, B, H), layer l's directions at indices 2l and 2l + 1. The forward
# direction ends at the last step, the backward direction at the first:
bi = rnnkit.RNN(I, H, num_layers=2, batch_first=True, bidirectional=True)
output, h_n = bi(xb)
print("output", tuple(output.shape), " h_n", tuple(h_n.shape))
forward, backward = output[..., :H], output[..., H:]
assert torch.equal(forward[:, -1], h_n[-2])                 # top layer, forward: state after step T
assert torch.equal(backward[:, 0], h_n[-1])                 # top layer, backward: state after step 1

# %%
# Variable lengths
# ----------------
# A padded batch takes ``lengths=``: the state stops at each sequence's last valid step, outputs past it are
# zero, and the backward direction starts at that step (``PackedSequence`` works too, as in torch.nn).
lengths = torch.tensor([12, 7, 0])
output, h_n = bi(xb, lengths=lengths)
print("outputs after step 7 of sequence 2 are zero:", bool(output[1, 7:].eq(0).all()))
print("a length-0 sequence returns the initial state:", bool(h_n[:, 2].eq(0).all()))

# %%
# ``tests/test_layers.py::test_lengths_equal_running_each_sequence_alone`` checks that a padded batch
# gives each sequence what it gives alone. The layers and all their options are listed in
# :doc:`/layers`.
