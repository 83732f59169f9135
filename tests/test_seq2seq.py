"""The encoder-decoder against references: padding is invisible (attention weights, loss), the attention
scores by hand, beam search with K=1 is greedy, beam search never scores below greedy, and a beam as
wide as the hypothesis space finds the brute-force best."""
import itertools

import pytest
import torch

from rnnkit.data.parallel import EOS_ID, PAD_ID
from rnnkit.models import make_rnn
from rnnkit.models.attention import Attention
from rnnkit.models.recurrent import rnn_output_size
from rnnkit.models.seq2seq import Seq2Seq, beam_search, greedy, sequence_scores
from rnnkit.tasks.translate import TranslateConfig


def model(attention="additive", cell="gru", bidirectional=True, layers=1, src_vocab=11, tgt_vocab=9, seed=0,
          teacher_forcing=1.0):
    torch.manual_seed(seed)
    cfg = TranslateConfig(cell=cell, hidden=10, layers=layers, bidirectional=bidirectional, dropout=0.0)
    encoder = make_rnn(cfg, 6)
    decoder = make_rnn(cfg, 6 + rnn_output_size(encoder), bidirectional=False)
    return Seq2Seq(encoder, decoder, src_vocab, tgt_vocab, 6, attention, 0.0, teacher_forcing).eval()


def batch(seed=1, B=4, vocab=11):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 8, (B,), generator=g)
    src = torch.randint(4, vocab, (B, int(lengths.max())), generator=g)
    src = src.masked_fill(torch.arange(src.shape[1]) >= lengths[:, None], PAD_ID)
    return src, lengths


KINDS = [("additive", "gru", True, 1), ("general", "lstm", True, 2), ("dot", "rnn", False, 1),
         ("none", "lstm", False, 2)]


def test_a_bidirectional_decoder_is_refused():
    cfg = TranslateConfig(hidden=8)
    encoder = make_rnn(cfg, 4)
    with pytest.raises(ValueError, match="cannot be bidirectional"):
        Seq2Seq(encoder, make_rnn(cfg, 4 + 16, bidirectional=True), 5, 5, 4)


def test_additive_and_general_scores_by_hand_and_padding_gets_no_weight():
    torch.manual_seed(0)
    q, memory = torch.randn(2, 5), torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    for kind in ("additive", "general"):
        att = Attention(kind, 5, 3)
        context, w = att(q, att.keys(memory), memory, mask)
        for b in range(2):
            n = int(mask[b].sum())
            if kind == "additive":
                scores = torch.stack([att.v.weight[0] @ torch.tanh(att.query.weight @ q[b] + att.key.weight @ memory[b, s]
                                                                   + att.key.bias) for s in range(n)])
            else:
                scores = torch.stack([q[b] @ (att.key.weight @ memory[b, s]) for s in range(n)])
            expected = scores.softmax(0)
            assert torch.allclose(w[b, :n], expected, atol=1e-6) and (w[b, n:] == 0).all()
            assert torch.allclose(context[b], expected @ memory[b, :n], atol=1e-6)


@pytest.mark.parametrize("kind,cell,bi,layers", KINDS)
def test_padding_changes_nothing_a_sentence_alone_gives(kind, cell, bi, layers):
    """Each sentence decoded and scored in a padded batch == the same sentence alone (loss included)."""
    net, (src, lengths) = model(kind, cell, bi, layers), batch()
    tgt = torch.tensor([[5, 6, EOS_ID, PAD_ID], [7, EOS_ID, PAD_ID, PAD_ID], [4, 4, 4, EOS_ID], [EOS_ID, 0, 0, 0]])
    ids, _, weights = greedy(net, src, lengths, 6)
    logits, loss = net((src, lengths), tgt)
    total, count = 0.0, 0
    for b in range(4):
        n, m = int(lengths[b]), int((tgt[b] != PAD_ID).sum())
        alone, _, w_alone = greedy(net, src[b:b + 1, :n], lengths[b:b + 1], 6)
        assert alone[0].tolist() == ids[b, :alone.shape[1]].tolist()
        if kind != "none":
            assert (weights[b, :, n:] == 0).all()
            assert torch.allclose(weights[b, :w_alone.shape[1], :n], w_alone[0], atol=1e-5)
        logits_alone, loss_alone = net((src[b:b + 1, :n], lengths[b:b + 1]), tgt[b:b + 1, :m])
        assert torch.allclose(logits[b, :m], logits_alone[0], atol=1e-5)
        total, count = total + loss_alone.item() * m, count + m
    assert loss.item() == pytest.approx(total / count, rel=1e-5)  # the mean over real tokens only


def test_teacher_forcing_zero_feeds_back_the_models_own_predictions():
    net, (src, lengths) = model(teacher_forcing=0.0), batch()
    ids, _, _ = greedy(net, src, lengths, 5)
    net.train()  # no dropout in this model: training mode differs only in the teacher forcing
    logits, _ = net((src, lengths), torch.full((4, 5), 4))
    own = logits.argmax(-1)
    for b in range(4):
        n = ids.shape[1] if EOS_ID not in ids[b] else ids[b].tolist().index(EOS_ID) + 1
        assert own[b, :n].tolist() == ids[b, :n].tolist()


@pytest.mark.parametrize("kind,cell,bi,layers", KINDS)
def test_beam_of_one_is_greedy_and_a_wider_beam_never_scores_lower(kind, cell, bi, layers):
    net, (src, lengths) = model(kind, cell, bi, layers, seed=3), batch(seed=4, B=6)
    ids, greedy_scores, _ = greedy(net, src, lengths, 8)
    beam_ids, beam_scores = beam_search(net, src, lengths, 1, 8)
    assert beam_ids.tolist() == ids.tolist()
    assert torch.allclose(beam_scores, greedy_scores, atol=1e-5)
    assert torch.allclose(sequence_scores(net, src, lengths, ids), greedy_scores, atol=1e-5)
    wide_ids, wide_scores = beam_search(net, src, lengths, 4, 8, alpha=0.0)
    assert torch.allclose(sequence_scores(net, src, lengths, wide_ids), wide_scores, atol=1e-5)
    assert (wide_scores >= greedy_scores - 1e-5).all()


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_a_beam_as_wide_as_every_hypothesis_finds_the_brute_force_best(alpha):
    V, max_len = 5, 3
    net, (src, lengths) = model("general", "lstm", tgt_vocab=V, seed=5), batch(seed=6, B=2)
    hyps = []  # every output: ends at its first </s>, or runs max_len tokens without one
    for n in range(1, max_len + 1):
        for seq in itertools.product(range(V), repeat=n):
            if (EOS_ID in seq[:-1]) or (n < max_len and seq[-1] != EOS_ID):
                continue
            hyps.append(list(seq) + [PAD_ID] * (max_len - n))
    hyps_t = torch.tensor(hyps)
    ids, scores = beam_search(net, src, lengths, V ** max_len, max_len, alpha)
    for b in range(2):
        all_scores = sequence_scores(net, src[b:b + 1].expand(len(hyps), -1), lengths[b:b + 1].expand(len(hyps)), hyps_t)
        n_tokens = torch.tensor([h.index(EOS_ID) + 1 if EOS_ID in h else max_len for h in hyps], dtype=torch.float)
        best = int((all_scores / n_tokens ** alpha).argmax())
        assert ids[b].tolist() + [PAD_ID] * (max_len - ids.shape[1]) == hyps[best]
        assert scores[b].item() == pytest.approx(all_scores[best].item(), abs=1e-5)
