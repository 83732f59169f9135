r"""
Dropout on the vertical connections only
========================================

Dropout zeroes each unit with probability p during training (and scales the rest by 1/(1 - p)). On a
recurrent network the notes follow Zaremba et al. (2014): apply it to the **vertical** connections only,
from one layer to the next (and into the output layer), never to the **horizontal** ones,
``h_{t-1} -> h_t``, where a fresh mask at every step would erase the memory the network is built to
keep. In a stack of layers, with D the dropout operator and layer 0's output the input x_t, the step of layer l applies dropout to its input only:

.. math::

    h^l_t = f\big(D(h^{l-1}_t),\ h^l_{t-1}\big)

``dropout=p`` on :class:`rnnkit.LSTM`,
:class:`rnnkit.GRU` and :class:`rnnkit.RNN` is exactly that, as in torch.nn: between layers, not after the
last one (the task models add their own before the output layer).
"""

# %%
# Which connections are dropped
# -----------------------------
import matplotlib.pyplot as plt
import torch

import rnnkit

fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
layers, steps = 3, 5
for l in range(layers):
    for t in range(steps):
        ax.add_patch(plt.Rectangle((t - 0.2, l - 0.2), 0.4, 0.4, color="tab:blue"))
        if t + 1 < steps:
            ax.annotate("", (t + 0.8, l), (t + 0.2, l), arrowprops={"arrowstyle": "->", "color": "black"})
        if l + 1 < layers:
            ax.annotate("", (t, l + 0.8), (t, l + 0.2),
                        arrowprops={"arrowstyle": "->", "color": "tab:red", "linestyle": "--"})
for t in range(steps):
    ax.annotate("", (t, -0.2), (t, -0.8), arrowprops={"arrowstyle": "->", "color": "grey"})
ax.set_xlim(-0.6, steps - 0.4)
ax.set_ylim(-1, layers - 0.4)
ax.set_xticks(range(steps), [f"t={t + 1}" for t in range(steps)])
ax.set_yticks(range(layers), [f"layer {l + 1}" for l in range(layers)])
ax.set_title("dropout (red, dashed) between layers; the recurrence (black) is never dropped")

# %%
# The stack equals single layers with dropout between them
# --------------------------------------------------------
# A two-layer LSTM with ``dropout=0.5``, in training mode, gives exactly what two one-layer LSTMs with the
# same weights give with ``torch.nn.functional.dropout`` on the first one's output, drawing the same
# random mask from the same seed. Nothing is dropped inside either layer.
torch.manual_seed(0)
I, H = 3, 6
stack = rnnkit.LSTM(I, H, num_layers=2, dropout=0.5, batch_first=True)
first, second = rnnkit.LSTM(I, H, batch_first=True), rnnkit.LSTM(H, H, batch_first=True)
with torch.no_grad():
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        getattr(first, f"{name}_l0").copy_(getattr(stack, f"{name}_l0"))
        getattr(second, f"{name}_l0").copy_(getattr(stack, f"{name}_l1"))
x = torch.randn(4, 20, I)
stack.train()
torch.manual_seed(1)
out_stack, _ = stack(x)
torch.manual_seed(1)
middle, _ = first(x)
out_by_hand, _ = second(torch.nn.functional.dropout(middle, 0.5, training=True))
print("stack vs layer, dropout, layer:", (out_stack - out_by_hand).abs().max().item())
print("share of the first layer's outputs dropped:",
      f"{(torch.nn.functional.dropout(middle, 0.5, training=True) == 0).float().mean():.2f}")

# %%
# In evaluation mode dropout is off, and with one layer there is no vertical connection inside the layer
# to drop: rnnkit warns, as torch.nn does.
stack.eval()
with torch.no_grad():
    print("eval is deterministic:", torch.equal(stack(x)[0], stack(x)[0]))
import warnings

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    rnnkit.LSTM(I, H, num_layers=1, dropout=0.5)
print("warning:", caught[0].message)

# %%
# Tested by ``tests/test_layers.py::test_dropout_is_vertical_only`` and
# ``tests/test_layers.py::test_interlayer_dropout_matches_torch_in_training`` (the same masks as
# ``torch.nn.LSTM`` for the same seed).
#
# Recurrent dropout, done safely
# ------------------------------
# rnnkit adds the variational form of Gal and Ghahramani (2016), ``recurrent_dropout=p``: **one** mask per
# sequence, drawn once and reused at every step, on ``h_{t-1}`` as it enters ``W_hh``. The same
# units are silenced throughout a sequence, so the state is not shredded step by step. The two compared,
# by the spread of the outputs over 200 forward passes in training mode:
layer = rnnkit.LSTM(I, H, batch_first=True, recurrent_dropout=0.3)
layer.train()
with torch.no_grad():
    runs = torch.stack([layer(x[:1])[0][0] for _ in range(200)])        # (200, T, H)
    layer.eval()
    clean = layer(x[:1])[0][0]
spread = (runs - clean).abs().mean(dim=(0, 2))
fig, ax = plt.subplots(figsize=(7, 2.8), layout="constrained")
ax.plot(range(1, 21), spread)
ax.set_xlabel("time step t")
ax.set_ylabel("mean |h_t - h_t(eval)|")
ax.set_title("recurrent_dropout=0.3: a bounded, not growing, disturbance")

# %%
# ``tests/test_layers.py::test_recurrent_dropout_is_variational`` checks the one-mask-per-sequence rule.
# The recipes' ``--dropout`` flag acts between layers and before the output layer; ``--recurrent-dropout`` is
# this one (:doc:`/recipes/training`).
