r"""
BPTT and vanishing or exploding gradients
=========================================

Unrolled over time an RNN is a deep network whose layers share W_hh. For a loss at the last
step, the chain rule carries the gradient back one step at a time (the notes' recursion, for tanh):

.. math::

    \frac{\partial L}{\partial h_t} = W_{hh}^\top \operatorname{diag}(1 - h_{t+1}^2)\,
    \frac{\partial L}{\partial h_{t+1}}

one factor per step, so over k steps the gradient is multiplied by k Jacobians: it shrinks geometrically
when their norms are below 1 (vanishing) and can grow geometrically when they are above (exploding).
This tutorial measures ‖∂L/∂h_t‖ with
:func:`rnnkit.analysis.gradflow.gradients`, checks the recursion by hand, compares RNN, LSTM and GRU, and
trains on the adding problem, where only a cell whose gradient survives can learn. The derivation, with the
NumPy code beside it, is :doc:`/bptt`.
"""

# %%
# The recursion, checked by hand
# ------------------------------
import matplotlib.pyplot as plt
import torch

import rnnkit
from rnnkit.analysis.gradflow import compare_cells, gradient_norms, gradients
from rnnkit.analysis.plots import plot_gradient_flow
from rnnkit.data.synthetic import adding_problem
from rnnkit.models.regressor import SequenceRegressor

torch.manual_seed(0)
rnn = rnnkit.RNN(4, 16, batch_first=True)
x = torch.randn(2, 30, 4)
grads = gradients(rnn, x)                    # dL/dh_t for t = 1..T, each (B, H); L = <h_T, readout>
with torch.no_grad():
    hs, _ = rnn(x)                           # (B, T, H)
worst = 0.0
for t in range(len(grads) - 1):
    recursion = (grads[t + 1] * (1 - hs[:, t + 1] ** 2)) @ rnn.weight_hh_l0   # W_hh^T diag(1 - h^2) g
    worst = max(worst, ((recursion - grads[t]).abs().max() / grads[t].abs().max()).item())
print(f"largest relative difference from the notes' recursion: {worst:.1e}")

# %%
# ``tests/test_analysis_gradflow.py::test_rnn_gradients_follow_the_notes_recursion`` makes the same check,
# and ``tests/test_analysis_gradflow.py::test_gradients_match_finite_differences_of_the_loss_in_h_t``
# checks the LSTM's and GRU's against finite differences. rnnkit's layers compute these gradients with
# their own hand-written backward pass, walking time in reverse (the engine); it is checked against
# autograd through the same loop by ``tests/test_engine.py::test_explicit_bptt_matches_autograd``.
#
# Vanishing: RNN, LSTM and GRU at initialisation
# ----------------------------------------------
# :func:`rnnkit.analysis.gradflow.compare_cells` runs each cell, at torch.nn's initialisation, over the
# same random sequence and returns the gradient norm at every step. The LSTM's forget gate starts near
# sigmoid(0) = 0.5, so it forgets too; with its bias at 3 (gate about 0.95) the additive cell-state path
# carries the gradient back undiminished. The picture is drawn by
# :func:`rnnkit.analysis.plots.plot_gradient_flow`, as ``rnnkit gradflow`` does.
T = 60
curves = compare_cells(["rnn", "lstm", "gru"], length=T, hidden=32)
curves.update(compare_cells(["lstm"], length=T, hidden=32, forget_bias=3.0))
for name, norms in curves.items():
    print(f"{name:24s} ||dL/dh_1|| / ||dL/dh_T|| = {norms[0] / norms[-1]:.1e}")
plot_gradient_flow(curves, "gradflow_init.png", title=f"gradient flow at initialisation, T = {T}, H = 32")

# %%
# Exploding
# ---------
# The size of W_hh decides. Scale an orthogonal recurrent matrix by 0.5, 1 and 2: each step back
# multiplies the gradient by about the scale (times the derivative of tanh, at most 1), so it halves,
# holds, or grows until the units saturate.
fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
q, _ = torch.linalg.qr(torch.randn(16, 16))
for scale in (0.5, 1.0, 2.0):
    layer = rnnkit.RNN(4, 16, batch_first=True)
    with torch.no_grad():
        layer.weight_hh_l0.copy_(scale * q)
        layer.weight_ih_l0.mul_(0.1)
    norms = gradient_norms(layer, 0.1 * torch.randn(8, 40, 4))
    ax.plot(range(1, 41), norms, label=f"W_hh = {scale} Q")
    print(f"scale {scale}: ||dL/dh_1|| / ||dL/dh_T|| = {(norms[0] / norms[-1]).item():.1e}")
ax.set_yscale("log")
ax.set_xlabel("time step t (the loss is at the last step)")
ax.set_ylabel("||dL/dh_t||")
ax.set_title("a recurrent matrix above 1 explodes, below 1 vanishes")
ax.legend()

# %%
# The adding problem
# ------------------
# Hochreiter and Schmidhuber's test of long memory: at each of T steps the input is a random value and a
# mark; two values are marked, one in each half, and the target is their sum. Always answering the mean
# (1.0) scores an MSE of 1/6 = 0.167; to do better the model must carry a marked value across up to T
# steps. :func:`rnnkit.data.synthetic.adding_problem` makes the data and
# :class:`rnnkit.models.regressor.SequenceRegressor` is the many-to-one model with an identity output and
# the squared error. A short run at T = 25 (the recipe, :doc:`/recipes/adding`, trains at T = 100 for
# minutes). The LSTM starts with its forget-gate bias at 1, common practice (see :doc:`04_lstm`):
T, steps = 25, 200
x_train, y_train = adding_problem(4096, T, seed=0)
x_test, y_test = adding_problem(512, T, seed=1)
cells = {"rnn": lambda: rnnkit.RNN(2, 32, batch_first=True),
         "lstm (forget bias 1)": lambda: rnnkit.LSTM(2, 32, batch_first=True, forget_bias=1.0),
         "gru": lambda: rnnkit.GRU(2, 32, batch_first=True)}
history, models = {}, {}
for name, make in cells.items():
    torch.manual_seed(0)
    model = SequenceRegressor(make())
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    history[name] = []
    for step in range(steps):
        rows = torch.randint(0, len(x_train), (128,))
        _, loss = model(x_train[rows], y_train[rows])
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        history[name].append(loss.item())
    with torch.no_grad():
        test_mse = model(x_test, y_test)[1].item()
    models[name] = model
    print(f"{name}: test MSE {test_mse:.4f}  (the mean scores 0.167)")

fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
for name, losses in history.items():
    smooth = torch.tensor(losses).unfold(0, 10, 1).mean(1)
    ax.plot(smooth, label=name)
ax.axhline(1 / 6, color="grey", linestyle=":", label="predict the mean")
ax.set_yscale("log")
ax.set_xlabel("training step")
ax.set_ylabel("training MSE (mean of 10 steps)")
ax.set_title(f"the adding problem, T = {T}")
ax.legend()

# %%
# After training, the same measurement on the task's own sequences shows why: the gradient reaches the
# early steps through the trained gated cells, and still fades through the RNN.
trained = {name: gradient_norms(model.rnn, x_test[:64]).tolist() for name, model in models.items()}
plot_gradient_flow(trained, "gradflow_trained.png",
                   title=f"gradient flow after training on the adding problem, T = {T}")
