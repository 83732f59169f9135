"""What the Triton kernels share: the tiled recurrent product, the activations, and the launch configuration.

Imported only where Triton is (rnnkit.kernels.triton.available()). Shapes: B batch, T time, H hidden, P = the size
of h, G gates; the legend of the project.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

EPS = 1e-5  # cells.LN_EPS
INTERPRETED = triton.knobs.runtime.interpret  # read once: @triton.jit decides interpreted or compiled at definition

# activation codes, as the kernels' ACT argument
TANH, SOFTSIGN, RELU = 0, 1, 2
ACTIVATION_CODES = {"tanh": TANH, "softsign": SOFTSIGN, "relu": RELU}


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def activation(x, ACT: tl.constexpr):
    """tanh, softsign or relu of x (tanh from exp(-2|x|), which neither overflows nor loses the sign)."""
    if ACT == 0:
        e = tl.exp(-2.0 * tl.abs(x))
        y = (1.0 - e) / (1.0 + e)
        y = tl.where(x < 0, -y, y)
    elif ACT == 1:
        y = x / (1.0 + tl.abs(x))
    else:
        y = tl.maximum(x, 0.0)
    return y


@triton.jit
def activation_backward(d, y, ACT: tl.constexpr):
    """d * act'(v) in terms of y = act(v), as cells.ACTIVATIONS."""
    if ACT == 0:
        r = d * (1.0 - y * y)
    elif ACT == 1:
        s = 1.0 - tl.abs(y)
        r = d * s * s
    else:
        r = tl.where(y > 0, d, 0.0)
    return r


@triton.jit
def product(x_ptr, x_stride, K, rows, row_ok, w_ptr, w_stride_k, w_stride_n, cols, col_ok, m_ptr, m_stride,
            BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, MASK: tl.constexpr,
            DOT: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    """(BLOCK_B, BLOCK_N) in ACC: sum over k < K of x[row, k] (* m[row, k] with MASK) * W[k, col], W's element (k, n)
    at w_ptr + k * w_stride_k + n * w_stride_n. DOT: tl.dot, accumulating in float32 (PREC 1: IEEE float32 products,
    which would otherwise round to TF32; 2: the operands converted to float32 first); else a broadcast multiply and
    sum, for float64 (see the package docstring)."""
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        x_ok = row_ok[:, None] & k_ok[None, :]
        x = tl.load(x_ptr + rows[:, None] * x_stride + ks[None, :], mask=x_ok, other=0.0)
        if MASK:
            x = (x * tl.load(m_ptr + rows[:, None] * m_stride + ks[None, :], mask=x_ok, other=0.0)).to(x.dtype)
        w = tl.load(w_ptr + ks[:, None] * w_stride_k + cols[None, :] * w_stride_n,
                    mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if DOT:
            if PREC == 2:  # bfloat16 under the interpreter, whose tl.dot misreads it: exact products in float32
                acc += tl.dot(x.to(tl.float32), w.to(tl.float32), input_precision="ieee")
            elif PREC == 1:
                acc += tl.dot(x, w, input_precision="ieee")
            else:
                acc += tl.dot(x, w)
        else:
            acc += tl.sum(x.to(ACC)[:, :, None] * w.to(ACC)[None, :, :], axis=1)
    return acc


@triton.jit
def row_block(lengths, B, BLOCK_B: tl.constexpr):
    """This program's BLOCK_B batch rows: (rows, row_ok, each row's length, the steps the block runs)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    length = tl.load(lengths + rows, mask=row_ok, other=0)
    return rows, row_ok, length, tl.max(length, 0)


@triton.jit
def final_h_first(hbuf, rows, row_ok, steps, B, P, BLOCK_N: tl.constexpr):
    """hbuf (2, B, P) holds h_{t-1} and h_t in turn: after an odd number of steps the final h is in hbuf[1];
    copy it to hbuf[0], where the caller reads it."""
    if steps % 2 == 1:
        for n0 in range(0, P, BLOCK_N):
            v = n0 + tl.arange(0, BLOCK_N)
            offsets = rows[:, None] * P + v[None, :]
            ok = row_ok[:, None] & (v < P)[None, :]
            tl.store(hbuf + offsets, tl.load(hbuf + B * P + offsets, mask=ok), mask=ok)


@triton.jit
def load_previous(out_ptr, h0_ptr, t, step_stride, offsets, ok):
    """h_{t-1} at `offsets` of a (B, P) row block: out[t - 1] for t > 0, else h0 (two masked loads, no branch)."""
    t_each = offsets * 0 + t  # t as a tensor of the tile's shape, for the masks
    prev = tl.load(out_ptr + tl.cast(t - 1, tl.int64) * step_stride + offsets, mask=ok & (t_each > 0), other=0.0)
    first = tl.load(h0_ptr + offsets, mask=ok & (t_each == 0), other=0.0)
    return prev + first


@dataclass(frozen=True)
class Launch:
    """Block sizes and product mode for one dtype on one device."""

    block_b: int
    block_n: int
    block_k: int
    dot: bool
    precision: int  # product()'s PREC
    acc: object  # tl.float32 or tl.float64

    def grid(self, B: int) -> tuple[int]:
        return (triton.cdiv(B, self.block_b),)

    def options(self) -> dict:
        return dict(BLOCK_B=self.block_b, BLOCK_N=self.block_n, BLOCK_K=self.block_k, DOT=self.dot, PREC=self.precision,
                    ACC=self.acc)


SUPPORTED = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def launch(dtype: torch.dtype, hidden: int) -> Launch:
    """tl.dot needs tiles of at least 16 in each dimension; float64 takes the broadcast product (tl.dot's float64
    support varies by GPU and Triton version), with a smaller K tile so that its (B, K, N) product fits in registers."""
    if dtype not in SUPPORTED:
        raise TypeError(f"the Triton kernels take {', '.join(map(str, SUPPORTED))}; got {dtype}")
    block_n = max(16, min(64, triton.next_power_of_2(hidden)))
    if dtype == torch.float64:
        return Launch(16, min(block_n, 32), 8, False, 0, tl.float64)
    precision = 1 if dtype == torch.float32 else 2 if dtype == torch.bfloat16 and INTERPRETED else 0
    return Launch(16, block_n, 32, True, precision, tl.float32)


def lengths_of(batch_sizes: list[int] | None, B: int, T: int, device) -> Tensor:
    """Each row's length (int32, on `device`) from the engine's batch_sizes (rows sorted longest first): the kernels
    test t < length[row], so they need no sorting; every row runs all T steps without batch_sizes."""
    if batch_sizes is None:
        return torch.full((B,), T, dtype=torch.int32, device=device)
    sizes = torch.tensor(batch_sizes, dtype=torch.int64)
    lengths = (sizes[None, :] > torch.arange(B)[:, None]).sum(1)  # (B,)
    return lengths.to(device=device, dtype=torch.int32)


def check_device(*tensors: Tensor) -> None:
    """CUDA tensors, or CPU tensors under Triton's interpreter (TRITON_INTERPRET=1 before the kernels were defined)."""
    device = tensors[0].device
    if device.type == "cpu" and not INTERPRETED:
        raise RuntimeError("the Triton kernels run on CUDA tensors, or on CPU tensors only under Triton's interpreter "
                           "(set TRITON_INTERPRET=1 before rnnkit.kernels.triton is first used)")
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"the Triton kernels run on CUDA tensors; got a tensor on {device}")
    for t in tensors:
        if t is not None and t.device != device:
            raise RuntimeError(f"all tensors must be on {device}; got one on {t.device}")


def times_h_r(d_pre: Tensor, h0: Tensor, out: Tensor, mask: Tensor | None) -> Tensor:
    """sum over t of d_pre[t]^T h_r[t], h_r[t] = h_{t-1} * mask (h_{t-1} = out[t - 1], h0 at t = 0): the gradient of
    the W_hh rows whose pre-activation gradient is d_pre (T, B, n); one matrix product over all steps. Rows past
    their end have d_pre = 0 there (and out = 0)."""
    total = d_pre[0].T @ (h0 if mask is None else h0 * mask)
    if len(d_pre) > 1:
        prev = out[:-1] if mask is None else out[:-1] * mask
        total = total + d_pre[1:].flatten(0, 1).T @ prev.flatten(0, 1)
    return total
