"""ONNX export of every layer variant, run by onnxruntime against the PyTorch layer.

Each model is exported once (T=5, B=3) and run at other T and B: a graph that unrolled the traced
time loop or baked in the batch size would fail there. The graph must use ONNX's RNN/GRU/LSTM
operator where one expresses the cell, and a Loop over time where none does.
"""
import warnings

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.export import export_onnx, operator_for

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

I, H = 3, 4
TOL = 1e-4

# (name, layer class, keywords, the ONNX op it must export to)
VARIANTS = [
    ("rnn-tanh", rnnkit.RNN, {}, "RNN"),
    ("rnn-relu", rnnkit.RNN, {"nonlinearity": "relu"}, "RNN"),
    ("rnn-softsign", rnnkit.RNN, {"nonlinearity": "softsign"}, "RNN"),
    ("rnn-nobias", rnnkit.RNN, {"bias": False}, "RNN"),
    ("lstm", rnnkit.LSTM, {}, "LSTM"),
    ("lstm-nobias", rnnkit.LSTM, {"bias": False}, "LSTM"),
    ("lstm-peephole", rnnkit.LSTM, {"peephole": True}, "LSTM"),
    ("lstm-coupled", rnnkit.LSTM, {"coupled": True}, "LSTM"),
    ("lstm-coupled-peephole", rnnkit.LSTM, {"coupled": True, "peephole": True}, "LSTM"),
    ("lstm-softsign", rnnkit.LSTM, {"activation": "softsign"}, "LSTM"),
    ("lstm-forget-bias", rnnkit.LSTM, {"forget_bias": 1.0}, "LSTM"),
    ("lstm-recurrent-dropout", rnnkit.LSTM, {"recurrent_dropout": 0.3}, "LSTM"),
    ("lstm-layer-norm", rnnkit.LSTM, {"layer_norm": True}, "Loop"),
    ("lstm-proj", rnnkit.LSTM, {"proj_size": 2}, "Loop"),
    ("lstm-layer-norm-all", rnnkit.LSTM, {"layer_norm": True, "proj_size": 2, "peephole": True,
                                          "coupled": True, "activation": "softsign", "bias": False}, "Loop"),
    ("gru", rnnkit.GRU, {}, "GRU"),
    ("gru-reset-before", rnnkit.GRU, {"reset_after": False}, "GRU"),
    ("gru-softsign", rnnkit.GRU, {"activation": "softsign"}, "GRU"),
    ("gru-recurrent-dropout", rnnkit.GRU, {"recurrent_dropout": 0.3}, "GRU"),
]
STACKS = {"1-layer": {}, "2-layer-bi-batch-first": {"num_layers": 2, "bidirectional": True, "batch_first": True}}


def export(module, inputs, names, outputs, axes, tmp_path):
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python values in the eager pass
        export_onnx(module, inputs, path, names, outputs, axes)
    graph = onnx.load(str(path)).graph
    ops = [node.op_type for node in graph.node]
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), ops


def max_diff(session, feeds, expected):
    got = session.run(None, {k: v.numpy() for k, v in feeds.items()})
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == tuple(e.shape)
    return max((torch.from_numpy(g) - e).abs().max().item() for g, e in zip(got, expected))


def flat(result):
    out, final = result
    return [out, *final] if isinstance(final, tuple) else [out, final]


@pytest.mark.parametrize("with_lengths", [True, False], ids=["lengths", "full"])
@pytest.mark.parametrize("stack", STACKS, ids=list(STACKS))
@pytest.mark.parametrize("name, cls, kwargs, op", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_layer_exports_and_matches_onnxruntime(name, cls, kwargs, op, stack, with_lengths, tmp_path):
    layer = cls(I, H, **kwargs, **STACKS[stack]).eval()
    assert operator_for(layer.cell) == op
    bf = layer.batch_first
    axes = {"input": {0: "batch", 1: "time"} if bf else {0: "time", 1: "batch"}, "output": {0: "batch", 1: "time"}
            if bf else {0: "time", 1: "batch"}}
    outputs = ["output", "h_n", "c_n"] if cls is rnnkit.LSTM else ["output", "h_n"]
    for state in outputs[1:]:
        axes[state] = {1: "batch"}

    def sample(T, B):
        x = torch.randn((B, T, I) if bf else (T, B, I))
        lengths = torch.randint(1, T + 1, (B,))
        lengths[B // 2] = T  # the longest need not come first
        return x, lengths

    x, lengths = sample(5, 3)
    if with_lengths:
        axes["lengths"] = {0: "batch"}
        session, ops = export(layer, (x, lengths), ["input", "lengths"], outputs, axes, tmp_path)
    else:
        session, ops = export(layer, (x,), ["input"], outputs, axes, tmp_path)
    if op == "Loop":
        assert "Loop" in ops and not {"RNN", "GRU", "LSTM"} & set(ops), ops
    else:
        assert ops.count(op) == layer.num_layers and "Loop" not in ops, ops
    for T, B in ((9, 2), (2, 6)):
        x, lengths = sample(T, B)
        with torch.no_grad():
            expected = flat(layer(x, lengths=lengths if with_lengths else None))
        feeds = {"input": x, "lengths": lengths} if with_lengths else {"input": x}
        assert max_diff(session, feeds, expected) <= TOL


class Encoder(nn.Module):
    """A task-model-like wrapper: an initial state comes in, the layer runs with lengths."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, lengths, h0, c0):
        out, (h, c) = self.layer(x, (h0, c0), lengths=lengths)
        return out.sum(2), h, c


@pytest.mark.parametrize("kwargs", [{"peephole": True}, {"layer_norm": True}], ids=["operator", "loop"])
def test_initial_state_is_an_input(kwargs, tmp_path):
    layer = rnnkit.LSTM(I, H, num_layers=2, bidirectional=True, **kwargs)
    model = Encoder(layer).eval()

    def sample(T, B):
        return (torch.randn(T, B, I), torch.randint(1, T + 1, (B,)), torch.randn(4, B, H), torch.randn(4, B, H))

    axes = {"x": {0: "T", 1: "B"}, "lengths": {0: "B"}, "h0": {1: "B"}, "c0": {1: "B"}, "y": {0: "T", 1: "B"},
            "h": {1: "B"}, "c": {1: "B"}}
    session, _ = export(model, sample(5, 3), ["x", "lengths", "h0", "c0"], ["y", "h", "c"], axes, tmp_path)
    inputs = sample(7, 4)
    with torch.no_grad():
        expected = list(model(*inputs))
    assert max_diff(session, dict(zip(["x", "lengths", "h0", "c0"], inputs)), expected) <= TOL


def test_export_refuses_to_overwrite(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("keep me")
    with pytest.raises(ValueError, match="exists"):
        export_onnx(rnnkit.GRU(I, H), (torch.randn(5, 2, I),), path, ["input"], ["output", "h_n"])
    assert path.read_text() == "keep me"


@pytest.mark.parametrize("with_lengths", [True, False], ids=["lengths", "full"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cls", [rnnkit.MinGRU, rnnkit.MinLSTM], ids=["mingru", "minlstm"])
def test_minimal_layers_export_as_a_loop(cls, num_layers, with_lengths, tmp_path):
    layer = cls(I, H, num_layers=num_layers).eval()
    axes = {"input": {0: "time", 1: "batch"}, "lengths": {0: "batch"}, "output": {0: "time", 1: "batch"},
            "h_n": {1: "batch"}}
    x, lengths = torch.randn(5, 3, I), torch.tensor([2, 5, 4])
    names = ["input", "lengths"] if with_lengths else ["input"]
    session, ops = export(layer, (x, lengths)[:len(names)], names, ["output", "h_n"], axes, tmp_path)
    assert ops.count("Loop") == num_layers, ops
    assert layer.mode == "auto" and "_loop" not in vars(layer)  # the export left the layer as it was
    x, lengths = torch.randn(8, 4, I), torch.tensor([8, 1, 0, 6])
    with torch.no_grad():
        expected = flat(layer(x, lengths=lengths if with_lengths else None))
    assert max_diff(session, dict(zip(names, (x, lengths))), expected) <= TOL


def test_unbatched_input(tmp_path):
    layer = rnnkit.GRU(I, H, reset_after=False).eval()
    session, _ = export(layer, (torch.randn(5, I),), ["input"], ["output", "h_n"], {"input": {0: "time"},
                        "output": {0: "time"}}, tmp_path)
    x = torch.randn(8, I)
    with torch.no_grad():
        expected = flat(layer(x))
    assert max_diff(session, {"input": x}, expected) <= TOL


class Packs(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = rnnkit.LSTM(I, H)

    def forward(self, x, lengths):
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        return self.layer(packed)[1][0]


def test_packed_input_gets_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="PackedSequence"):
        export_onnx(Packs(), (torch.randn(5, 2, I), torch.tensor([5, 3])), tmp_path / "m.onnx", ["x", "lengths"],
                    ["h"])
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("kwargs", [{}, {"layer_norm": True}], ids=["operator", "loop"])
def test_task_model_exports(kwargs, tmp_path):
    """A task model (forward(inputs, targets=None) -> (output, loss)) with (x, lengths) inputs."""
    from rnnkit.models.classifier import SequenceClassifier

    model = SequenceClassifier(rnnkit.LSTM(I, H, batch_first=True, bidirectional=True, **kwargs), 5).eval()
    axes = {"x": {0: "B", 1: "T"}, "lengths": {0: "B"}, "logits": {0: "B"}}
    session, _ = export(model, ((torch.randn(2, 6, I), torch.tensor([6, 3])),), ["x", "lengths"], ["logits"],
                        axes, tmp_path)
    x, lengths = torch.randn(4, 9, I), torch.tensor([9, 2, 5, 1])
    with torch.no_grad():
        expected = [model((x, lengths))[0]]
    assert max_diff(session, {"x": x, "lengths": lengths}, expected) <= TOL
