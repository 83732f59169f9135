"""The GRU over a whole sequence in one Triton launch each way (cells.GRUStep's math, both conventions):

    r  = sigmoid(xp_r + h_r W_hr^T [+ b_hr])
    z  = sigmoid(xp_z + h_r W_hz^T [+ b_hz])
    n  = act(xp_n + r * (h_r W_hn^T + b_hn))       reset_after (torch.nn, cuDNN): b_hh stays in the loop
    n  = act(xp_n + (r * h_r) W_hn^T)              reset before (Cho et al.): b_hh is hoisted into xp
    h' = (1 - z) * n + z * h

h_r = h * mask (recurrent dropout), act tanh or softsign; xp (T, B, 3H) holds x W_ih^T + b_ih (+ b_hh when hoisted).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import (ACTIVATION_CODES, activation, activation_backward, check_device, final_h_first, launch,
                      lengths_of, load_previous, product, row_block, sigmoid, times_h_r)


@triton.jit
def _gru_forward(xp, hbuf, out, w_hh, b_hh, mask, lengths, gates, extra, T, B, H,
                 RESET_AFTER: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, MASK: tl.constexpr,
                 KEEP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 DOT: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    """hbuf (2, B, H): h_{t-1} and h_t in turn (hbuf[0] = h0 in, the final h out); out (T, B, H). Kept per step (one
    step's worth without KEEP): gates (., B, 3H) = r, z, n activated; extra (., B, H) = h_r W_hn^T + b_hn
    (reset_after) or r * h_r (reset before, also the input of the n product)."""
    rows, row_ok, length, steps = row_block(lengths, B, BLOCK_B)
    BH = B * H
    for t in range(0, steps):
        cur = hbuf + (t % 2) * BH
        nxt = hbuf + ((t + 1) % 2) * BH
        active = row_ok & (t < length)
        kt = tl.cast(t * KEEP, tl.int64)
        x_t = xp + tl.cast(t, tl.int64) * (3 * BH)
        g_t = gates + kt * (3 * BH)
        e_t = extra + kt * BH
        if not RESET_AFTER:  # r and z first: the n product needs r * h_r of every unit
            for n0 in range(0, H, BLOCK_N):
                u = n0 + tl.arange(0, BLOCK_N)
                u_ok = u < H
                ok = row_ok[:, None] & u_ok[None, :]
                o3 = rows[:, None] * (3 * H) + u[None, :]
                o1 = rows[:, None] * H + u[None, :]
                r = sigmoid(tl.load(x_t + o3, mask=ok, other=0.0).to(ACC) + product(
                    cur, H, H, rows, row_ok, w_hh, 1, H, u, u_ok, mask, H,
                    BLOCK_B, BLOCK_N, BLOCK_K, MASK, DOT, PREC, ACC))
                z = sigmoid(tl.load(x_t + o3 + H, mask=ok, other=0.0).to(ACC) + product(
                    cur, H, H, rows, row_ok, w_hh + H * H, 1, H, u, u_ok, mask, H,
                    BLOCK_B, BLOCK_N, BLOCK_K, MASK, DOT, PREC, ACC))
                h_r = tl.load(cur + o1, mask=ok, other=0.0)
                if MASK:
                    h_r = (h_r * tl.load(mask + o1, mask=ok, other=0.0)).to(h_r.dtype)
                tl.store(g_t + o3, r, mask=ok)
                tl.store(g_t + o3 + H, z, mask=ok)
                tl.store(e_t + o1, r * h_r.to(ACC), mask=ok)
            tl.debug_barrier()
        for n0 in range(0, H, BLOCK_N):
            u = n0 + tl.arange(0, BLOCK_N)
            u_ok = u < H
            ok = row_ok[:, None] & u_ok[None, :]
            o3 = rows[:, None] * (3 * H) + u[None, :]
            o1 = rows[:, None] * H + u[None, :]
            if RESET_AFTER:
                rec_r = product(cur, H, H, rows, row_ok, w_hh, 1, H, u, u_ok, mask, H,
                                BLOCK_B, BLOCK_N, BLOCK_K, MASK, DOT, PREC, ACC)
                rec_z = product(cur, H, H, rows, row_ok, w_hh + H * H, 1, H, u, u_ok, mask, H,
                                BLOCK_B, BLOCK_N, BLOCK_K, MASK, DOT, PREC, ACC)
                rec_n = product(cur, H, H, rows, row_ok, w_hh + 2 * H * H, 1, H, u, u_ok, mask, H,
                                BLOCK_B, BLOCK_N, BLOCK_K, MASK, DOT, PREC, ACC)
                if HAS_BIAS:
                    rec_r += tl.load(b_hh + u, mask=u_ok, other=0.0).to(ACC)[None, :]
                    rec_z += tl.load(b_hh + H + u, mask=u_ok, other=0.0).to(ACC)[None, :]
                    rec_n += tl.load(b_hh + 2 * H + u, mask=u_ok, other=0.0).to(ACC)[None, :]
                r = sigmoid(tl.load(x_t + o3, mask=ok, other=0.0).to(ACC) + rec_r)
                z = sigmoid(tl.load(x_t + o3 + H, mask=ok, other=0.0).to(ACC) + rec_z)
                n = activation(tl.load(x_t + o3 + 2 * H, mask=ok, other=0.0).to(ACC) + r * rec_n, ACT)
                tl.store(g_t + o3, r, mask=ok)
                tl.store(g_t + o3 + H, z, mask=ok)
                tl.store(e_t + o1, rec_n, mask=ok)
            else:
                z = tl.load(g_t + o3 + H, mask=ok, other=0.0).to(ACC)
                n = activation(tl.load(x_t + o3 + 2 * H, mask=ok, other=0.0).to(ACC) + product(
                    e_t, H, H, rows, row_ok, w_hh + 2 * H * H, 1, H, u, u_ok, mask, H,
                    BLOCK_B, BLOCK_N, BLOCK_K, False, DOT, PREC, ACC), ACT)
            tl.store(g_t + o3 + 2 * H, n, mask=ok)
            h = tl.load(cur + o1, mask=ok, other=0.0).to(ACC)
            h_new = n + z * (h - n)
            tl.store(nxt + o1, tl.where(active[:, None], h_new, h), mask=ok)
            tl.store(out + tl.cast(t, tl.int64) * BH + o1, h_new, mask=ok & active[:, None])
        tl.debug_barrier()
    final_h_first(hbuf, rows, row_ok, steps, B, H, BLOCK_N)


@triton.jit
def _gru_backward(d_out, dh, d_xp, d_extra, out, h0, w_hh, mask, lengths, gates, extra, T, B, H,
                  RESET_AFTER: tl.constexpr, ACT: tl.constexpr, MASK: tl.constexpr, BLOCK_B: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                  ACC: tl.constexpr):
    """Backward in time: dh (B, H) the gradient of the carried h (of the final h in, of h0 out); d_xp (T, B, 3H) the
    gradients at xp; d_extra (T, B, H) (reset_after) the gradient at h_r W_hn^T + b_hn."""
    rows, row_ok, length, steps = row_block(lengths, B, BLOCK_B)
    BH = B * H
    for back in range(0, steps):
        t = steps - 1 - back
        active = row_ok & (t < length)
        t64 = tl.cast(t, tl.int64)
        g_t = gates + t64 * (3 * BH)
        e_t = extra + t64 * BH
        dx_t = d_xp + t64 * (3 * BH)
        de_t = d_extra + t64 * BH
        for n0 in range(0, H, BLOCK_N):
            u = n0 + tl.arange(0, BLOCK_N)
            ok = active[:, None] & (u < H)[None, :]
            o3 = rows[:, None] * (3 * H) + u[None, :]
            o1 = rows[:, None] * H + u[None, :]
            d_h = tl.load(dh + o1, mask=ok, other=0.0).to(ACC) + tl.load(d_out + t64 * BH + o1, mask=ok,
                                                                          other=0.0).to(ACC)
            z = tl.load(g_t + o3 + H, mask=ok, other=0.0).to(ACC)
            n = tl.load(g_t + o3 + 2 * H, mask=ok, other=0.0).to(ACC)
            h = load_previous(out, h0, t, BH, o1, ok).to(ACC)
            d_n = activation_backward(d_h * (1.0 - z), n, ACT)
            d_z = d_h * (h - n) * z * (1.0 - z)
            tl.store(dx_t + o3 + H, d_z, mask=ok)
            tl.store(dx_t + o3 + 2 * H, d_n, mask=ok)
            if RESET_AFTER:
                r = tl.load(g_t + o3, mask=ok, other=0.0).to(ACC)
                rec_n = tl.load(e_t + o1, mask=ok, other=0.0).to(ACC)
                tl.store(dx_t + o3, d_n * rec_n * r * (1.0 - r), mask=ok)
                tl.store(de_t + o1, d_n * r, mask=ok)
            tl.store(dh + o1, d_h * z, mask=ok)  # the direct term; the products add theirs
        tl.debug_barrier()
        if not RESET_AFTER:  # d_r needs d_(r h_r) = d_n W_hn of every unit
            for n0 in range(0, H, BLOCK_N):
                u = n0 + tl.arange(0, BLOCK_N)
                u_ok = u < H
                ok = active[:, None] & u_ok[None, :]
                o3 = rows[:, None] * (3 * H) + u[None, :]
                o1 = rows[:, None] * H + u[None, :]
                d_rh = product(dx_t + 2 * H, 3 * H, H, rows, row_ok, w_hh + 2 * H * H, H, 1, u, u_ok, mask, H,
                               BLOCK_B, BLOCK_N, BLOCK_K, False, DOT, PREC, ACC)
                r = tl.load(g_t + o3, mask=ok, other=0.0).to(ACC)
                h_r = load_previous(out, h0, t, BH, o1, ok)
                m = tl.full((BLOCK_B, BLOCK_N), 1.0, ACC)
                if MASK:
                    m = tl.load(mask + o1, mask=ok, other=0.0).to(ACC)
                    h_r = (h_r * tl.load(mask + o1, mask=ok, other=0.0)).to(h_r.dtype)
                tl.store(dx_t + o3, d_rh * h_r.to(ACC) * r * (1.0 - r), mask=ok)
                d = tl.load(dh + o1, mask=ok, other=0.0).to(ACC)
                tl.store(dh + o1, d + m * (d_rh * r), mask=ok)
            tl.debug_barrier()
        for n0 in range(0, H, BLOCK_N):  # d_h_{t-1} += (d_rec W_hh) * mask
            u = n0 + tl.arange(0, BLOCK_N)
            u_ok = u < H
            ok = active[:, None] & u_ok[None, :]
            o1 = rows[:, None] * H + u[None, :]
            acc = product(dx_t, 3 * H, 2 * H, rows, row_ok, w_hh, H, 1, u, u_ok, mask, H,
                          BLOCK_B, BLOCK_N, BLOCK_K, False, DOT, PREC, ACC)
            if RESET_AFTER:
                acc += product(de_t, H, H, rows, row_ok, w_hh + 2 * H * H, H, 1, u, u_ok, mask, H,
                               BLOCK_B, BLOCK_N, BLOCK_K, False, DOT, PREC, ACC)
            if MASK:
                acc = acc * tl.load(mask + o1, mask=ok, other=0.0).to(ACC)
            d = tl.load(dh + o1, mask=ok, other=0.0).to(ACC)
            tl.store(dh + o1, d + acc, mask=ok)
        tl.debug_barrier()


def gru_sequence(xp: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor | None = None, mask: Tensor | None = None,
                 batch_sizes: list[int] | None = None, reset_after: bool = True, activation: str = "tanh",
                 keep: bool = False):
    """One direction of a GRU layer: xp (T, B, 3H), h0 (B, H), w_hh (3H, H), b_hh (3H,) where it is not hoisted into
    xp (reset_after with a bias) else None, mask (B, H) or None, batch_sizes as in rnnkit.engine. Returns out
    (T, B, H), (h_n,), and with `keep` what gru_sequence_backward needs (else None)."""
    check_device(xp, h0, w_hh, b_hh, mask)
    T, B, GH = xp.shape
    H = GH // 3
    cfg = launch(xp.dtype, H)
    lengths = lengths_of(batch_sizes, B, T, xp.device)
    xp, w_hh = xp.contiguous(), w_hh.contiguous()
    mask = None if mask is None else mask.contiguous()
    b_hh = None if b_hh is None else b_hh.contiguous()
    ragged = batch_sizes is not None
    hbuf = xp.new_empty(2, B, H)
    hbuf[0] = h0
    out = xp.new_zeros(T, B, H) if ragged else xp.new_empty(T, B, H)
    steps = T if keep else 1
    gates = xp.new_empty(steps, B, 3 * H)
    # r * h_r meets the W_hn gradient product: zero where rows have ended
    extra = xp.new_zeros(steps, B, H) if ragged and keep and not reset_after else xp.new_empty(steps, B, H)
    _gru_forward[cfg.grid(B)](xp, hbuf, out, w_hh, b_hh if b_hh is not None else xp,
                              mask if mask is not None else xp, lengths, gates, extra, T, B, H,
                              RESET_AFTER=reset_after, HAS_BIAS=b_hh is not None, ACT=ACTIVATION_CODES[activation],
                              MASK=mask is not None, KEEP=int(keep), **cfg.options())
    saved = None
    if keep:
        saved = ([h0, out, w_hh, b_hh, mask, lengths, gates, extra],
                 {"reset_after": reset_after, "activation": activation, "ragged": ragged})
    return out, (hbuf[0],), saved


def gru_sequence_backward(saved, d_out: Tensor, d_h: Tensor):
    """From gru_sequence's kept values and the gradients of out (T, B, H) and of h_n (B, H): d_xp (T, B, 3H), (d_h0,),
    {name: gradient} of weight_hh and (reset_after, with a bias) bias_hh."""
    (h0, out, w_hh, b_hh, mask, lengths, gates, extra), options = saved
    T, B, H = out.shape
    cfg = launch(out.dtype, H)
    reset_after, ragged = options["reset_after"], options["ragged"]
    new = d_out.new_zeros if ragged else d_out.new_empty
    d_out = d_out.contiguous()
    dh = d_h.clone(memory_format=torch.contiguous_format)
    d_xp = new(T, B, 3 * H)
    d_extra = new(T, B, H) if reset_after else d_xp
    _gru_backward[cfg.grid(B)](d_out, dh, d_xp, d_extra, out, h0, w_hh, mask if mask is not None else out, lengths,
                               gates, extra, T, B, H, RESET_AFTER=reset_after,
                               ACT=ACTIVATION_CODES[options["activation"]], MASK=mask is not None, **cfg.options())
    d_rz = d_xp[..., : 2 * H]  # r and z are the same function of x W_ih^T and of h_r W_hh^T
    if reset_after:
        grads = {"weight_hh": torch.cat([times_h_r(d_rz, h0, out, mask), times_h_r(d_extra, h0, out, mask)])}
        if b_hh is not None:
            grads["bias_hh"] = torch.cat([d_rz.sum((0, 1)), d_extra.sum((0, 1))])
    else:  # W_hn multiplies r * h_r
        d_n = d_xp[..., 2 * H:].flatten(0, 1)
        grads = {"weight_hh": torch.cat([times_h_r(d_rz, h0, out, mask), d_n.T @ extra.flatten(0, 1)])}
    return d_xp, (dh,), grads
