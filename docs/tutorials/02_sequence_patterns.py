r"""
Many-to-one, one-to-many, many-to-many
======================================

The notes sort recurrent models by what goes in and what comes out:

* **many-to-one**: a sequence in, one answer out (classify a review, a digit read row by row):
  :math:`y = \operatorname{softmax}(W_y h_T + b_y)`;
* **one-to-many**: one input, a sequence out (caption an image; here, draw a digit from its label);
* **many-to-many**: an output at every step, :math:`y_t = \operatorname{softmax}(W_y h_t + b_y)`
  (tag every word, predict the next character).

And they separate models that may look at the whole input (a tagger: the input is all there before the
first output) from **autoregressive** ones, whose step t must not see what comes after t because it is
asked to predict it (a language model, a decoder). A bidirectional layer reads the future, so it suits
the first kind and is refused by the second.
"""

# %%
# Many-to-one: a readout of the outputs
# -------------------------------------
# :class:`rnnkit.models.SequenceClassifier` is a recurrent layer, a readout of its outputs and a linear
# layer. The notes' readout is the output at the last step (``"last"``); rnnkit also has each direction's
# final state (``"final"``), and mean or max pooling.
import matplotlib.pyplot as plt
import torch

import rnnkit
from rnnkit.models import SequenceClassifier, readout
from rnnkit.models.generator import RowGenerator
from rnnkit.models.language import CharLM

torch.manual_seed(0)
B, T, I, H = 4, 10, 3, 8
x = torch.randn(B, T, I)
classifier = SequenceClassifier(rnnkit.LSTM(I, H, batch_first=True), outputs=5, how="last")
logits, loss = classifier(x, targets=torch.tensor([0, 1, 2, 3]))
print("many-to-one:", tuple(x.shape), "->", tuple(logits.shape), f" loss {loss.item():.3f}")

# %%
# In a bidirectional layer the last step is not symmetric: the forward half has read the whole sequence,
# the backward half only the last step. ``"final"`` takes the backward half at step 0 instead, where it
# has read everything
# (``tests/test_models.py::test_bidirectional_last_step_holds_forward_final_and_backward_first_output``):
bi = rnnkit.LSTM(I, H, batch_first=True, bidirectional=True)
output, (h_n, _) = bi(x)
last, final = readout(output, "last"), readout(output, "final", directions=2)
assert torch.equal(last[:, :H], h_n[0]) and torch.equal(final[:, H:], h_n[1])
print("'last' holds the backward direction's first output, 'final' its final state:",
      bool(torch.equal(last[:, H:], output[:, -1, H:])), bool(torch.equal(final[:, H:], h_n[1])))

# %%
# Many-to-many and one-to-many
# ----------------------------
# A head applied at every step makes the many-to-many model; a character language model is one
# (:class:`rnnkit.models.language.CharLM`). A one-to-many generator feeds its own output back as the next
# input: :class:`rnnkit.models.generator.RowGenerator` writes an image one row at a time from a label.
lm = CharLM(rnnkit.GRU(16, H, batch_first=True), vocab_size=30, embedding=16)
ids = torch.randint(0, 30, (B, T))
(lm_logits, state), lm_loss = lm(ids, targets=torch.randint(0, 30, (B, T)))
print("many-to-many:", tuple(ids.shape), "->", tuple(lm_logits.shape))

generator = RowGenerator(rnnkit.LSTM(28 + 10, 32, batch_first=True), classes=10, rows=28, width=28)
images, _ = generator.generate(torch.arange(3))
print("one-to-many: 3 labels ->", tuple(images.shape), "(28 rows of 28 pixels each)")

# %%
# Autoregressive or not: who sees the future?
# -------------------------------------------
# Change the input at one step k and watch which outputs move. In a unidirectional layer only the steps
# from k on change: output t depends on inputs 1..t, as an autoregressive model needs. In a bidirectional
# layer every step changes.
k = 6
x2 = x.clone()
x2[:, k] += 1.0
uni = rnnkit.LSTM(I, H, batch_first=True)
changes = {}
for name, layer in {"unidirectional": uni, "bidirectional": bi}.items():
    with torch.no_grad():
        changes[name] = (layer(x2)[0] - layer(x)[0]).abs().amax(dim=(0, 2))   # (T,)
    print(f"{name:15s} outputs changed at steps:", torch.nonzero(changes[name] > 0).flatten().tolist())
assert changes["unidirectional"][:k].eq(0).all()

fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
for name, change in changes.items():
    ax.plot(range(T), change, marker="o", label=name)
ax.axvline(k, color="grey", linestyle=":")
ax.set_xlabel("output step t")
ax.set_ylabel("largest change of the output")
ax.set_title(f"the input at step {k} changed: which outputs move?")
ax.legend()

# %%
# That is why the models that predict their own next input refuse a bidirectional layer, with an error
# saying why (``tests/test_charlm.py::test_bidirectional_is_refused``):
try:
    CharLM(rnnkit.LSTM(16, H, batch_first=True, bidirectional=True), vocab_size=30, embedding=16)
except ValueError as error:
    print("ValueError:", error)

# %%
# The recipes built on these patterns: :doc:`/recipes/mnist` and :doc:`/recipes/sentiment` (many-to-one),
# :doc:`/recipes/pos` (many-to-many), :doc:`/recipes/charlm` (autoregressive), :doc:`/recipes/digits`
# (one-to-many) and :doc:`/recipes/translate` (an encoder that may look ahead, a decoder that may not).
