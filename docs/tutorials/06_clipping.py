r"""
Gradient clipping by norm
=========================

An exploding gradient is rare and violent: one step of size lr·‖g‖ with a huge
‖g‖ can undo everything learnt so far. The notes' remedy caps the length of the step and
keeps its direction. With g all the gradients as one vector and a threshold τ:

.. math::

    k = \frac{\lVert g \rVert}{\tau}, \qquad g \leftarrow \frac{g}{k} \quad \text{if } k > 1

so that afterwards ‖g‖ = τ; when k ≤ 1 nothing changes.
``rnnkit train --clip-norm τ`` does this at every step and logs ‖g‖ (before clipping)
and k.
"""

# %%
# k, by hand
# ----------
import numpy as np
import torch

import rnnkit
from rnnkit.analysis.plots import plot_norm_distribution
from rnnkit.data.synthetic import adding_problem
from rnnkit.models.regressor import SequenceRegressor
from rnnkit.reference import clip_grad_norm

torch.manual_seed(0)
model = SequenceRegressor(rnnkit.RNN(2, 16, batch_first=True))
with torch.no_grad():
    model.rnn.weight_hh_l0.mul_(4.0)                 # a recurrent matrix far above 1: gradients explode
x, y = adding_problem(64, 30, seed=0)
_, loss = model(x, y)
loss.backward()
g = torch.cat([p.grad.flatten() for p in model.parameters()])
tau = 1.0
k = g.norm() / tau
print(f"||g|| = {g.norm():.2f}, k = ||g|| / tau = {k:.2f}")
clipped = g / k if k > 1 else g
cosine = torch.cosine_similarity(g, clipped, 0)
print(f"after clipping ||g|| = {clipped.norm():.3f}, same direction: cosine {cosine:.6f}")

# %%
# PyTorch's ``clip_grad_norm_`` scales by τ / (‖g‖ + 1e-6), the same up to that
# epsilon, and returns the norm before clipping; the NumPy reference, :func:`rnnkit.reference.clip_grad_norm`,
# is the notes' rule written out:
norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tau)
after = torch.cat([p.grad.flatten() for p in model.parameters()])
print(f"torch: norm before {norm:.2f}, after {after.norm():.6f}")
arrays = [g.numpy().astype(np.float64).copy()]
print(f"rnnkit.reference.clip_grad_norm: norm before {clip_grad_norm(arrays, tau):.2f}, "
      f"after {np.linalg.norm(arrays[0]):.6f}")

# %%
# Tested by ``tests/test_training.py::test_clipping_scales_gradients_to_tau_only_when_k_exceeds_one`` (the
# training stack: scaled to τ only when k > 1, ‖g‖ and k logged at every step) and
# ``tests/test_reference.py::test_clip_grad_norm_matches_torch``.
#
# Over a whole run
# ----------------
# A short training on the adding problem, recording ‖g‖ at every step, once without clipping and once with
# τ = 1. :func:`rnnkit.analysis.plots.plot_norm_distribution` draws the distribution of ‖g‖ and, dashed, of the
# norm of the update actually applied, min(‖g‖, τ): clipping folds the whole tail onto τ (the picture
# ``rnnkit clipping RUN_DIR...`` draws from real runs, :doc:`/recipes/adding`).
x_train, y_train = adding_problem(2048, 25, seed=1)
runs = {}
for label, clip in (("LSTM, no clipping", 0.0), ("LSTM, tau = 1", 1.0)):
    torch.manual_seed(0)
    model = SequenceRegressor(rnnkit.LSTM(2, 32, batch_first=True, forget_bias=1.0))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    norms = []
    for step in range(150):
        rows = torch.randint(0, len(x_train), (64,))
        _, loss = model(x_train[rows], y_train[rows])
        optimiser.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip else float("inf"))))
        optimiser.step()
    runs[label] = (norms, clip)
    share = np.mean(np.array(norms) > clip) if clip else float("nan")
    print(f"{label:18s} median ||g|| {np.median(norms):.3f}, max {max(norms):.2f}"
          + (f", steps clipped {share:.0%}" if clip else ""))
plot_norm_distribution(runs, "clipping.png")
