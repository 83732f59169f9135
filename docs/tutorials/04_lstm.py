r"""
The LSTM and its gates; peepholes and the coupled gate
======================================================

The notes' LSTM keeps two states, the output h_t and the cell c_t, and three sigmoid
gates decide what the cell forgets, what it takes in and what it shows (torch.nn's order: i, f, g, o;
:math:`\odot` is the elementwise product, σ the sigmoid):

.. math::

    i_t &= \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) && \text{input gate} \\
    f_t &= \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) && \text{forget gate} \\
    g_t &= \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) && \text{candidate} \\
    o_t &= \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) && \text{output gate} \\
    c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
    h_t &= o_t \odot \tanh(c_t)

The cell state is updated by addition, not through a matrix: along c the Jacobian is
:math:`\operatorname{diag}(f_t)`, which is why the gradient can survive (:doc:`03_bptt_vanishing`).
Two variants of the notes: **peepholes** (Gers and Schmidhuber), where the gates also see the cell,
:math:`i_t = \sigma(\dots + p_i \odot c_{t-1})`, :math:`f_t = \sigma(\dots + p_f \odot c_{t-1})`,
:math:`o_t = \sigma(\dots + p_o \odot c_t)`; and the **coupled** input-forget gate (CIFG), where the
cell takes in exactly what it forgets, :math:`c_t = f_t \odot c_{t-1} + (1 - f_t) \odot g_t`.
"""

# %%
# One step by hand
# ----------------
import matplotlib.pyplot as plt
import torch

import rnnkit

torch.manual_seed(0)
I, H, B = 3, 4, 2
cell = rnnkit.LSTMCell(I, H)                      # drop-in for torch.nn.LSTMCell
x, h, c = torch.randn(B, I), torch.randn(B, H), torch.randn(B, H)


def by_hand(cell, x, h, c, peephole=None):
    a = x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh   # (B, 4H)
    i, f, g, o = a.chunk(4, dim=1)
    if peephole is not None:
        p_i, p_f, p_o = peephole.chunk(3)
        i, f = i + p_i * c, f + p_f * c
    i, f, g = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g)
    c_new = f * c + i * g
    if peephole is not None:
        o = o + p_o * c_new                         # the output gate sees the new cell
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    return h_new, c_new


h_new, c_new = cell(x, (h, c))
expected = by_hand(cell, x, h, c)
print("standard: largest difference", max((a - b).abs().max().item() for a, b in zip((h_new, c_new), expected)))

peep = rnnkit.LSTMCell(I, H, peephole=True)
print("peephole parameter:", tuple(peep.weight_peephole.shape), "= (p_i, p_f, p_o), each (H,)")
with torch.no_grad():
    peep.weight_peephole.normal_()
got, expected = peep(x, (h, c)), by_hand(peep, x, h, c, peep.weight_peephole)
print("peephole: largest difference", max((a - b).abs().max().item() for a, b in zip(got, expected)))

# %%
# The coupled gate has no input gate: its weights are (3H, ·), gates f, g, o.
cifg = rnnkit.LSTMCell(I, H, coupled=True)
print("coupled weight_ih:", tuple(cifg.weight_ih.shape))
a = x @ cifg.weight_ih.T + cifg.bias_ih + h @ cifg.weight_hh.T + cifg.bias_hh
f, g, o = a.chunk(3, dim=1)
f, g, o = torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
c_cifg = f * c + (1 - f) * g
got = cifg(x, (h, c))
print("coupled: largest difference", (got[1] - c_cifg).abs().max().item(),
      (got[0] - o * torch.tanh(c_cifg)).abs().max().item())

# %%
# The code that computes it
# -------------------------
# rnnkit's step is :class:`rnnkit.engine.cells.LSTMStep` (its ``[source]`` link shows the code); every variant is
# a keyword of :class:`rnnkit.LSTM` and :class:`rnnkit.LSTMCell`. Its docstring carries the equations:
print(type(cell.cell).__doc__)

# %%
# The tests that prove it: ``tests/test_cells.py::test_lstm_cell_variants_match_docstring_equations``
# writes out these equations for every combination of variants and compares;
# ``tests/test_cells.py::test_step_backward_matches_autograd`` checks the hand-derived backward of each step;
# ``tests/test_cells.py::test_forget_bias_is_the_forget_gate`` checks that ``forget_bias`` sets the f gate.
#
# The gates at work
# -----------------
# A layer over a sequence of 40 steps, with the forget-gate bias at 1 (``forget_bias=1.0``): each gate's
# value for every unit at every step, for one sequence. The step is re-run here with the layer's weights to
# read the gates out; the layer itself only returns h and c.
layer = rnnkit.LSTM(I, 8, batch_first=True, forget_bias=1.0)
xs = torch.randn(1, 40, I)
h, c = torch.zeros(1, 8), torch.zeros(1, 8)
gates = {"i": [], "f": [], "o": [], "c": []}
with torch.no_grad():
    for t in range(xs.shape[1]):
        a = xs[:, t] @ layer.weight_ih_l0.T + layer.bias_ih_l0 + h @ layer.weight_hh_l0.T + layer.bias_hh_l0
        i, f, g, o = a.chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g
        h = o * torch.tanh(c)
        for name, value in zip("ifoc", (i, f, o, c)):
            gates[name].append(value[0])
    output, _ = layer(xs)
assert torch.allclose(output[0, -1], h[0], atol=1e-6)

fig, axes = plt.subplots(4, 1, figsize=(7, 6.5), sharex=True, layout="constrained")
for ax, (name, values) in zip(axes, gates.items()):
    image = ax.imshow(torch.stack(values).T, aspect="auto", cmap="viridis" if name != "c" else "RdBu",
                      vmin=0 if name != "c" else -2, vmax=1 if name != "c" else 2)
    ax.set_ylabel(name if name != "c" else "cell c")
    fig.colorbar(image, ax=ax)
axes[-1].set_xlabel("time step t")
axes[0].set_title("gates of rnnkit.LSTM(3, 8, forget_bias=1.0) over one sequence")
print(f"mean forget gate {torch.stack(gates['f']).mean():.2f} (sigmoid(1) = 0.73 at the bias alone)")

# %%
# Where they run, and more variants (layer normalisation, softsign, projection): :doc:`/layers`.
