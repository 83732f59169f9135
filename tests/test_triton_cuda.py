"""On a GPU: the compiled Triton kernels (impl="triton") against the engine's loop of PyTorch ops on CUDA, and the
standard configurations against cuDNN. Skipped without CUDA or without the triton package (benchmarks/bench_gpu.py
runs this file on the GPU; tests/test_triton.py runs the same kernels on the CPU through Triton's interpreter)."""
import pytest
import torch

if not torch.cuda.is_available():  # skipped before triton is imported (see conftest.py)
    pytest.skip("needs a CUDA device", allow_module_level=True)
pytest.importorskip("triton", reason="the optional triton package (the gpu extra) is not installed")

import rnnkit  # noqa: E402
from conftest import assert_rel  # noqa: E402

if __import__("rnnkit.kernels.triton._common").kernels.triton._common.INTERPRETED:
    pytest.skip("TRITON_INTERPRET=1: the kernels are interpreted in this process, not compiled for the GPU",
                allow_module_level=True)

CUDA = torch.device("cuda")
VARIANTS = [
    ("LSTM", {}), ("LSTM", dict(peephole=True, coupled=True, activation="softsign")),
    ("LSTM", dict(layer_norm=True, proj_size=24, peephole=True, recurrent_dropout=0.3)),
    ("LSTM", dict(layer_norm=True, coupled=True, bias=False)), ("LSTM", dict(proj_size=40)),
    ("GRU", {}), ("GRU", dict(reset_after=False, activation="softsign", recurrent_dropout=0.3)),
    ("RNN", dict(nonlinearity="relu")), ("RNN", dict(nonlinearity="softsign", recurrent_dropout=0.3)),
]
LAYERS = {"LSTM": rnnkit.LSTM, "GRU": rnnkit.GRU, "RNN": rnnkit.RNN}


def _run(layer, impl, x, hx, lengths):
    layer.impl = impl
    x = x.detach().requires_grad_()
    hx = tuple(s.detach().requires_grad_() for s in hx)
    torch.manual_seed(1)
    out, finals = layer(x, hx if len(hx) == 2 else hx[0], lengths=lengths)
    finals = finals if isinstance(finals, tuple) else (finals,)
    loss = (out * torch.linspace(-1, 1, out.shape[-1], dtype=x.dtype, device=x.device)).square().sum()
    loss = loss + sum((k + 1) * s.sum() for k, s in enumerate(finals))
    return (out, *finals, *torch.autograd.grad(loss, [x, *hx, *layer.parameters()]))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("cell,variant", VARIANTS, ids=lambda v: str(v))
def test_triton_equals_the_engine_on_cuda(cell, variant, dtype, tol):
    """Two layers, bidirectional, batch_first, lengths with a zero, initial states; H = 48 (several tiles)."""
    torch.manual_seed(0)
    layer = LAYERS[cell](5, 48, 2, batch_first=True, bidirectional=True, device=CUDA, dtype=dtype, **variant)
    layer.train("recurrent_dropout" in variant)
    B = 19  # two programs of 16 rows, the second partly empty
    x = torch.randn(B, 7, 5, device=CUDA, dtype=dtype)
    lengths = torch.randint(0, 8, (B,), device=CUDA)
    lengths[0] = 0
    sizes = [layer.proj_size or 48] + ([48] if cell == "LSTM" else [])
    hx = tuple(torch.randn(4, B, n, device=CUDA, dtype=dtype) for n in sizes)
    got, want = _run(layer, "triton", x, hx, lengths), _run(layer, "autograd", x, hx, lengths)
    for a, b in zip(got, want, strict=True):
        assert_rel(a, b, tol, "triton vs engine")  # torch.matmul on CUDA does not use TF32 by default


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_on_cuda(dtype):
    layer = rnnkit.LSTM(16, 64, batch_first=True, layer_norm=True, device=CUDA, dtype=dtype, impl="triton")
    out = layer(torch.randn(8, 20, 16, device=CUDA, dtype=dtype))[0]
    out.float().sum().backward()
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("cls,ref_cls", [(rnnkit.LSTM, torch.nn.LSTM), (rnnkit.GRU, torch.nn.GRU),
                                         (rnnkit.RNN, torch.nn.RNN)])
def test_triton_parity_with_cudnn(cls, ref_cls):
    ref = ref_cls(3, 40, 2, bidirectional=True, batch_first=True, device=CUDA, dtype=torch.float64)
    ours = cls(3, 40, 2, bidirectional=True, batch_first=True, device=CUDA, dtype=torch.float64, impl="triton")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 6, 3, device=CUDA, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 2, 5, 1])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    ref_out = torch.nn.utils.rnn.pad_packed_sequence(ref(packed)[0], batch_first=True, total_length=6)[0]
    out = ours(x, lengths=lengths)[0]
    assert_rel(out, ref_out, 1e-10, "output")
    g = torch.randn_like(out)
    assert_rel(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref_out, x, g)[0], 1e-10, "grad input")


def test_auto_picks_triton_for_variants_on_cuda(monkeypatch):
    from rnnkit.engine import dispatch
    chosen = []
    choose = dispatch.choose
    monkeypatch.setattr(dispatch, "choose", lambda *a, **k: chosen.append(choose(*a, **k)) or chosen[-1])
    rnnkit.GRU(3, 8, reset_after=False, device=CUDA)(torch.randn(5, 2, 3, device=CUDA))
    rnnkit.GRU(3, 8, device=CUDA)(torch.randn(5, 2, 3, device=CUDA))
    assert chosen == ["triton", "native"]
