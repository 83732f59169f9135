r"""
A character-level language model
================================

The notes' character model reads a text one character at a time and predicts the next one at every step
(many-to-many, autoregressive): embedding, a unidirectional LSTM, a linear layer over the vocabulary V:

.. math::

    p(x_{t+1} \mid x_1, \dots, x_t) &= \operatorname{softmax}(W_y h_t + b_y) \\
    L &= -\frac{1}{T} \sum_t \log p(x_{t+1} \mid x_1, \dots, x_t)

in nats per character (a uniform guess scores ln V). A long text is trained with **truncated
BPTT**: cut into B parallel streams, read in windows of k characters; the state at the end of one window
starts the next, detached, so the gradient stops at the window's edge while the memory carries on. Sampling
feeds each drawn character back with the carried state.

The recipe (:doc:`/recipes/charlm`) trains on Python's standard library or tiny Shakespeare for minutes to
an hour; here a paragraph, for a few seconds.
"""

# %%
# Text, vocabulary, streams
# -------------------------
import matplotlib.pyplot as plt
import torch

import rnnkit
from rnnkit.data.text import Vocabulary, streams
from rnnkit.models.language import CharLM, generate

TEXT = (
    "A recurrent network reads a sequence one step at a time. At every step it mixes the new input with its "
    "hidden state, a summary of all it has read so far, and hands that state on to the next step. To learn, "
    "it unrolls the loop through time and sends the error back along the same path. ") * 3
vocab = Vocabulary.from_text(TEXT)
ids = vocab.encode(TEXT)                                  # (N,) character ids
data = streams(ids, 8)                                    # (B=8, N/8): 8 contiguous streams
print(f"{len(TEXT)} characters, V = {len(vocab)}; streams {tuple(data.shape)}; "
      f"a uniform guess scores ln V = {torch.log(torch.tensor(float(len(vocab)))):.3f} nats")

# %%
# Truncated BPTT with the carried state
# -------------------------------------
# :class:`rnnkit.models.language.CharLM` takes ``(ids, state)`` and returns the new state with the logits;
# ``state`` is detached between windows.
torch.manual_seed(0)
model = CharLM(rnnkit.LSTM(32, 128, batch_first=True), vocab_size=len(vocab), embedding=32)
optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
k, losses = 25, []
for epoch in range(30):
    state = None                                          # each pass starts from h_0 = 0
    for start in range(0, data.shape[1] - 1, k):
        x = data[:, start:start + k]
        y = data[:, start + 1:start + k + 1]
        x = x[:, :y.shape[1]]
        (logits, state), loss = model((x, state), targets=y)
        state = tuple(s.detach() for s in state)          # keep the memory, cut the gradient
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimiser.step()
        losses.append(loss.item())
print(f"{len(losses)} windows; loss {losses[0]:.3f} -> {sum(losses[-10:]) / 10:.3f} nats/char")

fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
ax.plot(losses)
ax.axhline(torch.log(torch.tensor(float(len(vocab)))), color="grey", linestyle=":", label="uniform guess")
ax.set_xlabel("window (training step)")
ax.set_ylabel("cross-entropy, nats/char")
ax.legend()

# %%
# Tests of the same: ``tests/test_charlm.py::test_carried_state_equals_one_long_run`` (windows with the
# carried state compute what one long run computes), and
# ``tests/test_charlm.py::test_truncated_bptt_carries_the_state_detached``.
#
# Sampling, one character at a time
# ---------------------------------
# :func:`rnnkit.models.language.generate` reads the prime once, then feeds back each sampled character with
# the carried state (``layer.step``); the prefix is never run again. Temperature 0 is greedy.
prime = vocab.encode("At every ")
for temperature in (0.0, 0.5, 1.0):
    drawn = generate(model, prime, length=120, temperature=temperature,
                     generator=torch.Generator().manual_seed(0))
    print(f"temperature {temperature}: At every {vocab.decode(list(drawn))!r}")

# %%
# ``tests/test_charlm.py::test_streaming_generation_equals_rerunning_the_prefix`` checks that stepping with
# the carried state gives what re-running the whole prefix at every step gives. On a real corpus, with
# ``rnnkit train charlm`` and ``rnnkit sample``, see :doc:`/recipes/charlm`.
