"""ONNX export of every layer variant, run by onnxruntime against the PyTorch layer.

Each model is exported once (T=5, B=3) and run at other T and B: a graph that unrolled the traced
time loop or baked in the batch size would fail there. The graph must use ONNX's RNN/GRU/LSTM
operator where one expresses the cell, and a Loop over time where none does.
"""
import logging
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


def _node_count(graph) -> int:
    """Nodes of a graph and of every subgraph (a Loop's body) in it."""
    return sum(1 + sum(_node_count(a.g) for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)
               for node in graph.node)


@pytest.mark.parametrize("cls, kwargs, op", [(rnnkit.GRU, {"reset_after": False}, "GRU"),
                                             (rnnkit.LSTM, {"layer_norm": True, "proj_size": 2}, "Loop"),
                                             (rnnkit.MinLSTM, {}, "Loop")], ids=["operator", "loop", "minimal"])
def test_graph_is_the_same_for_any_traced_length(cls, kwargs, op, tmp_path):
    """The time loop is ONNX's (the operator's, or a Loop over a body of one step), not unrolled: exporting at
    T=2 and T=7 gives the same nodes, and the graph runs at other T and B."""
    layer = cls(I, H, num_layers=2, **kwargs).eval()
    axes = {"input": {0: "time", 1: "batch"}, "lengths": {0: "batch"}}
    outputs = ["output", "h_n", "c_n"] if cls is rnnkit.LSTM else ["output", "h_n"]
    graphs = []
    for T in (2, 7):
        path = tmp_path / f"t{T}.onnx"
        export_onnx(layer, (torch.randn(T, 3, I), torch.tensor([T, 1, T])), path, ["input", "lengths"], outputs, axes)
        graphs.append(onnx.load(str(path)).graph)
    ops = [[node.op_type for node in graph.node] for graph in graphs]
    assert ops[0] == ops[1] and _node_count(graphs[0]) == _node_count(graphs[1]), ops
    assert ops[0].count(op) == 2, ops[0]
    session = ort.InferenceSession(str(tmp_path / "t2.onnx"), providers=["CPUExecutionProvider"])
    x, lengths = torch.randn(12, 5, I), torch.tensor([12, 3, 1, 12, 7])
    with torch.no_grad():
        expected = flat(layer(x, lengths=lengths))
    assert max_diff(session, {"input": x, "lengths": lengths}, expected) <= TOL


class Stack(nn.Module):
    """Two rnnkit layers with dropout between and inside them, one submodule left in eval mode."""

    def __init__(self):
        super().__init__()
        self.lstm = rnnkit.LSTM(I, H, num_layers=2, dropout=0.5, recurrent_dropout=0.3, layer_norm=True)
        self.gru = rnnkit.GRU(H, H, bidirectional=True)
        self.head = nn.Dropout(0.5)

    def forward(self, x, lengths):
        out, (h, c) = self.lstm(x, lengths=lengths)
        out, h = self.gru(self.head(out), lengths=lengths)
        return out, h


def test_export_with_gradients_on_leaves_the_model_as_it_was(tmp_path):
    """Outside no_grad and in training mode, with parameters that require gradients: the graph is the
    inference model, and the model keeps its modes (each module's own), methods and parameters."""
    model = Stack().train()
    model.head.eval()
    before = {name: p.clone() for name, p in model.named_parameters()}
    assert torch.is_grad_enabled() and all(p.requires_grad for p in model.parameters())
    axes = {"x": {0: "T", 1: "B"}, "lengths": {0: "B"}}
    session, ops = export(model, (torch.randn(5, 3, I), torch.tensor([5, 2, 4])), ["x", "lengths"], ["y", "h"],
                          axes, tmp_path)
    assert ops.count("Loop") == 2 and ops.count("GRU") == 1, ops
    assert model.training and model.lstm.training and model.gru.training and not model.head.training
    for layer in (model.lstm, model.gru):
        assert not {"forward", "step", "_loop"} & set(vars(layer)), vars(layer).keys()
    for name, p in model.named_parameters():
        assert p.requires_grad and torch.equal(p, before[name]), name
    x, lengths = torch.randn(8, 4, I), torch.tensor([8, 1, 5, 3])
    with torch.no_grad():
        expected = list(model.eval()(x, lengths))
    assert max_diff(session, {"x": x, "lengths": lengths}, expected) <= TOL


@pytest.mark.parametrize("cls, kwargs", [(rnnkit.LSTM, {"peephole": True, "coupled": True}),
                                         (rnnkit.LSTM, {"layer_norm": True, "proj_size": 2}),
                                         (rnnkit.GRU, {"reset_after": False}), (rnnkit.RNN, {"nonlinearity": "relu"}),
                                         (rnnkit.MinGRU, {})], ids=["lstm", "lstm-loop", "gru", "rnn", "mingru"])
def test_export_forms_compute_the_layer(cls, kwargs):
    """While exporting, a layer runs the custom ops (rnnkit_onnx::layer, ::linear_recurrence); their eager
    implementations give the layer's own numbers, step() included."""
    from rnnkit.export.onnx import export_forms

    minimal = cls is rnnkit.MinGRU  # causal: no bidirectional option
    layer = cls(I, H, num_layers=2, batch_first=True, bidirectional=not minimal, **kwargs) if not minimal \
        else cls(I, H, num_layers=2, batch_first=True)
    layer.eval()
    x, lengths, h0 = torch.randn(4, 6, I), torch.tensor([6, 2, 0, 5]), None
    with torch.no_grad():
        expected = flat(layer(x, lengths=lengths))
        with export_forms(layer):
            got = flat(layer(x, lengths=lengths))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-5)
    if minimal:
        return
    one_way = cls(I, H, num_layers=2, **kwargs).eval()
    with torch.no_grad():
        expected = one_way.step(x[:, 0], h0)
        with export_forms(one_way):
            got = one_way.step(x[:, 0], h0)
    torch.testing.assert_close(flat(got), flat(expected), rtol=0, atol=1e-5)


@pytest.mark.parametrize("cls, kwargs", [(rnnkit.GRU, {}), (rnnkit.LSTM, {"layer_norm": True, "peephole": True})],
                         ids=["operator", "loop"])
def test_export_logs_no_warning(cls, kwargs, tmp_path, capfd, caplog):
    """torch's exporter notes every torchvision op it cannot find (on its own stderr handler); rnnkit uses none,
    so nothing is said. Nor does the optimizer (it would of a Split of the weights it cannot fold), nor the
    trace of a Loop's step."""
    layer = cls(3, 4, **kwargs)
    outputs = ["output", "h_n", "c_n"] if cls is rnnkit.LSTM else ["output", "h_n"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_onnx(layer, (torch.randn(5, 2, 3),), tmp_path / "m.onnx", ["input"], outputs)
    assert capfd.readouterr().err == ""
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]  # pytest holds the logs


LOOP_VARIANTS = {
    "ln-proj-peephole": {"layer_norm": True, "proj_size": 2, "peephole": True},
    "ln-peephole-softsign": {"layer_norm": True, "peephole": True, "activation": "softsign"},
    "ln-coupled-peephole-proj": {"layer_norm": True, "coupled": True, "peephole": True, "proj_size": 3},
    "proj-coupled-softsign-nobias": {"proj_size": 2, "coupled": True, "activation": "softsign", "bias": False},
}


@pytest.mark.parametrize("kwargs", LOOP_VARIANTS.values(), ids=list(LOOP_VARIANTS))
def test_loop_variants_bidirectional_with_empty_rows(kwargs, tmp_path):
    """The Loop's body is the cell's own step (traced): layer norm, projection, peepholes (the input gate's
    included), the coupled gate and softsign together, 2 layers both ways, an initial state, and lengths with
    a zero (that row's outputs are zeros, its final state the initial one)."""
    layer = rnnkit.LSTM(I, H, num_layers=2, bidirectional=True, **kwargs).eval()
    assert operator_for(layer.cell) == "Loop"
    P = layer.proj_size or H
    model = Encoder(layer).eval()

    def sample(T, B, lengths):
        return torch.randn(T, B, I), torch.tensor(lengths), torch.randn(4, B, P), torch.randn(4, B, H)

    axes = {"x": {0: "T", 1: "B"}, "lengths": {0: "B"}, "h0": {1: "B"}, "c0": {1: "B"}, "y": {0: "T", 1: "B"},
            "h": {1: "B"}, "c": {1: "B"}}
    names = ["x", "lengths", "h0", "c0"]
    session, ops = export(model, sample(5, 3, [5, 0, 3]), names, ["y", "h", "c"], axes, tmp_path)
    assert ops.count("Loop") == 4 and not {"LSTM", "Transpose"} & set(ops), ops  # 2 layers x 2 directions;
    # the weights' transposes are folded into initializers, not computed in the graph
    for T, lengths in ((7, [0, 7, 2, 0]), (1, [1, 0])):
        inputs = sample(T, len(lengths), lengths)
        with torch.no_grad():
            expected = list(model(*inputs))
        assert max_diff(session, dict(zip(names, inputs)), expected) <= TOL


@pytest.mark.parametrize("cls, kwargs", [(rnnkit.LSTM, {}), (rnnkit.LSTM, {"peephole": True, "coupled": True}),
                                         (rnnkit.GRU, {}), (rnnkit.GRU, {"reset_after": False}),
                                         (rnnkit.RNN, {"nonlinearity": "relu"})],
                         ids=["lstm", "lstm-coupled-peephole", "gru", "gru-reset-before", "rnn-relu"])
def test_loop_runs_any_cell(cls, kwargs, tmp_path, monkeypatch):
    """The Loop translation is generic over cells: with ONNX's own operators set aside, every cell's step
    (traced, not written for it) runs in the Loop with the layer's numbers."""
    from rnnkit.export import onnx as onnx_export

    monkeypatch.setattr(onnx_export, "operator_for", lambda step: "Loop")
    layer = cls(I, H, num_layers=2, bidirectional=True, **kwargs).eval()
    outputs = ["output", "h_n", "c_n"] if cls is rnnkit.LSTM else ["output", "h_n"]
    axes = {"input": {0: "time", 1: "batch"}, "lengths": {0: "batch"}, "output": {0: "time", 1: "batch"},
            **{state: {1: "batch"} for state in outputs[1:]}}
    session, ops = export(layer, (torch.randn(5, 3, I), torch.tensor([5, 2, 4])), ["input", "lengths"], outputs,
                          axes, tmp_path)
    assert ops.count("Loop") == 4 and not {"RNN", "GRU", "LSTM"} & set(ops), ops
    x, lengths = torch.randn(8, 4, I), torch.tensor([8, 0, 5, 3])
    with torch.no_grad():
        expected = flat(layer(x, lengths=lengths))
    assert max_diff(session, {"input": x, "lengths": lengths}, expected) <= TOL
