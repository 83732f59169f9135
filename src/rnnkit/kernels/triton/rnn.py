"""The Elman RNN over a whole sequence in one Triton launch each way (cells.RNNStep's math):

    h_t = act(xp_t + (h_{t-1} * mask) W_hh^T),   act in {tanh, relu, softsign}

xp (T, B, H) holds x W_ih^T + b_ih + b_hh, made before the loop (the engine's input projection).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import (ACTIVATION_CODES, activation, activation_backward, check_device, final_h_first, launch,
                      lengths_of, product, row_block, times_h_r)


@triton.jit
def _rnn_forward(xp, hbuf, out, w_hh, mask, lengths, T, B, H,
                 ACT: tl.constexpr, MASK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    """One program per BLOCK_B rows runs every step: hbuf (2, B, H) holds h_{t-1} and h_t in turn (hbuf[0] = h0 in,
    the final h out); out (T, B, H), zero where a row has ended."""
    rows, row_ok, length, steps = row_block(lengths, B, BLOCK_B)
    BH = B * H
    for t in range(0, steps):
        cur = hbuf + (t % 2) * BH
        nxt = hbuf + ((t + 1) % 2) * BH
        active = row_ok & (t < length)
        for n0 in range(0, H, BLOCK_N):
            u = n0 + tl.arange(0, BLOCK_N)
            u_ok = u < H
            offsets = rows[:, None] * H + u[None, :]
            ok = row_ok[:, None] & u_ok[None, :]
            rec = product(cur, H, H, rows, row_ok, w_hh, 1, H, u, u_ok, mask, H,
                          BLOCK_B, BLOCK_N, BLOCK_K, MASK, DOT, PREC, ACC)
            pre = rec + tl.load(xp + tl.cast(t, tl.int64) * BH + offsets, mask=ok, other=0.0).to(ACC)
            h = activation(pre, ACT)
            new = tl.where(active[:, None], h, tl.load(cur + offsets, mask=ok, other=0.0).to(ACC))
            tl.store(nxt + offsets, new, mask=ok)
            tl.store(out + tl.cast(t, tl.int64) * BH + offsets, h, mask=ok & active[:, None])
        tl.debug_barrier()  # h_t complete before the next step reads it
    final_h_first(hbuf, rows, row_ok, steps, B, H, BLOCK_N)


@triton.jit
def _rnn_backward(d_out, dh, d_xp, out, w_hh, mask, lengths, T, B, H,
                  ACT: tl.constexpr, MASK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    """Backward in time: dh (B, H) holds the gradient of the carried h (of the final h in, of h0 out); d_xp (T, B, H)
    the gradient of each step's pre-activation (zero where a row has ended)."""
    rows, row_ok, length, steps = row_block(lengths, B, BLOCK_B)
    BH = B * H
    for back in range(0, steps):
        t = steps - 1 - back
        active = row_ok & (t < length)
        base = tl.cast(t, tl.int64) * BH
        for n0 in range(0, H, BLOCK_N):
            u = n0 + tl.arange(0, BLOCK_N)
            offsets = rows[:, None] * H + u[None, :]
            ok = active[:, None] & (u < H)[None, :]
            d_h = tl.load(dh + offsets, mask=ok, other=0.0).to(ACC) + tl.load(d_out + base + offsets, mask=ok,
                                                                               other=0.0).to(ACC)
            y = tl.load(out + base + offsets, mask=ok, other=0.0).to(ACC)
            tl.store(d_xp + base + offsets, activation_backward(d_h, y, ACT), mask=ok)
        tl.debug_barrier()
        for n0 in range(0, H, BLOCK_N):  # d_h_{t-1} = (d_pre W_hh) * mask
            u = n0 + tl.arange(0, BLOCK_N)
            u_ok = u < H
            offsets = rows[:, None] * H + u[None, :]
            ok = active[:, None] & u_ok[None, :]
            d_prev = product(d_xp + base, H, H, rows, row_ok, w_hh, H, 1, u, u_ok, mask, H,
                             BLOCK_B, BLOCK_N, BLOCK_K, False, DOT, PREC, ACC)
            if MASK:
                d_prev = d_prev * tl.load(mask + offsets, mask=ok, other=0.0).to(ACC)
            tl.store(dh + offsets, d_prev, mask=ok)
        tl.debug_barrier()


def rnn_sequence(xp: Tensor, h0: Tensor, w_hh: Tensor, mask: Tensor | None = None,
                 batch_sizes: list[int] | None = None, nonlinearity: str = "tanh", keep: bool = False):
    """One direction of an Elman RNN layer: xp (T, B, H), h0 (B, H), w_hh (H, H), mask (B, H) or None, batch_sizes as
    in rnnkit.engine. Returns out (T, B, H) (zero past each row's end), (h_n,), and with `keep` what
    rnn_sequence_backward needs (else None)."""
    check_device(xp, h0, w_hh, mask)
    T, B, H = xp.shape
    cfg = launch(xp.dtype, H)
    lengths = lengths_of(batch_sizes, B, T, xp.device)
    xp, w_hh = xp.contiguous(), w_hh.contiguous()
    mask = None if mask is None else mask.contiguous()
    hbuf = xp.new_empty(2, B, H)
    hbuf[0] = h0
    out = xp.new_zeros(T, B, H) if batch_sizes is not None else xp.new_empty(T, B, H)
    _rnn_forward[cfg.grid(B)](xp, hbuf, out, w_hh, mask if mask is not None else xp, lengths, T, B, H,
                              ACT=ACTIVATION_CODES[nonlinearity], MASK=mask is not None, **cfg.options())
    h_n = hbuf[0]
    saved = None
    if keep:
        saved = ([h0, out, w_hh, mask, lengths], {"nonlinearity": nonlinearity, "ragged": batch_sizes is not None})
    return out, (h_n,), saved


def rnn_sequence_backward(saved, d_out: Tensor, d_h: Tensor):
    """From rnn_sequence's kept values and the gradients of out (T, B, H) and of h_n (B, H): d_xp (T, B, H), (d_h0,),
    {"weight_hh": gradient}."""
    (h0, out, w_hh, mask, lengths), options = saved
    T, B, H = out.shape
    cfg = launch(out.dtype, H)
    d_out = d_out.contiguous()
    dh = d_h.clone(memory_format=torch.contiguous_format)
    d_xp = d_out.new_zeros(T, B, H) if options["ragged"] else d_out.new_empty(T, B, H)
    _rnn_backward[cfg.grid(B)](d_out, dh, d_xp, out, w_hh, mask if mask is not None else out, lengths, T, B, H,
                               ACT=ACTIVATION_CODES[options["nonlinearity"]], MASK=mask is not None, **cfg.options())
    return d_xp, (dh,), {"weight_hh": times_h_r(d_xp, h0, out, mask)}
