"""The notes' encoder-decoder: an encoder RNN reads the source, its final states (through a bridge) start a
unidirectional decoder RNN that writes the target one token at a time, looking back at every source
position through attention (or, with attention "none", at one fixed context vector: the encoder's final
output). Greedy and batched beam-search decoding, and the model's score of given translations."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.parallel import BOS_ID, EOS_ID, PAD_ID
from .attention import Attention
from .recurrent import rnn_output_size


@dataclass
class Memory:
    """What the decoder reads of the encoded source: outputs (B, S, M), attention keys (B, S, K),
    mask (B, S) True at real tokens, and the fixed context (B, M) used without attention."""

    outputs: Tensor
    keys: Tensor | None
    mask: Tensor
    summary: Tensor

    def select(self, rows: Tensor) -> "Memory":
        return Memory(self.outputs[rows], None if self.keys is None else self.keys[rows], self.mask[rows],
                      self.summary[rows])


class Seq2Seq(nn.Module):
    """inputs (src (B, S) ids, src_lengths (B,)); targets (B, T) ids ending in </s>, <pad> after it.

    With targets, forward returns (logits (B, T, V), loss): the mean cross-entropy over the target tokens,
    padding ignored; the decoder reads <s> then the targets (teacher forcing), or in training, with
    probability 1 - teacher_forcing per step, its own previous prediction. Without targets it decodes
    greedily and returns (ids (B, T'), None).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, src_vocab: int, tgt_vocab: int, embedding: int,
                 attention: str = "additive", dropout: float = 0.0, teacher_forcing: float = 1.0):
        super().__init__()
        if decoder.bidirectional:
            raise ValueError("the decoder writes the target left to right, each token from the ones before it: "
                             "it cannot be bidirectional (the encoder can)")
        if encoder.num_layers != decoder.num_layers:
            raise ValueError(f"the bridge maps each encoder layer's final state to a decoder layer: layers must "
                             f"match; got {encoder.num_layers} and {decoder.num_layers}")
        memory, hidden = rnn_output_size(encoder), rnn_output_size(decoder)
        if decoder.input_size != embedding + memory:
            raise ValueError(f"the decoder reads a target embedding and a context: its input size must be "
                             f"{embedding} + {memory}; got {decoder.input_size}")
        self.encoder, self.decoder = encoder, decoder
        self.src_embed, self.tgt_embed = nn.Embedding(src_vocab, embedding), nn.Embedding(tgt_vocab, embedding)
        D = 2 if encoder.bidirectional else 1
        self.bridge = nn.ModuleList(nn.Linear(D * size, size) for size in encoder.cell.state_sizes())
        self.attention = None if attention == "none" else Attention(attention, hidden, memory)
        self.combine = nn.Linear(hidden + memory + embedding, hidden)  # Bahdanau's deep output
        self.head = nn.Linear(hidden, tgt_vocab)
        self.drop, self.teacher_forcing = nn.Dropout(dropout), teacher_forcing

    # -- encoding -----------------------------------------------------------------------------
    def encode(self, src: Tensor, lengths: Tensor):
        """-> (Memory, the decoder's initial state in its layers' layout)."""
        outputs, final = self.encoder(self.drop(self.src_embed(src)), lengths=lengths)   # (B, S, M)
        states = final if isinstance(final, tuple) else (final,)
        L, D = self.encoder.num_layers, 2 if self.encoder.bidirectional else 1
        bridged = []
        for i, (s, bridge) in enumerate(zip(states, self.bridge)):
            # (L*D, B, size) -> (L, B, D*size): layer l's directions side by side (index = l*D + d)
            s = s.view(L, D, *s.shape[1:]).permute(0, 2, 1, 3).flatten(2)
            bridged.append(torch.tanh(bridge(s)) if i == 0 else bridge(s))  # h in (-1, 1); an LSTM's c is free
        state = tuple(bridged) if isinstance(final, tuple) else bridged[0]
        mask = torch.arange(src.shape[1], device=src.device) < lengths.to(src.device).unsqueeze(1)
        top = states[0][-D:]                                                              # (D, B, P)
        summary = top.permute(1, 0, 2).flatten(1)                                         # (B, D*P)
        keys = None if self.attention is None else self.attention.keys(outputs)
        return Memory(outputs, keys, mask, summary), state

    # -- one decoder step -------------------------------------------------------------------------
    def step(self, embedded: Tensor, state, memory: Memory):
        """embedded (B, E) previous token's embedding -> (logits (B, V), state, attention weights (B, S) or None).

        The context is attended with the state before this step (Bahdanau), and is input to the
        recurrence and to the output layer."""
        weights = None
        if self.attention is None:
            context = memory.summary
        else:
            query = (state[0] if isinstance(state, tuple) else state)[-1]                 # (B, H) top layer
            context, weights = self.attention(query, memory.keys, memory.outputs, memory.mask)
        output, state = self.decoder.step(torch.cat([embedded, context], 1), state)      # (B, H)
        hidden = torch.tanh(self.combine(torch.cat([output, context, embedded], 1)))
        return self.head(self.drop(hidden)), state, weights

    def forward(self, inputs, targets: Tensor | None = None):
        src, lengths = inputs
        if targets is None:
            ids, _, _ = greedy(self, src, lengths, max_length(src))
            return ids, None
        memory, state = self.encode(src, lengths)
        B, T = targets.shape
        previous = torch.cat([targets.new_full((B, 1), BOS_ID), targets[:, :-1]], 1)     # (B, T)
        embedded = self.drop(self.tgt_embed(previous))                                   # (B, T, E)
        logits = []
        for t in range(T):
            x = embedded[:, t]
            if t > 0 and self.training and self.teacher_forcing < 1 and torch.rand(()) >= self.teacher_forcing:
                x = self.drop(self.tgt_embed(logits[-1].argmax(-1)))                    # its own prediction
            out, state, _ = self.step(x, state, memory)
            logits.append(out)
        logits = torch.stack(logits, 1)                                                   # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD_ID)
        return logits, loss


def max_length(src: Tensor) -> int:
    """The default decoding limit: twice the longest source plus 10 tokens."""
    return 2 * src.shape[1] + 10


def _select_state(state, rows: Tensor):
    return tuple(s[:, rows] for s in state) if isinstance(state, tuple) else state[:, rows]


@torch.no_grad()
def greedy(model: Seq2Seq, src: Tensor, lengths: Tensor, max_len: int):
    """The most likely next token at each step, until </s> or max_len tokens.

    Returns ids (B, T') (<pad> after </s>), the log-probability of each hypothesis (B,) and the
    attention weights (B, T', S) (zeros without attention)."""
    memory, state = model.encode(src, lengths)
    B = src.shape[0]
    token = src.new_full((B,), BOS_ID)
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    ids, scores, weights = [], src.new_zeros(B, dtype=torch.float), []
    for _ in range(max_len):
        logits, state, w = model.step(model.tgt_embed(token), state, memory)
        logp = logits.log_softmax(-1)
        token = logp.argmax(-1)
        scores += torch.where(done, 0.0, logp.gather(1, token[:, None]).squeeze(1))
        token = token.masked_fill(done, PAD_ID)
        ids.append(token)
        weights.append(torch.zeros_like(memory.mask, dtype=logp.dtype) if w is None else w.masked_fill(done[:, None], 0))
        done |= token == EOS_ID
        if done.all():
            break
    return torch.stack(ids, 1), scores, torch.stack(weights, 1)


@torch.no_grad()
def beam_search(model: Seq2Seq, src: Tensor, lengths: Tensor, beam: int, max_len: int, alpha: float = 1.0):
    """Batched beam search with `beam` hypotheses per sentence.

    Hypotheses are ranked by their summed log-probability while searching; a finished one (it wrote
    </s>) stays in the beam unchanged. At the end each sentence's best is the one with the highest
    length-normalised score, log p / length**alpha (alpha 0: no normalisation; the length counts </s>).
    Returns ids (B, T') (<pad> after </s>) and the best hypotheses' summed log-probabilities (B,).
    """
    if beam < 1:
        raise ValueError(f"the beam size must be >= 1; got {beam}")
    B, K = src.shape[0], beam
    memory, state = model.encode(src, lengths)
    rows = torch.arange(B, device=src.device).repeat_interleave(K)                       # (B*K,)
    memory, state = memory.select(rows), _select_state(state, rows)
    scores = torch.full((B, K), float("-inf"), device=src.device)
    scores[:, 0] = 0.0                                                                    # one live start each
    token = src.new_full((B * K,), BOS_ID)
    done = torch.zeros(B * K, dtype=torch.bool, device=src.device)
    length = torch.zeros(B * K, device=src.device)
    hyps = src.new_zeros(B * K, 0)
    for _ in range(max_len):
        logits, state, _ = model.step(model.tgt_embed(token), state, memory)
        logp = logits.log_softmax(-1)                                                     # (B*K, V)
        V = logp.shape[1]
        # a finished hypothesis has one continuation, <pad>, which costs nothing
        finished_row = torch.full_like(logp[0], float("-inf"))
        finished_row[PAD_ID] = 0.0
        logp = torch.where(done[:, None], finished_row, logp)
        candidates = (scores.view(-1, 1) + logp).view(B, K * V)
        scores, index = candidates.topk(K, dim=1)                                         # (B, K)
        parent = (torch.arange(B, device=src.device)[:, None] * K + index // V).view(-1)
        token = (index % V).view(-1)
        state = _select_state(state, parent)
        hyps = torch.cat([hyps[parent], token[:, None]], 1)
        length = length[parent] + (~done[parent]).float()
        done = done[parent] | (token == EOS_ID)
        if done.all():
            break
    normalised = (scores.view(-1) / length.clamp(min=1) ** alpha).view(B, K)
    best = normalised.argmax(1) + torch.arange(B, device=src.device) * K
    return hyps[best], scores.view(-1)[best]


@torch.no_grad()
def sequence_scores(model: Seq2Seq, src: Tensor, lengths: Tensor, hyps: Tensor) -> Tensor:
    """The model's log-probability of each hypothesis (B, T) up to and including its first </s> (all T
    tokens if it has none): a teacher-forced pass, independent of the decoders above."""
    was_training = model.training
    model.eval()
    try:
        logits, _ = model((src, lengths), hyps)
    finally:
        model.train(was_training)
    logp = logits.log_softmax(-1).gather(2, hyps.unsqueeze(2)).squeeze(2)                # (B, T)
    before_eos = (hyps == EOS_ID).long().cumsum(1) - (hyps == EOS_ID).long() == 0          # up to the first </s>
    return (logp * before_eos).sum(1)
