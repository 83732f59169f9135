r"""
The GRU, in both conventions
============================

The GRU merges the LSTM's cell and output into one state and has two gates, reset r and update z.
The notes write it in the original form of Cho et al., where the reset gate acts on the state *before* the
matrix product and z is the share of the **new** candidate:

.. math::

    r_t &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) && \text{reset gate} \\
    z_t &= \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) && \text{update gate} \\
    \tilde h_t &= \tanh(W_{in} x_t + b_{in} + W_{hn} (r_t \odot h_{t-1}) + b_{hn}) && \text{candidate} \\
    h_t &= (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t

PyTorch and cuDNN compute two things differently: the reset gate multiplies the product *after* it,
``n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))`` (``reset_after=True``),
and their z is the share of the **old** state, ``h_t = (1 - z_t) * n_t + z_t * h_{t-1}``.
The second is only a naming: torch's z is the notes' ``1 - z``. The first changes the function.
:class:`rnnkit.GRU` computes either, with the same parameters: ``reset_after=True`` (the default, torch.nn's)
or ``reset_after=False`` (the notes').
"""

# %%
# Both, by hand
# -------------
import matplotlib.pyplot as plt
import torch

import rnnkit

torch.manual_seed(0)
I, H, B = 3, 6, 4
after = rnnkit.GRUCell(I, H)                               # torch.nn's convention
before = rnnkit.GRUCell(I, H, reset_after=False)           # the notes'
before.load_state_dict(after.state_dict())                 # the very same parameters
x, h = torch.randn(B, I), torch.randn(B, H)

W_ir, W_iz, W_in = after.weight_ih.chunk(3)
W_hr, W_hz, W_hn = after.weight_hh.chunk(3)
b_ir, b_iz, b_in = after.bias_ih.chunk(3)
b_hr, b_hz, b_hn = after.bias_hh.chunk(3)
with torch.no_grad():
    r = torch.sigmoid(x @ W_ir.T + b_ir + h @ W_hr.T + b_hr)
    z_torch = torch.sigmoid(x @ W_iz.T + b_iz + h @ W_hz.T + b_hz)   # share of the old state
    z_notes = 1 - z_torch                                            # share of the new candidate
    n_after = torch.tanh(x @ W_in.T + b_in + r * (h @ W_hn.T + b_hn))
    n_before = torch.tanh(x @ W_in.T + b_in + (r * h) @ W_hn.T + b_hn)
    notes = (1 - z_notes) * h + z_notes * n_before                   # the notes' equations, verbatim
    torch_form = (1 - z_torch) * n_after + z_torch * h

print("reset_after=False vs the notes:  ", (before(x, h) - notes).abs().max().item())
print("reset_after=True  vs torch.nn's: ", (after(x, h) - torch_form).abs().max().item())
print("the two conventions differ by up to", (before(x, h) - after(x, h)).abs().max().item())

# %%
# The code that computes it is :class:`rnnkit.engine.cells.GRUStep`, one step for both conventions; its docstring:
print(type(after.cell).__doc__)

# %%
# Tested by ``tests/test_cells.py::test_gru_cell_variants_match_docstring_equations`` (both conventions,
# the equations written out) and ``tests/test_layers.py::test_parity_with_torch_float64`` (the default
# against ``torch.nn.GRU``, weights copied).
#
# How far apart over a sequence?
# ------------------------------
# The same parameters run both ways over 50 steps: the outputs drift apart, then stay a bounded distance
# apart. A model trained in one convention is not the other's model, so checkpoints record which.
seq_after = rnnkit.GRU(I, H, batch_first=True)
seq_before = rnnkit.GRU(I, H, batch_first=True, reset_after=False)
seq_before.load_state_dict(seq_after.state_dict())
xs = torch.randn(8, 50, I)
with torch.no_grad():
    gap = (seq_after(xs)[0] - seq_before(xs)[0]).norm(dim=-1).mean(0)      # (T,)
fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
ax.plot(range(1, 51), gap)
ax.set_xlabel("time step t")
ax.set_ylabel("mean ||h_t(after) - h_t(before)||")
ax.set_title("GRU: reset after vs reset before, same parameters")

# %%
# Speed: the notes' form runs on rnnkit's engine, the torch form on PyTorch's kernel where it is faster;
# see :doc:`/speed`.
