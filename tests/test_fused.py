"""The fused C++ loops (rnnkit/fused.py) against the cells' PyTorch ops, which they replace on the CPU: every
LSTM, GRU and RNN variant, the whole-sequence loop (and the LSTM's per-step gate kernels), forward, inference
and every gradient through the engine, in float64 and float32, with saturating inputs and NaN; when they are used
and when not; and the fallback without a compiler or without a gemm that passes its check."""
import os
import subprocess
import sys
from itertools import product

import pytest
import torch

import rnnkit
from rnnkit.kernels.cpu import fused

needs_fused = pytest.mark.skipif(fused.library() is None, reason=f"fused kernels unavailable: "
                                                                 f"{fused.unavailable_reason()}")
needs_gemm = pytest.mark.skipif(fused.gemm_address(torch.float32) is None or fused.gemm_address(torch.float64) is None,
                                reason="PyTorch's CPU library exports no BLAS gemm to call from C++")


FUSED_PATHS = [pytest.param("sequence", marks=needs_gemm), "step"]
VARIANTS = [dict(peephole=p, coupled=c, activation=a, proj_size=s, layer_norm=n)
            for p, c, a, s, n in product([False, True], [False, True], ["tanh", "softsign"], [0, 3], [False, True])]
VARIANTS += [dict(layer_norm=True, bias=False), dict(layer_norm=True, recurrent_dropout=0.3)]
GRU_VARIANTS = [dict(reset_after=r, activation=a, bias=b)
                for r, a, b in product([True, False], ["tanh", "softsign"], [True, False])]
GRU_VARIANTS += [dict(reset_after=r, recurrent_dropout=0.3) for r in (True, False)]
RNN_VARIANTS = [dict(nonlinearity=n, bias=b) for n, b in product(["tanh", "relu", "softsign"], [True, False])]
RNN_VARIANTS += [dict(nonlinearity=n, recurrent_dropout=0.3) for n in ("tanh", "relu")]
CELL_VARIANTS = [("GRU", v) for v in GRU_VARIANTS] + [("RNN", v) for v in RNN_VARIANTS]
LAYERS = {"LSTM": rnnkit.LSTM, "GRU": rnnkit.GRU, "RNN": rnnkit.RNN}


def variant_id(v) -> str:
    return "-".join(f"{k}={w}" for k, w in v.items()) or "standard"


# the C++ entries, all counted; a path must run exactly its own (GRU and RNN have no per-step kernel: their step
# is one or two products and one pass of PyTorch ops)
COUNTED = ("lstm_sequence", "lstm_sequence_backward", "lstm_forward", "lstm_backward", "gru_sequence",
           "gru_sequence_backward", "rnn_sequence", "rnn_sequence_backward")


def _entries(layer, path: str, backward: bool = True) -> set:
    cell = type(layer).__name__.lower()
    names = {"sequence": [f"{cell}_sequence", f"{cell}_sequence_backward"],
             "step": ["lstm_forward", "lstm_backward"] if cell == "lstm" else []}.get(path, [])
    return set(names if backward else names[:1])


def _counting(m, path: str) -> dict:
    """Wraps every C++ entry in fused to count its calls; for "step", hides the gemm (so the engine's loop runs
    the per-step kernels), for "ops", the kernels altogether."""
    calls = dict.fromkeys(COUNTED, 0)
    for name in calls:
        def wrapper(*args, fn=getattr(fused, name), name=name, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        m.setattr(fused, name, wrapper)
    if path == "step":
        m.setattr(fused, "gemm_address", lambda dtype: None)
    if path == "ops":
        m.setattr(fused, "usable", lambda *tensors: False)
        m.setattr(fused, "sequence_available", lambda dtype=None: False)
    return calls


def _initial_state(layer, B: int, dtype) -> tuple:
    """Random initial states of the layer's shape, each its own leaf."""
    L = layer.num_layers * layer.num_directions
    sizes = [layer.proj_size or layer.hidden_size] + ([layer.hidden_size] if isinstance(layer, rnnkit.LSTM) else [])
    return tuple(torch.randn(L, B, n, dtype=dtype) for n in sizes)


def _run(layer, x, lengths, path: str, monkeypatch, hx=None):
    """Outputs, final states and the gradients of x, the initial states and every parameter of `layer` run by
    `path`; asserts that the path's own C++ entries ran (forward and backward) and no other."""
    with monkeypatch.context() as m:
        calls = _counting(m, path)
        x = x.detach().requires_grad_()
        hx = None if hx is None else tuple(s.detach().requires_grad_() for s in hx)
        out, finals = layer(x, None if hx is None else hx if len(hx) == 2 else hx[0], lengths=lengths)
        finals = finals if isinstance(finals, tuple) else (finals,)
        loss = (out * torch.linspace(-1, 1, out.shape[-1], dtype=x.dtype)).square().sum()
        loss = loss + sum((k + 1) * s.sum() for k, s in enumerate(finals))
        grads = torch.autograd.grad(loss, [x, *(hx or ()), *layer.parameters()])
    ran = {name for name, n in calls.items() if n}
    assert ran == _entries(layer, path), (path, calls)
    return out, *finals, *grads


def _both(variant, dtype, path, monkeypatch, cell="LSTM"):
    """(`path`, PyTorch ops) for a two-layer bidirectional layer with variable lengths (one of them zero) and
    random initial states."""
    torch.manual_seed(0)
    layer = LAYERS[cell](5, 8, 2, batch_first=True, bidirectional=True, impl="engine", dtype=dtype, **variant)
    layer.train("recurrent_dropout" in variant)
    x = torch.randn(5, 9, 5, dtype=dtype)
    lengths = torch.tensor([9, 4, 0, 7, 1])
    hx = _initial_state(layer, 5, dtype)
    torch.manual_seed(1)  # the same recurrent-dropout masks in both runs
    got = _run(layer, x, lengths, path, monkeypatch, hx)
    torch.manual_seed(1)
    return got, _run(layer, x, lengths, "ops", monkeypatch, hx)


def _assert_fused_equals_the_ops(variant, path, monkeypatch, cell="LSTM"):
    got, want = _both(variant, torch.float64, path, monkeypatch, cell)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    got32, want32 = _both(variant, torch.float32, path, monkeypatch, cell)
    for a, b, exact in zip(got32, want32, want):
        error, reference_error = (a.double() - exact).abs().max(), (b.double() - exact).abs().max()
        assert error <= 2 * reference_error + 1e-5, (error, reference_error)


@needs_fused
@pytest.mark.parametrize("path", FUSED_PATHS)
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_fused_equals_the_pytorch_ops(variant, path, monkeypatch):
    """float64: outputs, final states and every gradient (input, initial states, parameters) agree to 1e-10.
    float32: the fused loops are at least as close to the float64 result as the PyTorch ops are (layer norm of
    a zero-length row's state divides by sqrt(eps), which magnifies float32 rounding in both). With layer norm,
    the sequence path's W_hh gradient is summed a few steps at a time (3 in float64, 6 in float32, of 9)."""
    monkeypatch.setattr(fused, "BACKWARD_CHUNK_BYTES", 3 * 5 * 4 * 8 * 8)
    _assert_fused_equals_the_ops(variant, path, monkeypatch)


@needs_gemm
@pytest.mark.parametrize("cell, variant", [pytest.param(c, v, id=f"{c}-{variant_id(v)}") for c, v in CELL_VARIANTS])
def test_gru_and_rnn_sequences_equal_the_pytorch_ops(cell, variant, monkeypatch):
    """The same for every GRU and RNN variant: one C++ call per sequence, forward and backward, against the
    engine's loop of PyTorch ops."""
    _assert_fused_equals_the_ops(variant, "sequence", monkeypatch, cell)


def case(cell: str, variant: dict, path: str):
    """One (cell, variant, path) test case; the sequence path needs the gemm."""
    return pytest.param(cell, variant, path, marks=[needs_gemm] if path == "sequence" else [],
                        id=f"{cell}-{variant_id(variant)}-{path}")


SPLIT_CASES = [case("LSTM", v, path) for v in (dict(peephole=True), dict(layer_norm=True, peephole=True, proj_size=3),
                                               dict(coupled=True, layer_norm=True, recurrent_dropout=0.3))
               for path in ("sequence", "step")]
SPLIT_CASES += [case(cell, v, "sequence") for cell, v in [("GRU", {}), ("GRU", dict(reset_after=False,
                                                                                   recurrent_dropout=0.3)),
                                                          ("RNN", dict(nonlinearity="relu", recurrent_dropout=0.3))]]


@needs_fused
@pytest.mark.parametrize("hidden", [8, 32])
@pytest.mark.parametrize("cell, variant, path", SPLIT_CASES)
def test_rows_split_among_threads_give_the_same_gradients(cell, variant, path, hidden, monkeypatch):
    """A batch of 29 rows (above the kernels' PARALLEL_ROWS, not a multiple of the thread count, too few for
    slices of rows on two threads): each step's rows split among threads agree with the PyTorch ops, and two runs
    agree bit for bit. With hidden size 32 the recurrent products are large enough to be split among threads too
    (by panels of columns, see Repeated)."""
    torch.manual_seed(0)
    layer = LAYERS[cell](5, hidden, batch_first=True, bidirectional=True, impl="engine", dtype=torch.float64,
                         **variant)
    layer.train("recurrent_dropout" in variant)
    x = torch.randn(29, 6, 5, dtype=torch.float64)
    lengths = torch.randint(1, 7, (29,))
    runs = []
    for which in (path, path, "ops"):
        torch.manual_seed(1)
        runs.append(_run(layer, x, lengths, which, monkeypatch))
    for a, b, c in zip(*runs):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-10)


def _infer(layer, x, lengths, path: str, monkeypatch, hx=None):
    """Inference (eval, no grad) by `path`; asserts which C++ entry ran ("sequence": one call per direction
    and layer, the input projection included)."""
    with monkeypatch.context() as m:
        calls = _counting(m, path)
        with torch.no_grad():
            out, finals = layer.eval()(x, hx, lengths=lengths)
    ran = {name: n for name, n in calls.items() if n}
    if path == "step":
        assert set(ran) == _entries(layer, path, backward=False)
    else:
        assert ran == ({name: 4 for name in _entries(layer, path, backward=False)})
    return out, *(finals if isinstance(finals, tuple) else (finals,))


INFERENCE_CASES = [case("LSTM", v, path) for v in VARIANTS[:-1] for path in ("sequence", "step")]
INFERENCE_CASES += [case(cell, v, "sequence") for cell, v in CELL_VARIANTS if "recurrent_dropout" not in v]


@needs_fused
@pytest.mark.parametrize("input_size", [5, 11])
@pytest.mark.parametrize("cell, variant, path", INFERENCE_CASES)
def test_fused_inference_equals_the_pytorch_ops(cell, variant, path, input_size, monkeypatch):
    """Inference of a two-layer bidirectional layer with variable lengths (one zero) and initial states, the
    input projected a few steps at a time (a chunk size that does not divide the length), or by the LSTM with each
    step (in its product, or apart with layer norm) where the batch (5) is over half the input's width: the same
    outputs and final states as the PyTorch ops, 1e-12 in float64."""
    torch.manual_seed(0)
    layer = LAYERS[cell](input_size, 8, 2, batch_first=True, bidirectional=True, impl="engine", dtype=torch.float64,
                         **variant)
    G = layer.cell.gates  # 3 steps of (5, G*8) float64 per chunk
    monkeypatch.setattr(rnnkit.nn.layers, "INFERENCE_CHUNK_BYTES", 3 * 5 * G * 8 * 8)
    x = torch.randn(5, 10, input_size, dtype=torch.float64)
    lengths = torch.tensor([10, 4, 0, 7, 1])
    hx = _initial_state(layer, 5, torch.float64)
    hx = hx if len(hx) == 2 else hx[0]
    got, want = _infer(layer, x, lengths, path, monkeypatch, hx), _infer(layer, x, lengths, "ops", monkeypatch, hx)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@needs_fused
@needs_gemm
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("variant", [dict(peephole=True, proj_size=5), dict(coupled=True, bias=False),
                                     dict(activation="softsign"), dict(layer_norm=True),
                                     dict(layer_norm=True, peephole=True, bias=False)], ids=variant_id)
def test_lstm_inference_split_among_threads_equals_the_pytorch_ops(variant, dtype, monkeypatch):
    """LSTM inference with products large enough to be split among threads (29 rows, hidden size 40: several
    panels, the last one partial; too few rows for slices on two threads), the input projected with each step: the PyTorch ops' outputs and final states
    (1e-10 in float64; float32 within twice the ops' own error against float64, + 1e-5)."""
    torch.manual_seed(0)
    x, lengths = torch.randn(29, 7, 6, dtype=torch.float64), torch.randint(1, 8, (29,))
    runs = {}
    for which, d in (("sequence", dtype), ("ops", dtype), ("exact", torch.float64)):
        torch.manual_seed(0)
        layer = rnnkit.LSTM(6, 40, batch_first=True, bidirectional=True, impl="engine", dtype=d, **variant)
        with monkeypatch.context() as m:
            calls = _counting(m, "ops" if which == "exact" else which)
            with torch.no_grad():
                out, (h, c) = layer.eval()(x.to(d), lengths=lengths)
        if which == "sequence":
            assert calls["lstm_sequence"] == 2
        runs[which] = [out.double(), h.double(), c.double()]
    for got, want, exact in zip(runs["sequence"], runs["ops"], runs["exact"]):
        if dtype == torch.float64:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        else:
            assert (got - exact).abs().max() <= 2 * (want - exact).abs().max() + 1e-5


@pytest.fixture
def three_threads():
    """PyTorch's (and the kernels' OpenMP) thread count set to 3 for the test (on any machine: it checks results,
    not speed), then restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(threads)


@needs_fused
def test_the_rows_are_sliced_by_row_steps(three_threads):
    """A sequence call's slices: one per thread from 16 rows per thread on, at multiples of a row block, each running
    about a third of the row-steps (within a block of rows' worth); fewer rows are not split."""
    assert fused.sequence_slices(47, 9) == [0, 47]
    for batch_sizes in ([96] * 9, [96] * 2 + [40] * 5 + [3] * 2, [96, 60, 20, 0]):
        starts = fused.sequence_slices(96, len(batch_sizes), batch_sizes)
        assert len(starts) == 4 and starts[0] == 0 and starts[-1] == 96 and starts == sorted(starts), starts
        assert any(all(r % block == 0 for r in starts) for block in (6, 8)), starts  # the kernel's MR: 6 or 8
        steps = [sum(min(max(bs - r0, 0), r1 - r0) for bs in batch_sizes) for r0, r1 in zip(starts, starts[1:])]
        assert max(abs(n - sum(steps) / 3) for n in steps) <= 8 * len(batch_sizes), (starts, steps)


SLICED_CASES = [("LSTM", v) for v in (dict(peephole=True, proj_size=5), dict(layer_norm=True, coupled=True),
                                      dict(layer_norm=True, recurrent_dropout=0.3), dict(activation="softsign"))]
SLICED_CASES += [("GRU", {}), ("GRU", dict(reset_after=False, recurrent_dropout=0.3)),
                 ("RNN", dict(nonlinearity="relu"))]


@needs_fused
@needs_gemm
@pytest.mark.parametrize("cell, variant", SLICED_CASES, ids=lambda v: variant_id(v) if isinstance(v, dict) else v)
def test_sequences_sliced_among_threads_equal_the_pytorch_ops(cell, variant, three_threads, monkeypatch):
    """53 rows on 3 threads, with lengths (one zero) and initial states: the sequence calls run as three slices of
    rows (uneven: at row blocks), in training (forward and backward: every gradient, bit for bit the same in two
    runs) and in inference (the input projected in chunks, or with each step by the LSTM), the same as the PyTorch
    ops, 1e-10 in float64."""
    torch.manual_seed(0)
    layer = LAYERS[cell](6, 20, 2, batch_first=True, bidirectional=True, impl="engine", dtype=torch.float64,
                         **variant)
    layer.train("recurrent_dropout" in variant)
    x, lengths = torch.randn(53, 9, 6, dtype=torch.float64), torch.randint(1, 10, (53,))
    lengths[7] = 0
    hx = _initial_state(layer, 53, torch.float64)
    assert len(fused.sequence_slices(53, 9, sorted(lengths.tolist(), reverse=True))) == 4
    runs = []
    for which in ("sequence", "sequence", "ops"):
        torch.manual_seed(1)
        runs.append(_run(layer, x, lengths, which, monkeypatch, hx))
    got, again, want = runs
    assert all(torch.equal(a, b) for a, b in zip(got, again))  # the slices' sums added in one order
    hx = hx if len(hx) == 2 else hx[0]
    got += _infer(layer, x, lengths, "sequence", monkeypatch, hx)
    want += _infer(layer, x, lengths, "ops", monkeypatch, hx)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@needs_fused
@pytest.mark.parametrize("width", [3, 40])  # G*H: under and over the moments' vectors of partial sums
def test_layer_norm_moments_of_rows_far_from_zero_keep_their_precision(width):
    """Rows of a = h W_hh^T whose mean is ten thousand times their spread: the gate math's one-pass moments
    (shifted by a value of the row) stay within a few times the error of PyTorch's float32 moments, against
    float64's (a plain sum of squares would lose every digit of the variance)."""
    torch.manual_seed(0)
    B, H = 6, width
    a = 1000 + 0.1 * torch.randn(B, 4 * H, dtype=torch.float64)
    var, mean = torch.var_mean(a, -1, correction=0)
    exact = torch.stack([mean, (var + 1e-5).rsqrt()], 1)
    var32, mean32 = torch.var_mean(a.float(), -1, correction=0)
    reference = torch.stack([mean32, (var32 + 1e-5).rsqrt()], 1).double()
    ones = torch.ones(4 * H)
    _, _, _, stats = fused.lstm_forward(torch.randn(B, 4 * H), torch.randn(B, H), None, False, False,
                                        ln=(a.float(), ones, ones[:H], None))
    error, reference_error = (stats[:, :2].double() - exact).abs(), (reference - exact).abs()
    assert (error <= 4 * reference_error.max(0).values + 1e-3 * exact.abs()).all(), (error, reference_error)


SATURATING = [case("LSTM", dict(peephole=True), path) for path in ("sequence", "step")]
SATURATING += [case(cell, v, "sequence") for cell, v in [("GRU", {}), ("GRU", dict(reset_after=False)),
                                                         ("RNN", {}), ("RNN", dict(nonlinearity="relu"))]]


@needs_fused
@pytest.mark.parametrize("cell, variant, path", SATURATING)
@pytest.mark.parametrize("scale", [30.0, 1000.0])
def test_fused_saturates_like_torch(scale, cell, variant, path, monkeypatch):
    """Pre-activations far past the sigmoid's and tanh's saturation, where the written-out exp is clamped."""
    torch.manual_seed(1)
    layer = LAYERS[cell](3, 6, impl="engine", dtype=torch.float64, **variant)
    x = scale * torch.randn(10, 2, 3, dtype=torch.float64)
    got, want = _run(layer, x, None, path, monkeypatch), _run(layer, x, None, "ops", monkeypatch)
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@needs_fused
@pytest.mark.parametrize("cell, variant, path", SATURATING)
def test_fused_propagates_nan(cell, variant, path, monkeypatch):
    if path == "step":
        monkeypatch.setattr(fused, "gemm_address", lambda dtype: None)
    layer = LAYERS[cell](3, 4, impl="engine", **variant)
    x = torch.randn(5, 2, 3)
    x[2, 0, 1] = float("nan")
    with torch.no_grad():
        out, _ = layer(x)
    assert torch.isnan(out[2:, 0]).all() and torch.isfinite(out[:, 1]).all() and torch.isfinite(out[:2]).all()


@needs_fused
def test_fused_is_not_used_where_it_cannot_be(monkeypatch):
    calls = []
    for name in ("lstm_forward", "lstm_sequence", "gru_sequence", "rnn_sequence"):
        monkeypatch.setattr(fused, name, lambda *a, fn=getattr(fused, name), **k: calls.append(1) or fn(*a, **k))
    x = torch.randn(4, 2, 3)
    for layer in LAYERS.values():
        layer(3, 4, impl="autograd")(x)  # autograd records the PyTorch ops
        layer(3, 4, impl="engine", dtype=torch.bfloat16)(x.bfloat16())
    assert calls == []
    rnnkit.LSTM(3, 4, peephole=True, impl="engine")(x)
    assert len(calls) == (1 if fused.gemm_address(torch.float32) else 4)  # one sequence, or four steps


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


FALLBACK_CHECK = """
import torch, rnnkit
from rnnkit.kernels.cpu import fused
print(fused.library() is None, fused.unavailable_reason())
torch.manual_seed(0)
a = rnnkit.LSTM(3, 4, peephole=True, coupled=True, impl="engine", dtype=torch.float64)
b = rnnkit.LSTM(3, 4, peephole=True, coupled=True, impl="autograd", dtype=torch.float64)
b.load_state_dict(a.state_dict())
c = rnnkit.GRU(3, 4, reset_after=False, impl="engine", dtype=torch.float64)
d = rnnkit.GRU(3, 4, reset_after=False, impl="autograd", dtype=torch.float64)
d.load_state_dict(c.state_dict())
x = torch.randn(6, 2, 3, dtype=torch.float64)
same = []
for engine, reference in ((a, b), (c, d)):
    ga = torch.autograd.grad(engine(x)[0].sum(), list(engine.parameters()))
    gb = torch.autograd.grad(reference(x)[0].sum(), list(reference.parameters()))
    same += [torch.allclose(u, v, rtol=1e-12, atol=1e-12) for u, v in zip(ga, gb)]
print(all(same))
"""


@pytest.mark.parametrize("env, reason", [
    ({"RNNKIT_FUSED": "0"}, "disabled by RNNKIT_FUSED=0"),
    ({"CXX": "false", "PATH": ""}, "no C++ compiler found"),
    ({"CXX": "/bin/false"}, "/bin/false failed"),
])
def test_without_the_kernels_the_pytorch_ops_run(tmp_path, env, reason):
    if env.get("CXX") == "/bin/false" and not os.path.exists("/bin/false"):
        pytest.skip("/bin/false not found")
    done = _python(FALLBACK_CHECK, RNNKIT_CACHE=str(tmp_path), **env)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first.startswith("True") and reason in first and second == "True"
    assert list(tmp_path.iterdir()) == []  # nothing half-built left in the cache


@needs_fused
def test_a_compiler_without_openmp_builds_the_single_threaded_loops(tmp_path):
    """-fopenmp refused (as by a compiler without OpenMP): the kernels are built without it, still used, and
    cached under their own name, so later processes do not try OpenMP again."""
    wrapper = tmp_path / "cxx"
    wrapper.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\nexec c++ "$@"\n')
    wrapper.chmod(0o755)
    cache = tmp_path / "cache"
    done = _python(FALLBACK_CHECK, RNNKIT_CACHE=str(cache), CXX=str(wrapper))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["False None", "True"]
    assert [p.name.endswith("-fopenmp-simd.so") for p in cache.iterdir()] == [True]


@needs_fused
def test_the_build_is_cached_per_source(tmp_path):
    code = "from rnnkit.kernels.cpu import fused; print(fused.library() is not None)"
    for _ in range(2):
        done = _python(code, RNNKIT_CACHE=str(tmp_path))
        assert done.stdout.strip() == "True", done.stderr
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].name.startswith("fused-") and built[0].suffix == ".so"


@needs_fused
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 4e-16), (torch.float32, 3e-7)])
@pytest.mark.parametrize("softsign", [False, True])
def test_the_written_out_gate_functions_are_accurate(dtype, tol, softsign):
    """sigmoid and tanh (from the kernel's own exp) against torch's, to a few units in the last place."""
    H = 4001
    v = torch.linspace(-30, 30, H, dtype=torch.float64)
    gates = torch.stack([v, v.flip(0), v / 3, -v / 7]).reshape(1, 4 * H).to(dtype)
    expect = gates.double().reshape(4, H)
    act = (lambda t: t / (1 + t.abs())) if softsign else torch.tanh
    expect = torch.stack([expect[0].sigmoid(), expect[1].sigmoid(), act(expect[2]), expect[3].sigmoid()])
    c = torch.zeros(1, H, dtype=dtype)
    c_new, act_c, h, _ = fused.lstm_forward(gates, c, None, False, softsign)
    assert (gates.double().reshape(4, H) - expect).abs().max() <= tol
    torch.testing.assert_close(c_new.double()[0], expect[0] * expect[2], rtol=0, atol=2 * tol)


@needs_fused
def test_a_traced_layer_records_the_pytorch_ops():
    class Outputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = rnnkit.LSTM(3, 4, peephole=True, coupled=True, impl="engine")

        def forward(self, x):
            return self.layer(x)[0]

    layer = Outputs().eval()
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        traced = torch.jit.trace(layer, (x,), check_trace=False)
        y = torch.randn(5, 2, 3)  # a trace is for one length (it unrolls the time loop)
        torch.testing.assert_close(traced(y), layer(y))


@needs_fused
def test_an_unwritable_cache_builds_in_the_temporary_directory(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    done = _python("from rnnkit.kernels.cpu import fused; print(fused.library() is not None)", RNNKIT_CACHE=str(blocked / "cache"),
                   TMPDIR=str(tmp_path))
    assert done.stdout.strip() == "True", done.stderr
    assert [p.name.startswith("rnnkit-") for p in tmp_path.iterdir() if p.is_dir()] == [True]


@needs_fused
@pytest.mark.parametrize("path", FUSED_PATHS)
def test_layer_norm_weight_gradient_summed_per_step_and_at_the_end(path, monkeypatch):
    """W_hh's gradient is summed step by step while a step has at least cells.SUM_PER_STEP_ROWS rows, and
    kept for one product at the end below that: lengths that cross the threshold use both."""
    from rnnkit.engine.cells import SUM_PER_STEP_ROWS

    torch.manual_seed(3)
    B = SUM_PER_STEP_ROWS + 6
    layer = rnnkit.LSTM(3, 5, batch_first=True, bidirectional=True, layer_norm=True, impl="engine",
                        dtype=torch.float64)
    x = torch.randn(B, 8, 3, dtype=torch.float64)
    lengths = torch.tensor([8] * 4 + [5] * 4 + [3] * (B - 8))  # 22 rows for 3 steps, then 8, then 4
    got, want = _run(layer, x, lengths, path, monkeypatch), _run(layer, x, lengths, "ops", monkeypatch)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@needs_fused
def test_a_gemm_that_fails_its_check_is_not_used(monkeypatch):
    """gemm_address checks the exported gemm on a small product: one that disagrees is never called, and the
    layers run the per-step kernels instead, with the same results."""
    monkeypatch.setattr(fused, "_gemm", None)
    monkeypatch.setattr(fused, "_check_gemm", lambda address, dtype: False)
    assert fused.gemm_address(torch.float32) is None and fused.gemm_address(torch.float64) is None
    calls = []
    for name in COUNTED:
        monkeypatch.setattr(fused, name, lambda *a, fn=getattr(fused, name), name=name, **k: calls.append(name)
                            or fn(*a, **k))
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    # the LSTM's loop calls its per-step kernels (inference, then a train step); GRU and RNN run PyTorch's ops
    lstm_steps = ["lstm_backward"] * 6 + ["lstm_forward"] * 12  # sorted
    for layer, expected in [(rnnkit.LSTM(3, 4, peephole=True, impl="engine", dtype=torch.float64), lstm_steps),
                            (rnnkit.GRU(3, 4, impl="engine", dtype=torch.float64), []),
                            (rnnkit.RNN(3, 4, impl="engine", dtype=torch.float64), [])]:
        calls.clear()
        with torch.no_grad():
            got = layer(x)[0]
        got_grads = torch.autograd.grad(layer(x)[0].sum(), list(layer.parameters()))
        assert sorted(calls) == expected
        with monkeypatch.context() as m:
            m.setattr(fused, "usable", lambda *tensors: False)
            with torch.no_grad():
                torch.testing.assert_close(got, layer(x)[0], rtol=1e-12, atol=1e-12)
            for a, b in zip(got_grads, torch.autograd.grad(layer(x)[0].sum(), list(layer.parameters()))):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@needs_gemm
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_exported_gemm_passes_its_check(dtype):
    assert fused._check_gemm(fused.gemm_address(dtype), dtype)


# (m, k, n): a batch of one, edge tiles in both directions (rows past the last block of rows, columns past the last
# panel), k = 1, and sizes large enough for the panels to be split among threads
PRODUCT_SHAPES = [(1, 7, 5), (1, 512, 300), (3, 1, 17), (9, 33, 45), (64, 96, 130), (33, 128, 512)]


@needs_gemm
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m, k, n", PRODUCT_SHAPES)
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("packed", [True, False])
def test_the_repeated_products_equal_matmul(dtype, m, k, n, transposed, packed):
    """A sequence's products with the right operand packed into panels once (or through the gemm), against
    torch.matmul in float64: from strided rows (a view inside a wider tensor), written and accumulated, repeated."""
    g = torch.Generator().manual_seed(m * 1000 + k * 10 + n)
    a = torch.randn(m, k + 3, generator=g, dtype=torch.float64)[:, 2:2 + k]
    b = torch.randn(n, k + 1, generator=g, dtype=torch.float64)[:, :k] if transposed else \
        torch.randn(k, n + 2, generator=g, dtype=torch.float64)[:, 1:1 + n]
    c0 = torch.randn(m, n + 4, generator=g, dtype=torch.float64)
    expected = a @ (b.T if transposed else b)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5 * k ** 0.5)
    out = c0.to(dtype, copy=True)[:, :n]
    fused.repeated_product(a.to(dtype), b.to(dtype), out, transposed=transposed, packed=packed)
    torch.testing.assert_close(out.double(), expected, **tol)
    full = c0.to(dtype, copy=True)
    out = full[:, :n]
    fused.repeated_product(a.to(dtype), b.to(dtype), out, transposed=transposed, packed=packed, accumulate=True,
                           times=3)
    torch.testing.assert_close(out.double(), c0[:, :n] + 3 * expected, **tol)
    assert torch.equal(full[:, n:], c0.to(dtype)[:, n:])  # the columns past n: untouched


# (k, m, n) of a^T b: no rows, one, rows past a block of the sum (128) and past several, a gradient's shapes
# (T*B, G*H, H) split among threads, edge tiles in both directions
SUM_SHAPES = [(0, 5, 7), (1, 9, 33), (129, 1, 3), (300, 37, 45), (700, 64, 130), (3584, 48, 40)]


@needs_gemm
@pytest.mark.parametrize("kernel", fused.SUM_KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k, m, n", SUM_SHAPES)
def test_the_summed_products_equal_matmul(dtype, k, m, n, kernel):
    """a^T b summed over a's and b's rows (the sequence calls' weight gradients) on the panel kernel and through the
    BLAS gemm, against torch.matmul in float64: from strided rows (a view inside a wider tensor), written and
    accumulated."""
    g = torch.Generator().manual_seed(k * 1000 + m * 10 + n)
    a = torch.randn(k, m + 3, generator=g, dtype=torch.float64)[:, 2:2 + m]
    b = torch.randn(k, n + 1, generator=g, dtype=torch.float64)[:, :n]
    c0 = torch.randn(m, n + 4, generator=g, dtype=torch.float64)
    expected = a.T @ b
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5 * k ** 0.5)
    got = fused.summed_product(a.to(dtype), b.to(dtype), kernel=kernel)
    assert got.shape == (m, n) and got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, **tol)
    full = c0.to(dtype, copy=True)
    assert fused.summed_product(a.to(dtype), b.to(dtype), full[:, :n], kernel).data_ptr() == full.data_ptr()
    torch.testing.assert_close(full[:, :n].double(), c0[:, :n] + expected, **tol)
    assert torch.equal(full[:, n:], c0.to(dtype)[:, n:])  # the columns past n: untouched


def test_a_summed_product_names_what_does_not_match():
    with pytest.raises(ValueError, match=r"shapes \(4, 3\), \(5, 2\)"):
        fused.summed_product(torch.zeros(4, 3), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="stride 1"):
        fused.summed_product(torch.zeros(3, 4).T, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="dtype"):
        fused.summed_product(torch.zeros(4, 3), torch.zeros(4, 2), torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="kernel must be one of .* got 'mkl'"):
        fused.summed_product(torch.zeros(4, 3), torch.zeros(4, 2), kernel="mkl")


@needs_gemm
def test_the_sums_kernel_is_timed_once_or_set_by_the_environment(monkeypatch):
    """Without RNNKIT_SUMS the faster kernel on this machine, chosen once per dtype and then kept; with it, the one
    named; a name it does not know is an error naming the value."""
    monkeypatch.setattr(fused, "_sum_kernels", {})
    monkeypatch.delenv("RNNKIT_SUMS", raising=False)
    timed = fused.sums_kernel(torch.float32)
    assert timed in fused.SUM_KERNELS
    monkeypatch.setenv("RNNKIT_SUMS", "rnnkit" if timed == "blas" else "blas")
    assert fused.sums_kernel(torch.float32) == timed  # kept for the process
    for name in fused.SUM_KERNELS:
        monkeypatch.setattr(fused, "_sum_kernels", {})
        monkeypatch.setenv("RNNKIT_SUMS", name)
        assert fused.sums_kernel(torch.float64) == name
        assert (fused._sum_gemm(torch.float64) is None) == (name == "rnnkit")
    monkeypatch.setattr(fused, "_sum_kernels", {})
    monkeypatch.setenv("RNNKIT_SUMS", "mkl")
    with pytest.raises(ValueError, match="RNNKIT_SUMS must be one of .* got 'mkl'"):
        fused.sums_kernel(torch.float32)


@needs_gemm
@pytest.mark.parametrize("kernel", fused.SUM_KERNELS)
@pytest.mark.parametrize("cell, variant", [("LSTM", dict(layer_norm=True, proj_size=3)), ("LSTM", dict(peephole=True)),
                                           ("GRU", dict(reset_after=False)), ("RNN", {})])
def test_the_sequence_gradients_are_the_same_with_either_sums_kernel(cell, variant, kernel, monkeypatch):
    """The weight gradients' sums (W_hh's, W_hr's, layer norm's chunks in the C++ loop, the GRU's W_hn) through
    either kernel: every gradient equals the PyTorch ops' to 1e-10 in float64."""
    monkeypatch.setattr(fused, "_sum_kernels", {torch.float32: kernel, torch.float64: kernel})
    monkeypatch.setattr(fused, "BACKWARD_CHUNK_BYTES", 3 * 5 * 4 * 8 * 8)
    _assert_fused_equals_the_ops(variant, "sequence", monkeypatch, cell)


NARROWER_CHECK = """
import torch
from rnnkit.kernels.cpu import fused
assert fused.library() is not None, fused.unavailable_reason()
g = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.float64):
    for m, k, n in [(1, 512, 300), (9, 33, 45), (64, 96, 130)]:
        a = torch.randn(m, k, generator=g, dtype=torch.float64)
        b = torch.randn(n, k, generator=g, dtype=torch.float64)
        out = torch.empty(m, n, dtype=dtype)
        fused.repeated_product(a.to(dtype), b.to(dtype), out, transposed=True)
        tol = 1e-12 if dtype == torch.float64 else 1e-5 * k ** 0.5
        torch.testing.assert_close(out.double(), a @ b.T, rtol=tol, atol=tol)
        a, b = torch.randn(300, m, generator=g, dtype=torch.float64), torch.randn(300, n, generator=g, dtype=torch.float64)
        out = fused.summed_product(a.to(dtype), b.to(dtype), kernel="rnnkit")
        torch.testing.assert_close(out.double(), a.T @ b, rtol=tol, atol=tol * 3)
print("ok")
"""


@needs_gemm
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 instruction sets")
@pytest.mark.parametrize("narrower", ["-mno-avx512f", "-mno-avx"])
def test_the_products_built_for_narrower_vectors_equal_matmul(tmp_path, narrower):
    """The panel kernel's other tile shapes (AVX2's and SSE's: 6 rows of two 32- or 16-byte vectors), built here
    by a compiler told not to use the wider instructions, against matmul in float64."""
    wrapper = tmp_path / "cxx"
    wrapper.write_text(f'#!/bin/sh\nexec c++ "$@" {narrower}\n')
    wrapper.chmod(0o755)
    done = _python(NARROWER_CHECK, RNNKIT_CACHE=str(tmp_path / "cache"), CXX=str(wrapper))
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
