"""One decision site (rnnkit.engine.dispatch): a layer's call is planned once (impl and sequence path, with the
reasons), the plan is kept on the layer (`last_plan`) and is what ran: the C++ sequence kernels run exactly when the
plan says "cpp"; and no module but dispatch asks a backend whether it can run a call."""
import ast
from pathlib import Path

import pytest
import torch

import rnnkit
from rnnkit.engine import dispatch
from rnnkit.engine.cells import LSTMStep
from rnnkit.kernels.cpu import fused

needs_gemm = pytest.mark.skipif(not fused.sequence_available(), reason="the C++ sequence kernels are not built here")
CPU = torch.device("cpu")


def _counting(monkeypatch) -> dict:
    """Counts the calls of the C++ whole-sequence entries."""
    calls = {}
    for name in ("lstm_sequence", "gru_sequence", "rnn_sequence", "sequence_backward"):
        def wrapper(*args, fn=getattr(fused, name), name=name, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return fn(*args, **kwargs)
        monkeypatch.setattr(fused, name, wrapper)
    return calls


@needs_gemm
@pytest.mark.parametrize("make,impl,sequence", [
    (lambda dt: rnnkit.LSTM(3, 4, dtype=dt), "native", "native"),
    (lambda dt: rnnkit.LSTM(3, 4, peephole=True, dtype=dt), "engine", "cpp"),
    (lambda dt: rnnkit.GRU(3, 4, reset_after=False, bidirectional=True, dtype=dt), "engine", "cpp"),
    (lambda dt: rnnkit.RNN(3, 4, nonlinearity="softsign", num_layers=2, dtype=dt), "engine", "cpp"),
    (lambda dt: rnnkit.LSTM(3, 4, layer_norm=True, impl="autograd", dtype=dt), "autograd", "steps"),
], ids=["lstm", "peephole", "gru-reset-before", "rnn-softsign", "autograd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("train", [True, False], ids=["train", "inference"])
def test_the_plan_kept_on_the_layer_is_what_ran(make, impl, sequence, dtype, train, monkeypatch):
    layer = make(dtype)
    assert layer.last_plan is None
    calls = _counting(monkeypatch)
    x = torch.randn(6, 2, 3, dtype=dtype)
    with torch.set_grad_enabled(train):
        out = layer(x)[0]
    if train:
        out.sum().backward()
    plan = layer.last_plan
    assert (plan.impl, plan.sequence) == (impl, sequence)
    ran = sum(n for name, n in calls.items() if name != "sequence_backward")
    assert ran == (layer.num_layers * layer.num_directions if sequence == "cpp" else 0)
    assert calls.get("sequence_backward", 0) == (ran if train else 0)
    assert plan.reason and str(plan).startswith(f"{impl}/{sequence}: ")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_dtype_the_kernels_lack_runs_the_steps_and_says_why(dtype, monkeypatch):
    calls = _counting(monkeypatch)
    layer = rnnkit.GRU(3, 4, reset_after=False, dtype=dtype)
    layer(torch.randn(5, 2, 3, dtype=dtype))[0].sum().backward()
    assert (layer.last_plan.impl, layer.last_plan.sequence) == ("engine", "steps")
    assert str(dtype) in layer.last_plan.detail and not calls


def test_the_measured_advantage_of_the_engine_holds_only_where_its_cpp_kernels_run():
    """A standard GRU on the CPU runs the engine's C++ loop, measured faster than torch.nn's; in bfloat16, which
    those kernels do not take, torch.nn's kernel stays."""
    for dtype, impl in ((torch.float32, "engine"), (torch.bfloat16, "native")):
        layer = rnnkit.GRU(3, 4, dtype=dtype)
        layer(torch.randn(8, 2, 3, dtype=dtype))
        assert layer.last_plan.impl == impl, dtype


def test_kernels_that_are_not_built_run_the_steps_and_say_why(monkeypatch):
    monkeypatch.setattr(fused, "sequence_available", lambda dtype=None: False)
    monkeypatch.setattr(fused, "unavailable_reason", lambda: "no C++ compiler found")
    calls = _counting(monkeypatch)
    layer = rnnkit.LSTM(3, 4, coupled=True)
    layer(torch.randn(5, 2, 3))[0].sum().backward()
    assert layer.last_plan.sequence == "steps" and layer.last_plan.detail == "no C++ compiler found"
    assert not calls


def test_an_empty_sequence_is_planned_as_steps():
    layer = rnnkit.LSTM(3, 4)
    out, (h, c) = layer(torch.randn(0, 2, 3))
    assert out.shape == (0, 2, 4)
    assert (layer.last_plan.impl, layer.last_plan.sequence) == ("engine", "steps")
    assert "empty" in layer.last_plan.reason and "T = 0" in layer.last_plan.detail


def test_the_plan_names_why_torch_nn_does_not_run():
    layer = rnnkit.LSTM(3, 4, recurrent_dropout=0.2)
    layer(torch.randn(5, 2, 3))
    assert layer.last_plan.impl == "engine" and "recurrent dropout" in layer.last_plan.reason
    layer.eval()
    layer(torch.randn(5, 2, 3))  # recurrent dropout is off in eval mode: torch.nn's kernel runs
    assert layer.last_plan.impl == "native"
    layer(torch.randn(5, 2, 3), lengths=torch.tensor([5, 0]))
    assert layer.last_plan.impl == "engine" and "zero-length" in layer.last_plan.reason


def test_triton_plans_its_kernel_except_for_an_empty_sequence(monkeypatch):
    monkeypatch.setattr(dispatch.triton_kernels, "unavailable_reason", lambda: None)
    step = LSTMStep(4, peephole=True)
    full = dispatch.plan("auto", step, torch.device("cuda"), torch.float32, 8, 0.0, True, None, steps=5)
    assert (full.impl, full.sequence) == ("triton", "triton") and "Triton is importable" in full.reason
    empty = dispatch.plan("triton", step, CPU, torch.float32, 8, 0.0, True, None, steps=0)
    assert (empty.impl, empty.sequence) == ("triton", "steps")


def test_step_keeps_its_plan():
    layer = rnnkit.LSTM(3, 4, num_layers=2)
    layer.step(torch.randn(2, 3))
    assert layer.last_plan.impl == "cell" and "lstm_cell" in layer.last_plan.reason
    peephole = rnnkit.LSTM(3, 4, peephole=True)
    peephole.step(torch.randn(2, 3))
    assert peephole.last_plan.impl == "engine"
    projected = rnnkit.LSTM(3, 4, proj_size=2)
    projected.step(torch.randn(2, 3))
    assert projected.last_plan.impl == "engine" and "projection" in projected.last_plan.reason


@pytest.mark.parametrize("mode,impl", [("auto", "loop"), ("parallel", "scan"), ("sequential", "loop")])
def test_the_minimal_layers_keep_their_plan(mode, impl):
    layer = rnnkit.MinGRU(3, 4, mode=mode)
    layer(torch.randn(5, 2, 3))
    assert layer.last_plan.impl == impl and mode in layer.last_plan.reason


def test_the_engine_asked_directly_plans_for_its_tensors():
    step = LSTMStep(4, peephole=True)
    xp, h, c = torch.randn(5, 2, 16), torch.randn(2, 4), torch.randn(2, 4)
    path = dispatch.sequence_path(step, xp, h, c)
    assert path == (("cpp", "") if fused.sequence_available() else ("steps", path[1]))
    assert dispatch.sequence_path(step, xp, h.double(), c)[0] == "steps"  # mixed dtypes
    assert dispatch.sequence_path(step, xp[:0], h, c) == ("steps", "an empty sequence (T = 0)")


def test_a_plan_under_a_compiler_is_not_kept_and_does_not_break_the_graph():
    layer = rnnkit.LSTM(3, 4, peephole=True)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    compiled(torch.randn(5, 2, 3))
    assert layer.last_plan is None


# the backends' own answers to "can you run this call?", which only dispatch.py may ask
BACKEND_CHECKS = {"why_not", "why_not_native", "native_kernel", "engine_is_faster", "sequence_available", "available",
                  "usable", "_engine_path", "_choose"}
ALLOWED = {  # module: the checks it may call, and why
    "rnnkit/engine/dispatch.py": BACKEND_CHECKS,  # the planner
    "rnnkit/engine/ops.py": {"sequence_available"},  # why_not's own answer
    "rnnkit/kernels/cpu/fused.py": {"usable"},  # the kernels' own predicates
    "rnnkit/kernels/triton/__init__.py": {"available"},
    "rnnkit/cli/commands.py": {"sequence_available"},  # `rnnkit info` reports what is built
}


def test_no_module_but_dispatch_asks_a_backend_whether_it_can_run_a_call():
    package = Path(rnnkit.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        name = path.relative_to(package.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if called in BACKEND_CHECKS and called not in ALLOWED.get(name, set()):
                    found.append(f"{name}:{node.lineno} calls {called}")
    assert not found, found
