"""The dispatcher: which implementation runs, and clear refusals where torch.nn cannot."""
import pytest
import torch

import rnnkit
from rnnkit.engine import dispatch
from rnnkit.engine import loop as engine
from rnnkit.kernels.cpu import fused
from rnnkit.engine.cells import GRUStep, LSTMStep, RNNStep

CPU = torch.device("cpu")


@pytest.mark.parametrize("step,kernel", [
    (LSTMStep(4), "lstm"), (LSTMStep(4, proj_size=2), "lstm"), (GRUStep(4), "gru"),
    (RNNStep(4, "tanh"), "rnn_tanh"), (RNNStep(4, "relu"), "rnn_relu"),
    (LSTMStep(4, peephole=True), None), (LSTMStep(4, coupled=True), None), (LSTMStep(4, layer_norm=True), None),
    (LSTMStep(4, activation="softsign"), None), (GRUStep(4, reset_after=False), None),
    (GRUStep(4, activation="softsign"), None), (RNNStep(4, "softsign"), None),
])
def test_native_kernel_exists_only_for_torch_configurations(step, kernel):
    assert dispatch.native_kernel(step) == kernel


def test_auto_decisions():
    lstm, gru = LSTMStep(4), GRUStep(4)
    assert dispatch.choose("auto", lstm, CPU, 8, 0.0, True, None) == "native"
    assert dispatch.choose("auto", LSTMStep(4, peephole=True), CPU, 8, 0.0, True, None) == "engine"
    assert dispatch.choose("auto", lstm, CPU, 8, 0.3, True, None) == "engine"  # recurrent dropout, training
    assert dispatch.choose("auto", lstm, CPU, 8, 0.3, False, None) == "native"  # ... is off in eval mode
    assert dispatch.choose("auto", lstm, CPU, 2, 0.0, True, torch.tensor([3, 0])) == "engine"
    # lengths: torch runs its packed-sequence kernel, which the engine's C++ sequence loop beats in training
    packed = "engine" if fused.sequence_available() else "native"
    assert dispatch.choose("auto", lstm, CPU, 2, 0.0, True, torch.tensor([3, 1])) == packed
    assert dispatch.choose("auto", lstm, CPU, 2, 0.0, True, torch.tensor([3, 1]), recording=False) == "native"
    assert dispatch.choose("auto", lstm, torch.device("cuda"), 2, 0.0, True, torch.tensor([3, 1])) == "native"
    # GRU on CPU: the engine's C++ sequence loop, train and inference, at every batch, from a few steps on;
    # RNN train steps of longer sequences too
    seq = "engine" if fused.sequence_available() else "native"
    for batch, recording in [(1, True), (1, False), (128, True), (256, False)]:
        assert dispatch.choose("auto", gru, CPU, batch, 0.0, True, None, recording=recording, steps=20) == seq
    assert dispatch.choose("auto", gru, CPU, 1, 0.0, True, None, steps=2) == "native"
    assert dispatch.choose("auto", gru, torch.device("cuda"), 1, 0.0, True, None) == "native"
    rnn = RNNStep(4, "tanh")
    assert dispatch.choose("auto", rnn, CPU, 64, 0.0, True, None, steps=100) == seq
    assert dispatch.choose("auto", rnn, CPU, 64, 0.0, False, None, recording=False, steps=100) == seq
    assert dispatch.choose("auto", rnn, CPU, 1, 0.0, False, None, recording=False, steps=16) == seq
    assert dispatch.choose("auto", rnn, CPU, 64, 0.0, True, None, steps=5) == "native"
    assert dispatch.choose("auto", rnn, CPU, 64, 0.0, False, None, recording=False, steps=5) == "native"
    # LSTM with a projection on CPU: oneDNN has none, and the engine's train step measured faster, its inference
    # from a few steps on
    proj = LSTMStep(4, proj_size=2)
    assert dispatch.choose("auto", proj, CPU, 64, 0.0, True, None) == "engine"
    assert dispatch.choose("auto", proj, CPU, 64, 0.0, False, None, recording=False, steps=100) == seq
    assert dispatch.choose("auto", proj, CPU, 64, 0.0, False, None, recording=False, steps=5) == "native"
    # single LSTM steps (generation): oneDNN's per-call cost loses to the engine's matrix products
    assert dispatch.choose("auto", lstm, CPU, 1, 0.0, False, None, recording=False, steps=1) == "engine"
    assert dispatch.choose("auto", lstm, CPU, 128, 0.0, False, None, recording=False, steps=1) == "native"
    assert dispatch.choose("auto", lstm, CPU, 1, 0.0, False, None, recording=False, steps=5) == "native"
    assert dispatch.choose("auto", gru, CPU, 1, 0.0, False, None, recording=False, steps=1) == "native"
    assert dispatch.choose("auto", lstm, torch.device("cuda"), 1, 0.0, False, None, recording=False, steps=1) == "native"
    for impl in ("engine", "autograd"):
        assert dispatch.choose(impl, lstm, CPU, 8, 0.0, True, None) == impl


@pytest.mark.parametrize("kwargs,call,message", [
    ({"peephole": True}, {}, r"impl='native' needs a configuration torch.nn has"),
    ({"recurrent_dropout": 0.2}, {}, r"impl='native' cannot run this layer: torch.nn has no recurrent dropout"),
    ({}, {"lengths": torch.tensor([2, 0])}, r"impl='native' cannot run this layer: .*zero-length"),
])
def test_native_refuses_what_torch_cannot_do(kwargs, call, message):
    with pytest.raises(ValueError, match=message):
        rnnkit.LSTM(3, 4, impl="native", **kwargs)(torch.randn(5, 2, 3), **call)


@pytest.mark.parametrize("impl,expected", [("auto", "native"), ("native", "native"), ("engine", "engine"),
                                           ("autograd", "autograd")])
def test_the_layer_runs_the_chosen_path(monkeypatch, impl, expected):
    ran = []
    native, run = dispatch.run_native, engine.run
    monkeypatch.setattr(dispatch, "run_native", lambda *a, **k: ran.append("native") or native(*a, **k))
    monkeypatch.setattr(engine, "run", lambda *a, **k: ran.append(a[-1] if len(a) > 6 else k.get("bptt")) or run(*a, **k))
    rnnkit.LSTM(3, 4, impl=impl)(torch.randn(5, 2, 3))
    assert ran == [{"explicit": "engine"}.get(expected, expected) if expected != "engine" else "explicit"]


def test_gru_inference_and_training_paths(monkeypatch):
    ran = []
    native = dispatch.run_native
    monkeypatch.setattr(dispatch, "run_native", lambda *a, **k: ran.append("native") or native(*a, **k))
    gru = rnnkit.GRU(3, 4)
    gru(torch.randn(5, 1, 3))  # the engine's C++ sequence loop, where there is one
    with torch.no_grad():
        gru(torch.randn(5, 8, 3))  # inference too
        gru(torch.randn(1, 8, 3))  # a single step: torch's kernel
    assert ran == ["native"] if fused.sequence_available() else ["native"] * 3
