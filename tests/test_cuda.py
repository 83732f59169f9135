"""On a GPU: every path runs on CUDA unchanged and agrees with torch.nn (cuDNN). Skipped without CUDA."""
import pytest
import torch

import rnnkit
from conftest import assert_rel

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("impl", ["native", "engine", "autograd"])
@pytest.mark.parametrize("cls,ref_cls", [(rnnkit.LSTM, torch.nn.LSTM), (rnnkit.GRU, torch.nn.GRU),
                                         (rnnkit.RNN, torch.nn.RNN)])
def test_parity_with_cudnn(cls, ref_cls, impl):
    ref = ref_cls(3, 8, 2, bidirectional=True, batch_first=True, device=CUDA, dtype=torch.float64)
    ours = cls(3, 8, 2, bidirectional=True, batch_first=True, device=CUDA, dtype=torch.float64, impl=impl)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 6, 3, device=CUDA, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 2, 5, 1], device=CUDA)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    ref_out = torch.nn.utils.rnn.pad_packed_sequence(ref(packed)[0], batch_first=True, total_length=6)[0]
    out = ours(x, lengths=lengths)[0]
    assert_rel(out, ref_out, 1e-10, "output")
    g = torch.randn_like(out)
    assert_rel(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref_out, x, g)[0], 1e-10, "grad input")


@pytest.mark.parametrize("layer", [
    lambda: rnnkit.LSTM(3, 8, peephole=True, coupled=True, layer_norm=True, proj_size=4, recurrent_dropout=0.2),
    lambda: rnnkit.GRU(3, 8, reset_after=False, activation="softsign"),
    lambda: rnnkit.MinGRU(3, 8, 2, mode="parallel"),
    lambda: rnnkit.MinLSTM(3, 8, 2, mode="sequential"),
])
def test_variants_run_on_cuda(layer):
    m = layer().to(CUDA)
    x = torch.randn(5, 2, 3, device=CUDA)
    out = m(x)[0]
    out.sum().backward()
    assert out.device.type == "cuda" and all(p.grad.device.type == "cuda" for p in m.parameters())
