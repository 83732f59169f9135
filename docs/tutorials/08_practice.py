"""
Practice: softsign, optimisers, early stopping, normalised regression
=====================================================================

The notes end their recurrent-network chapter with advice for making training work. Four pieces of it,
each run here on a small problem:

* **softsign** instead of tanh, ``softsign(v) = v / (1 + |v|)``, which saturates
  polynomially rather than exponentially;
* the **optimisers**: SGD, with momentum and Nesterov's variant, RMSprop, Adagrad, Adam;
* **early stopping**: keep the weights of the best validation score, stop when it has not improved for a
  few epochs (the patience);
* for **regression**, normalise the target (zero mean, unit variance on the training data), use an
  identity output and the squared error, and undo the scaling to report errors in the original units.
"""

# %%
# Softsign against tanh
# ---------------------
import copy

import matplotlib.pyplot as plt
import torch

import rnnkit
from rnnkit.models.regressor import SequenceRegressor

v = torch.linspace(-8, 8, 400, requires_grad=True)
fig, axes = plt.subplots(1, 2, figsize=(8, 3), layout="constrained")
for name, fn in (("tanh", torch.tanh), ("softsign", torch.nn.functional.softsign)):
    y = fn(v)
    (dy,) = torch.autograd.grad(y.sum(), v)
    axes[0].plot(v.detach(), y.detach(), label=name)
    axes[1].plot(v.detach(), dy, label=name)
    print(f"{name:8s} derivative at v = 4: {dy[v.detach().sub(4).abs().argmin()]:.4f}")
axes[0].set_title("activation")
axes[1].set_title("derivative")
axes[1].set_yscale("log")
for ax in axes:
    ax.legend()
    ax.set_xlabel("v")

# %%
# At v = 4 tanh's derivative is already 1e-3, softsign's 0.04: a saturated softsign unit still passes some
# gradient. In rnnkit it is ``nonlinearity='softsign'`` on :class:`rnnkit.RNN` and ``activation='softsign'``
# on :class:`rnnkit.LSTM` and :class:`rnnkit.GRU` (``tests/test_cells.py::test_softsign_definition``,
# ``tests/test_cells.py::test_rnn_cell_softsign_matches_equation``).
#
# A regression problem, normalised
# --------------------------------
# Forecast the next value of a noisy sine wave with a large offset and scale (a level near 500, swings of
# 100): the raw target would put the identity output's initial guesses, near 0, hundreds of units away.
# The statistics come from the training part only.
g = torch.Generator().manual_seed(0)
t = torch.arange(1500, dtype=torch.float32)
series = 500 + 100 * torch.sin(t / 15) + 8 * torch.randn(1500, generator=g)
W = 30
windows = series.unfold(0, W + 1, 1)                      # (N, W+1): W inputs, then the target
train, val = windows[:1000], windows[1000:1300]
mean, std = train[:, :W].mean(), train[:, :W].std()


def scaled(part):
    z = (part - mean) / std
    return z[:, :W, None], z[:, W:]                         # (N, W, 1) and (N, 1)


x_train, y_train = scaled(train)
x_val, y_val = scaled(val)
print(f"training statistics: mean {mean:.1f}, std {std:.1f}")

# %%
# The optimisers of the notes
# ---------------------------
# The same model, :class:`rnnkit.models.regressor.SequenceRegressor` over a small GRU (an identity output
# with the MSE loss), trained for 80 steps by each optimiser, each at a learning rate that suits it.
optimisers = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd + momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=3e-3),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=5e-2),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
}
fig, ax = plt.subplots(figsize=(7, 3.4), layout="constrained")
for name, make in optimisers.items():
    torch.manual_seed(0)
    model = SequenceRegressor(rnnkit.GRU(1, 16, batch_first=True))
    optimiser = make(model.parameters())
    losses = []
    for step in range(80):
        rows = torch.randint(0, len(x_train), (64,), generator=g)
        _, loss = model(x_train[rows], y_train[rows])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    ax.plot(torch.tensor(losses).unfold(0, 10, 1).mean(1), label=name)
    print(f"{name:15s} last 10 steps' mean loss {sum(losses[-10:]) / 10:.4f}")
ax.set_yscale("log")
ax.set_xlabel("step")
ax.set_ylabel("training MSE (scaled units)")
ax.set_title("the notes' optimisers on one small problem")
ax.legend(ncol=2)

# %%
# ``rnnkit train`` takes them as ``--optimizer sgd|adam|rmsprop|adagrad`` with ``--momentum``, ``--nesterov``,
# ``--weight-decay`` (L2) and ``--l1`` (``tests/test_training.py::test_optimisers_from_the_notes``).
#
# Early stopping, and errors in the original units
# ------------------------------------------------
# Train epoch by epoch on a small training set (128 windows), score the validation windows after each epoch,
# keep a copy of the best weights and stop after ``patience`` epochs without improvement. The validation
# RMSE is reported in the series' own units: the scaled error times the training std.
torch.manual_seed(0)
model = SequenceRegressor(rnnkit.GRU(1, 32, batch_first=True))
optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
small_x, small_y = x_train[:128], y_train[:128]
best, best_state, patience, waited, curve = float("inf"), None, 4, 0, []
for epoch in range(60):
    for rows in torch.randperm(len(small_x), generator=g).split(32):
        _, loss = model(small_x[rows], small_y[rows])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        val_rmse = model(x_val, y_val)[1].sqrt().item() * std.item()     # original units
    curve.append(val_rmse)
    if val_rmse < best:
        best, best_state, waited = val_rmse, copy.deepcopy(model.state_dict()), 0
    else:
        waited += 1
        if waited >= patience:
            break
model.load_state_dict(best_state)
naive = (val[:, W] - val[:, W - 1]).pow(2).mean().sqrt()
print(f"stopped after epoch {len(curve)}; best validation RMSE {best:.2f} at epoch {curve.index(best) + 1} "
      f"(persistence, the last value: {naive:.2f})")
fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
ax.plot(range(1, len(curve) + 1), curve, marker="o")
ax.axvline(curve.index(best) + 1, color="grey", linestyle=":", label="best epoch: the weights kept")
ax.set_xlabel("epoch")
ax.set_ylabel("validation RMSE (original units)")
ax.legend()

# %%
# ``rnnkit train --patience N`` does this on every task's validation metric
# (``tests/test_training.py::test_early_stopping_ends_the_run_when_validation_stops_improving``), and the
# forecasting recipe scales inputs and targets on the training rows only and reports RMSE and MAE in the
# series' units beside two naive baselines (:doc:`/recipes/forecast`,
# ``tests/test_forecast.py::test_split_is_chronological_and_the_scaler_fits_the_training_rows_only``).
