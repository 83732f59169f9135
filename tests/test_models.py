"""Task models: readouts against a per-sequence loop, the classifier against a hand-built torch.nn one."""
import pytest
import torch
import torch.nn.functional as F

from rnnkit.models import SequenceClassifier, make_rnn, readout, rnn_output_size
from rnnkit.training.config import RNNConfig


@pytest.mark.parametrize("how", ["last", "mean", "max"])
def test_readout_with_lengths_equals_each_sequence_alone(how):
    out = torch.randn(5, 7, 3)
    lengths = torch.tensor([7, 1, 4, 0, 6])
    pooled = readout(out, how, lengths)
    for b, n in enumerate(lengths.tolist()):
        expected = torch.zeros(3) if n == 0 else readout(out[b:b + 1, :n], how)[0]
        assert torch.equal(pooled[b], expected)


def test_readout_without_lengths():
    out = torch.randn(2, 4, 3)
    assert torch.equal(readout(out, "last"), out[:, -1])
    assert torch.allclose(readout(out, "mean"), out.mean(1))
    assert torch.equal(readout(out, "max"), out.max(1).values)
    with pytest.raises(ValueError, match="readout must be one of .*'first'"):
        readout(out, "first", torch.tensor([1, 2]))


def test_bidirectional_last_step_holds_forward_final_and_backward_first_output():
    """The notes' point: at the last step a BiLSTM's backward half has read one row only."""
    rnn = make_rnn(RNNConfig(hidden=6, bidirectional=True), 4)
    x = torch.randn(3, 9, 4)
    out, (h_n, _) = rnn(x)
    last = readout(out, "last")
    assert torch.equal(last[:, :6], h_n[0])             # forward direction: final state
    backward_one_step, _ = rnn(x[:, -1:])               # backward direction after one step
    assert torch.allclose(last[:, 6:], backward_one_step[:, 0, 6:], atol=1e-6)


def test_classifier_matches_torch_nn_with_copied_weights():
    cfg = RNNConfig(hidden=8, layers=2, bidirectional=True)
    model = SequenceClassifier(make_rnn(cfg, 5), 4, "last")
    ref = torch.nn.LSTM(5, 8, 2, batch_first=True, bidirectional=True)
    ref.load_state_dict(model.rnn.state_dict())
    x, y = torch.randn(6, 10, 5), torch.randint(0, 4, (6,))
    logits, loss = model(x, y)
    expected = model.head(ref(x)[0][:, -1])
    assert torch.allclose(logits, expected, atol=1e-6)
    assert torch.allclose(loss, F.cross_entropy(expected, y))
    assert model(x)[1] is None


def test_classifier_with_lengths_ignores_padding():
    model = SequenceClassifier(make_rnn(RNNConfig(cell="gru", hidden=8, bidirectional=True), 3), 2, "mean")
    x = torch.randn(2, 6, 3)
    lengths = torch.tensor([6, 3])
    padded = x.clone()
    padded[1, 3:] = 99.0
    assert torch.equal(model((x, lengths))[0], model((padded, lengths))[0])
    alone = model(x[1:2, :3])[0]
    assert torch.allclose(model((x, lengths))[0][1], alone[0], atol=1e-6)


@pytest.mark.parametrize("cfg, expected", [
    (RNNConfig(cell="rnn", activation="softsign"), "RNNStep"),
    (RNNConfig(cell="gru", reset_after=False), "GRUStep"),
    (RNNConfig(peephole=True, coupled=True, layer_norm=True, forget_bias=1.0), "LSTMStep"),
])
def test_make_rnn_passes_the_variants(cfg, expected):
    rnn = make_rnn(cfg, 3)
    assert type(rnn.cell).__name__ == expected
    assert rnn.batch_first and rnn_output_size(rnn) == cfg.hidden


def test_make_rnn_variant_flags_reach_the_layer():
    lstm = make_rnn(RNNConfig(peephole=True, coupled=True, forget_bias=1.5, proj_size=4, layers=2, dropout=0.3), 3)
    assert lstm.cell.peephole and lstm.cell.coupled and lstm.proj_size == 4 and lstm.dropout == 0.3
    assert rnn_output_size(lstm) == 4
    gru = make_rnn(RNNConfig(cell="gru", reset_after=False, bidirectional=True), 3)
    assert not gru.cell.reset_after and rnn_output_size(gru) == 2 * 128


def test_final_readout_is_each_directions_final_state():
    rnn = make_rnn(RNNConfig(cell="gru", hidden=5, bidirectional=True), 3)
    x, lengths = torch.randn(4, 7, 3), torch.tensor([7, 2, 5, 0])
    out, h_n = rnn(x, lengths=lengths)
    final = readout(out, "final", lengths, directions=2)
    assert torch.allclose(final[:3], torch.cat([h_n[0], h_n[1]], -1)[:3], atol=1e-6)
    assert torch.equal(final[3], torch.zeros(10))
    assert torch.allclose(readout(out, "final", directions=2)[0], torch.cat([h_n[0], h_n[1]], -1)[0], atol=1e-6)
    assert torch.equal(readout(out, "final", lengths, 1), readout(out, "last", lengths))
