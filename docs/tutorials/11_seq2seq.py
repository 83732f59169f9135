r"""
Sequence to sequence, with attention
====================================

An encoder RNN reads the source; its final state, through a small "bridge" layer, starts a decoder RNN that
writes the target one token at a time, each from the ones before it (the notes' encoder-decoder). With a
single context vector, the whole source must fit in one state. **Attention** (Bahdanau et al.) lets the
decoder look back at every encoder output :math:`\bar h_s` at every step:

.. math::

    e_{ts} &= v^\top \tanh(W q_t + U \bar h_s) && \text{the score of source position } s \\
    a_{ts} &= \frac{\exp(e_{ts})}{\sum_{s'} \exp(e_{ts'})} && \text{the attention weights (padding gets 0)} \\
    c_t &= \sum_s a_{ts} \bar h_s && \text{the context}

with ``q_t`` the decoder's state; ``c_t`` joins the decoder's input and its output layer.
The task here is the synthetic one the recipe uses for its tests: **reverse a sequence of words**. A model
that has learnt it should attend to the source from the last word back to the first: an anti-diagonal.
The recipe on real translation, Multi30k German to English, is :doc:`/recipes/translate`.
"""

# %%
# Data and vocabulary
# -------------------
import matplotlib.pyplot as plt
import torch

import rnnkit
from rnnkit.analysis.attention import plot_attention
from rnnkit.data.parallel import BOS, EOS, EOS_ID, PAD, UNK, pad, reverse_pairs
from rnnkit.models.seq2seq import Seq2Seq, greedy

pairs = reverse_pairs(3000, seed=0, vocab=12, min_len=3, max_len=8)
words = [PAD, UNK, BOS, EOS] + sorted({w for src, _ in pairs for w in src.split()})
index = {w: i for i, w in enumerate(words)}


def encode(line):
    return torch.tensor([index[w] for w in line.split()] + [EOS_ID])


print(pairs[0], "->", encode(pairs[0][0]).tolist())

# %%
# The model
# ---------
# A bidirectional GRU encoder, a GRU decoder that reads the previous token's embedding and the context,
# and additive attention (:class:`rnnkit.models.seq2seq.Seq2Seq`; the score is
# :class:`rnnkit.models.attention.Attention`). The decoder must be unidirectional: it is autoregressive.
torch.manual_seed(0)
E, H = 32, 64
encoder = rnnkit.GRU(E, H, batch_first=True, bidirectional=True)
decoder = rnnkit.GRU(E + 2 * H, H, batch_first=True)
model = Seq2Seq(encoder, decoder, len(words), len(words), E, attention="additive")
optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
losses = []
for epoch in range(3):
    for batch in torch.randperm(len(pairs)).split(64):
        src, lengths = pad([encode(pairs[i][0]) for i in batch])
        tgt, _ = pad([encode(pairs[i][1]) for i in batch])
        _, loss = model((src, lengths), tgt)                  # teacher forcing
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        losses.append(loss.item())
print(f"{len(losses)} steps, loss {losses[0]:.2f} -> {sum(losses[-10:]) / 10:.3f}")

# %%
# Greedy decoding and the attention it used
# -----------------------------------------
# :func:`rnnkit.models.seq2seq.greedy` writes the most likely token at each step until ``</s>`` and returns
# the attention weights; :func:`rnnkit.analysis.attention.plot_attention` draws them as
# ``rnnkit train translate`` does (one row per output token, one column per source token).
test = reverse_pairs(200, seed=1, vocab=12, min_len=3, max_len=8)
src, lengths = pad([encode(s) for s, _ in test])
model.eval()
ids, _, weights = greedy(model, src, lengths, max_len=12)
decoded = [" ".join(words[i] for i in row.tolist() if words[i] not in (PAD, EOS)) for row in ids]
exact = sum(d == t for d, (_, t) in zip(decoded, test)) / len(test)
print(f"exact match on 200 new sequences: {exact:.0%}")
for (s, t), d in list(zip(test, decoded))[:3]:
    print(f"  {s!r:28} -> {d!r}")
examples = []
for i in range(3):
    source = test[i][0].split() + [EOS]
    output = decoded[i].split() + [EOS]
    examples.append((source, output, weights[i, :len(output), :len(source)]))
plot_attention(examples, "attention.png", title="attention while reversing")

# %%
# Without attention the decoder sees only the encoder's final state; the recipe's table on Multi30k compares
# the two (BLEU 15.7 without, 34.7 with, beam 5). Tested by
# ``tests/test_seq2seq.py::test_additive_and_general_scores_by_hand_and_padding_gets_no_weight`` (the scores
# written out; padding gets no weight) and
# ``tests/test_seq2seq.py::test_beam_of_one_is_greedy_and_a_wider_beam_never_scores_lower``.
