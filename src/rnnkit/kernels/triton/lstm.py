"""The LSTM over a whole sequence in one Triton launch each way, every variant of cells.LSTMStep:

    i, f, g, o = xp + rec (gates i, f, g, o; f, g, o when coupled),  rec = h_r W_hh^T, or LN_hh(h_r W_hh^T)
    i = sigmoid(i [+ p_i * c]),  f = sigmoid(f [+ p_f * c]),  g = act(g)
    c' = f * c + i * g                      (coupled: f * c + (1 - f) * g)
    o = sigmoid(o [+ p_o * c'])
    h' = o * act(c')                        (layer norm: o * act(LN_c(c')))
    h' = h' W_hr^T                          (proj_size)

h_r = h * mask (recurrent dropout), act tanh or softsign. xp (T, B, G*H) holds the input projection (with layer norm,
LN_ih(x W_ih^T)) plus both biases, made before the loop. Without layer norm and projection a tile of hidden units
does its four products and its gate math in one pass; layer norm adds a pass for the moments of the G*H recurrent
pre-activations and one for those of c', the projection a pass of its own product.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import (ACTIVATION_CODES, EPS, activation, activation_backward, check_device, final_h_first, launch,
                      lengths_of, product, row_block, sigmoid, times_h_r)


@triton.jit
def _pre(k, x_t, a_t, cur, w_hh, ln_w_hh, mask, mean, rstd, rows, row_ok, u, u_ok, H, P,
         G: tl.constexpr, LN: tl.constexpr, MASK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
         BLOCK_K: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    """Gate k's pre-activation for the units u: xp + h_r W_hh^T (or + LN_hh of it, from a_t and the row moments)."""
    cols = k * H + u
    ok = row_ok[:, None] & u_ok[None, :]
    offsets = rows[:, None] * (G * H) + cols[None, :]
    x = tl.load(x_t + offsets, mask=ok, other=0.0).to(ACC)
    if LN:
        a = tl.load(a_t + offsets, mask=ok, other=0.0).to(ACC)
        w = tl.load(ln_w_hh + cols, mask=u_ok, other=0.0).to(ACC)
        rec = (a - mean[:, None]) * rstd[:, None] * w[None, :]
    else:
        rec = product(cur, P, P, rows, row_ok, w_hh + k * H * P, 1, P, u, u_ok, mask, P,
                      BLOCK_B, BLOCK_N, BLOCK_K, MASK, DOT, PREC, ACC)
    return x + rec


@triton.jit
def _emit(h, t, out, cur, nxt, rows, row_ok, active, v, v_ok, B, P, ACC: tl.constexpr):
    """h for the units v: the step's output, and the next carried h (a row that has ended keeps its own)."""
    ok = row_ok[:, None] & v_ok[None, :]
    offsets = rows[:, None] * P + v[None, :]
    tl.store(out + tl.cast(t, tl.int64) * (B * P) + offsets, h, mask=ok & active[:, None])
    old = tl.load(cur + offsets, mask=ok, other=0.0).to(ACC)
    tl.store(nxt + offsets, tl.where(active[:, None], h, old), mask=ok)


@triton.jit
def _lstm_forward(xp, hbuf, cbuf, out, w_hh, w_hr, mask, peep, ln_w_hh, ln_w_c, ln_b_c, lengths,
                  gates, cs, a, stats, h_new, T, B, H, P,
                  G: tl.constexpr, COUPLED: tl.constexpr, ACT: tl.constexpr, PEEP: tl.constexpr, LN: tl.constexpr,
                  LN_BIAS: tl.constexpr, PROJ: tl.constexpr, MASK: tl.constexpr, KEEP: tl.constexpr,
                  EPSILON: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  DOT: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    """hbuf (2, B, P): h_{t-1} and h_t in turn (hbuf[0] = h0 in, the final h out); cbuf (B, H): the carried c (c0 in,
    the final c out); out (T, B, P). Kept per step (one step's worth without KEEP): gates (., B, G*H) activated; cs
    (T + 1, B, H) with KEEP: cs[t + 1] = c_t (cs[0] = c0, written by the caller); a (., B, G*H) = h_r W_hh^T and
    stats (., B, 4) = its mean and 1/std, then c's (layer norm); h_new (., B, H) before the projection."""
    rows, row_ok, length, steps = row_block(lengths, B, BLOCK_B)
    GH = G * H
    BH = B * H
    for t in range(0, steps):
        cur = hbuf + (t % 2) * (B * P)
        nxt = hbuf + ((t + 1) % 2) * (B * P)
        active = row_ok & (t < length)
        kt = tl.cast(t * KEEP, tl.int64)
        x_t = xp + tl.cast(t, tl.int64) * (B * GH)
        g_t = gates + kt * (B * GH)
        a_t = a + kt * (B * GH)
        s_t = stats + kt * (B * 4) + rows * 4
        hn_t = h_new + kt * BH
        mean = tl.zeros((BLOCK_B,), ACC)
        rstd = tl.zeros((BLOCK_B,), ACC)
        if LN:  # the recurrent product of every gate, then its moments over the G*H units
            s1 = tl.zeros((BLOCK_B,), ACC)
            for n0 in range(0, GH, BLOCK_N):
                cols = n0 + tl.arange(0, BLOCK_N)
                c_ok = cols < GH
                acc = product(cur, P, P, rows, row_ok, w_hh, 1, P, cols, c_ok, mask, P,
                              BLOCK_B, BLOCK_N, BLOCK_K, MASK, DOT, PREC, ACC)
                tl.store(a_t + rows[:, None] * GH + cols[None, :], acc, mask=row_ok[:, None] & c_ok[None, :])
                s1 += tl.sum(acc, 1)
            mean = s1 / GH
            tl.debug_barrier()
            s2 = tl.zeros((BLOCK_B,), ACC)
            for n0 in range(0, GH, BLOCK_N):
                cols = n0 + tl.arange(0, BLOCK_N)
                ok = row_ok[:, None] & (cols < GH)[None, :]
                v = tl.load(a_t + rows[:, None] * GH + cols[None, :], mask=ok, other=0.0).to(ACC)
                d = tl.where(ok, v - mean[:, None], 0.0)
                s2 += tl.sum(d * d, 1)
            rstd = 1.0 / tl.sqrt(s2 / GH + EPSILON)
            tl.store(s_t, mean, mask=active)
            tl.store(s_t + 1, rstd, mask=active)
        s1c = tl.zeros((BLOCK_B,), ACC)
        for n0 in range(0, H, BLOCK_N):
            u = n0 + tl.arange(0, BLOCK_N)
            u_ok = u < H
            ok = row_ok[:, None] & u_ok[None, :]
            o1 = rows[:, None] * H + u[None, :]
            og = rows[:, None] * GH + u[None, :]
            c = tl.load(cbuf + o1, mask=ok, other=0.0).to(ACC)
            f_pre = _pre(G - 3, x_t, a_t, cur, w_hh, ln_w_hh, mask, mean, rstd, rows, row_ok, u, u_ok, H, P,
                         G, LN, MASK, BLOCK_B, BLOCK_N, BLOCK_K, DOT, PREC, ACC)
            g = activation(_pre(G - 2, x_t, a_t, cur, w_hh, ln_w_hh, mask, mean, rstd, rows, row_ok, u, u_ok, H, P,
                                G, LN, MASK, BLOCK_B, BLOCK_N, BLOCK_K, DOT, PREC, ACC), ACT)
            o_pre = _pre(G - 1, x_t, a_t, cur, w_hh, ln_w_hh, mask, mean, rstd, rows, row_ok, u, u_ok, H, P,
                         G, LN, MASK, BLOCK_B, BLOCK_N, BLOCK_K, DOT, PREC, ACC)
            if PEEP:
                f_pre += tl.load(peep + (G - 3) * H + u, mask=u_ok, other=0.0).to(ACC)[None, :] * c
            f = sigmoid(f_pre)
            if COUPLED:
                c_new = g + f * (c - g)  # f * c + (1 - f) * g, as torch.lerp(g, c, f)
            else:
                i_pre = _pre(0, x_t, a_t, cur, w_hh, ln_w_hh, mask, mean, rstd, rows, row_ok, u, u_ok, H, P,
                             G, LN, MASK, BLOCK_B, BLOCK_N, BLOCK_K, DOT, PREC, ACC)
                if PEEP:
                    i_pre += tl.load(peep + u, mask=u_ok, other=0.0).to(ACC)[None, :] * c
                i = sigmoid(i_pre)
                tl.store(g_t + og, i, mask=ok)
                c_new = f * c + i * g
            if PEEP:
                o_pre += tl.load(peep + (G - 2) * H + u, mask=u_ok, other=0.0).to(ACC)[None, :] * c_new
            o = sigmoid(o_pre)
            tl.store(g_t + og + (G - 3) * H, f, mask=ok)
            tl.store(g_t + og + (G - 2) * H, g, mask=ok)
            tl.store(g_t + og + (G - 1) * H, o, mask=ok)
            tl.store(cbuf + o1, c_new, mask=ok & active[:, None])
            if KEEP:
                tl.store(cs + tl.cast(t + 1, tl.int64) * BH + o1, c_new, mask=ok & active[:, None])
            if LN:
                s1c += tl.sum(tl.where(ok, c_new, 0.0), 1)
            else:
                h = o * activation(c_new, ACT)
                if PROJ:
                    tl.store(hn_t + o1, h, mask=ok & active[:, None])
                else:
                    _emit(h, t, out, cur, nxt, rows, row_ok, active, u, u_ok, B, P, ACC)
        if LN:  # h' = o * act(LN_c(c'))
            mean_c = s1c / H
            tl.debug_barrier()
            s2c = tl.zeros((BLOCK_B,), ACC)
            for n0 in range(0, H, BLOCK_N):
                u = n0 + tl.arange(0, BLOCK_N)
                ok = row_ok[:, None] & (u < H)[None, :]
                v = tl.load(cbuf + rows[:, None] * H + u[None, :], mask=ok, other=0.0).to(ACC)
                d = tl.where(ok, v - mean_c[:, None], 0.0)
                s2c += tl.sum(d * d, 1)
            rstd_c = 1.0 / tl.sqrt(s2c / H + EPSILON)
            tl.store(s_t + 2, mean_c, mask=active)
            tl.store(s_t + 3, rstd_c, mask=active)
            for n0 in range(0, H, BLOCK_N):
                u = n0 + tl.arange(0, BLOCK_N)
                u_ok = u < H
                ok = row_ok[:, None] & u_ok[None, :]
                o1 = rows[:, None] * H + u[None, :]
                c_new = tl.load(cbuf + o1, mask=ok, other=0.0).to(ACC)
                c_out = (c_new - mean_c[:, None]) * rstd_c[:, None] * tl.load(
                    ln_w_c + u, mask=u_ok, other=0.0).to(ACC)[None, :]
                if LN_BIAS:
                    c_out += tl.load(ln_b_c + u, mask=u_ok, other=0.0).to(ACC)[None, :]
                o = tl.load(g_t + rows[:, None] * GH + (G - 1) * H + u[None, :], mask=ok, other=0.0).to(ACC)
                h = o * activation(c_out, ACT)
                if PROJ:
                    tl.store(hn_t + o1, h, mask=ok & active[:, None])
                else:
                    _emit(h, t, out, cur, nxt, rows, row_ok, active, u, u_ok, B, P, ACC)
        if PROJ:  # h = h' W_hr^T
            tl.debug_barrier()
            for n0 in range(0, P, BLOCK_N):
                v = n0 + tl.arange(0, BLOCK_N)
                v_ok = v < P
                h = product(hn_t, H, H, rows, row_ok, w_hr, 1, H, v, v_ok, mask, H,
                            BLOCK_B, BLOCK_N, BLOCK_K, False, DOT, PREC, ACC)
                _emit(h, t, out, cur, nxt, rows, row_ok, active, v, v_ok, B, P, ACC)
        tl.debug_barrier()  # h_t and c_t complete before the next step reads them
    final_h_first(hbuf, rows, row_ok, steps, B, P, BLOCK_N)


@triton.jit
def _add_rows(ptr, units, ok, value):
    """ptr[units] += the sum over rows of value (BLOCK_B, BLOCK_N): a program's own slice of the vector gradients."""
    tl.store(ptr + units, tl.load(ptr + units, mask=ok, other=0.0) + tl.sum(value, 0), mask=ok)


@triton.jit
def _lstm_backward(d_out, dh, dc, d_xp, d_hout, dhn, d_a, d_vec, gates, cs, a, stats, w_hh, w_hr, mask, peep,
                   ln_w_hh, ln_w_c, ln_b_c, lengths, T, B, H, P, NV,
                   G: tl.constexpr, COUPLED: tl.constexpr, ACT: tl.constexpr, PEEP: tl.constexpr, LN: tl.constexpr,
                   LN_BIAS: tl.constexpr, PROJ: tl.constexpr, MASK: tl.constexpr, BLOCK_B: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                   ACC: tl.constexpr):
    """Backward in time: dh (B, P), dc (B, H) the gradients of the carried h and c (of the final states in, of the
    initial ones out); d_xp (T, B, G*H) at the gate pre-activations; d_hout (T, B, P) at the projection's output and
    dhn (B, H) at its input (proj_size); d_a (T, B, G*H) at h_r W_hh^T (layer norm); d_vec (programs, NV) each
    program's sums of the vector parameters' gradients: peepholes, then ln_weight_hh, ln_weight_c, ln_bias_c."""
    pid = tl.program_id(0)
    rows, row_ok, length, steps = row_block(lengths, B, BLOCK_B)
    GH = G * H
    BH = B * H
    vec = d_vec + pid * NV
    v_ln_hh = PEEP * (G - 1) * H
    v_ln_c = v_ln_hh + GH
    v_ln_b = v_ln_c + H
    for back in range(0, steps):
        t = steps - 1 - back
        active = row_ok & (t < length)
        t64 = tl.cast(t, tl.int64)
        g_t = gates + t64 * (B * GH)
        a_t = a + t64 * (B * GH)
        dx_t = d_xp + t64 * (B * GH)
        s_t = stats + t64 * (B * 4) + rows * 4
        if PROJ:  # d_h' = (d_h + d_out) W_hr
            for n0 in range(0, P, BLOCK_N):
                v = n0 + tl.arange(0, BLOCK_N)
                offsets = rows[:, None] * P + v[None, :]
                ok = active[:, None] & (v < P)[None, :]
                d = tl.load(dh + offsets, mask=ok, other=0.0).to(ACC) + tl.load(
                    d_out + t64 * (B * P) + offsets, mask=ok, other=0.0).to(ACC)
                tl.store(d_hout + t64 * (B * P) + offsets, d, mask=ok)
            tl.debug_barrier()
            for n0 in range(0, H, BLOCK_N):
                u = n0 + tl.arange(0, BLOCK_N)
                u_ok = u < H
                d = product(d_hout + t64 * (B * P), P, P, rows, row_ok, w_hr, H, 1, u, u_ok, mask, P,
                            BLOCK_B, BLOCK_N, BLOCK_K, False, DOT, PREC, ACC)
                tl.store(dhn + rows[:, None] * H + u[None, :], d, mask=active[:, None] & u_ok[None, :])
            tl.debug_barrier()
        mean_c = tl.zeros((BLOCK_B,), ACC)
        rstd_c = tl.zeros((BLOCK_B,), ACC)
        s1 = tl.zeros((BLOCK_B,), ACC)
        s2 = tl.zeros((BLOCK_B,), ACC)
        if LN:  # LN_c's backward needs two sums over the H units first
            mean_c = tl.load(s_t + 2, mask=active, other=0.0).to(ACC)
            rstd_c = tl.load(s_t + 3, mask=active, other=0.0).to(ACC)
            for n0 in range(0, H, BLOCK_N):
                u = n0 + tl.arange(0, BLOCK_N)
                u_ok = u < H
                ok = active[:, None] & u_ok[None, :]
                o1 = rows[:, None] * H + u[None, :]
                if PROJ:
                    d_hn = tl.load(dhn + o1, mask=ok, other=0.0).to(ACC)
                else:
                    d_hn = tl.load(dh + o1, mask=ok, other=0.0).to(ACC) + tl.load(d_out + t64 * BH + o1, mask=ok,
                                                                                   other=0.0).to(ACC)
                c_new = tl.load(cs + (t64 + 1) * BH + o1, mask=ok, other=0.0).to(ACC)
                xhat = (c_new - mean_c[:, None]) * rstd_c[:, None]
                w = tl.load(ln_w_c + u, mask=u_ok, other=0.0).to(ACC)[None, :]
                c_out = xhat * w
                if LN_BIAS:
                    c_out += tl.load(ln_b_c + u, mask=u_ok, other=0.0).to(ACC)[None, :]
                o = tl.load(g_t + rows[:, None] * GH + (G - 1) * H + u[None, :], mask=ok, other=0.0).to(ACC)
                d_cout = activation_backward(d_hn * o, activation(c_out, ACT), ACT)
                s1 += tl.sum(d_cout * w, 1)
                s2 += tl.sum(d_cout * w * xhat, 1)
                _add_rows(vec + v_ln_c, u, u_ok, d_cout * xhat)
                if LN_BIAS:
                    _add_rows(vec + v_ln_b, u, u_ok, d_cout)
        mean_a = tl.zeros((BLOCK_B,), ACC)
        rstd_a = tl.zeros((BLOCK_B,), ACC)
        s1h = tl.zeros((BLOCK_B,), ACC)
        s2h = tl.zeros((BLOCK_B,), ACC)
        if LN:
            mean_a = tl.load(s_t, mask=active, other=0.0).to(ACC)
            rstd_a = tl.load(s_t + 1, mask=active, other=0.0).to(ACC)
        for n0 in range(0, H, BLOCK_N):
            u = n0 + tl.arange(0, BLOCK_N)
            u_ok = u < H
            ok = active[:, None] & u_ok[None, :]
            o1 = rows[:, None] * H + u[None, :]
            og = rows[:, None] * GH + u[None, :]
            if PROJ:
                d_hn = tl.load(dhn + o1, mask=ok, other=0.0).to(ACC)
            else:
                d_hn = tl.load(dh + o1, mask=ok, other=0.0).to(ACC) + tl.load(d_out + t64 * BH + o1, mask=ok,
                                                                               other=0.0).to(ACC)
            f = tl.load(g_t + og + (G - 3) * H, mask=ok, other=0.0).to(ACC)
            g = tl.load(g_t + og + (G - 2) * H, mask=ok, other=0.0).to(ACC)
            o = tl.load(g_t + og + (G - 1) * H, mask=ok, other=0.0).to(ACC)
            c = tl.load(cs + t64 * BH + o1, mask=ok, other=0.0).to(ACC)
            c_new = tl.load(cs + (t64 + 1) * BH + o1, mask=ok, other=0.0).to(ACC)
            if LN:
                xhat = (c_new - mean_c[:, None]) * rstd_c[:, None]
                w = tl.load(ln_w_c + u, mask=u_ok, other=0.0).to(ACC)[None, :]
                c_out = xhat * w
                if LN_BIAS:
                    c_out += tl.load(ln_b_c + u, mask=u_ok, other=0.0).to(ACC)[None, :]
                act_c = activation(c_out, ACT)
                d_cout = activation_backward(d_hn * o, act_c, ACT)
                d_c_h = rstd_c[:, None] * (d_cout * w - (s1[:, None] + xhat * s2[:, None]) / H)
            else:
                act_c = activation(c_new, ACT)
                d_c_h = activation_backward(d_hn * o, act_c, ACT)
            d_o = d_hn * act_c * o * (1.0 - o)
            d_cn = tl.load(dc + o1, mask=ok, other=0.0).to(ACC) + d_c_h
            if PEEP:
                d_cn += d_o * tl.load(peep + (G - 2) * H + u, mask=u_ok, other=0.0).to(ACC)[None, :]
            if COUPLED:
                d_f = d_cn * (c - g) * f * (1.0 - f)
                d_g = activation_backward(d_cn * (1.0 - f), g, ACT)
                d_i = d_f  # unused
            else:
                i = tl.load(g_t + og, mask=ok, other=0.0).to(ACC)
                d_i = d_cn * g * i * (1.0 - i)
                d_f = d_cn * c * f * (1.0 - f)
                d_g = activation_backward(d_cn * i, g, ACT)
                tl.store(dx_t + og, d_i, mask=ok)
            d_c_prev = d_cn * f
            if PEEP:
                d_c_prev += d_f * tl.load(peep + (G - 3) * H + u, mask=u_ok, other=0.0).to(ACC)[None, :]
                _add_rows(vec + (G - 3) * H, u, u_ok, d_f * c)
                _add_rows(vec + (G - 2) * H, u, u_ok, d_o * c_new)
                if not COUPLED:
                    d_c_prev += d_i * tl.load(peep + u, mask=u_ok, other=0.0).to(ACC)[None, :]
                    _add_rows(vec, u, u_ok, d_i * c)
            tl.store(dc + o1, d_c_prev, mask=ok)
            tl.store(dx_t + og + (G - 3) * H, d_f, mask=ok)
            tl.store(dx_t + og + (G - 2) * H, d_g, mask=ok)
            tl.store(dx_t + og + (G - 1) * H, d_o, mask=ok)
            if LN:  # the sums LN_hh's backward needs, gate by gate
                for k in tl.static_range(G):
                    if k == G - 3:
                        dy = d_f
                    elif k == G - 2:
                        dy = d_g
                    elif k == G - 1:
                        dy = d_o
                    else:
                        dy = d_i
                    cols = k * H + u
                    xh = (tl.load(a_t + rows[:, None] * GH + cols[None, :], mask=ok, other=0.0).to(ACC)
                          - mean_a[:, None]) * rstd_a[:, None]
                    w = tl.load(ln_w_hh + cols, mask=u_ok, other=0.0).to(ACC)[None, :]
                    s1h += tl.sum(dy * w, 1)
                    s2h += tl.sum(dy * w * xh, 1)
                    _add_rows(vec + v_ln_hh + k * H, u, u_ok, dy * xh)
        d_pre = dx_t
        if LN:  # d_a = LN_hh's backward of d_xp
            tl.debug_barrier()
            d_pre = d_a + t64 * (B * GH)
            for n0 in range(0, GH, BLOCK_N):
                cols = n0 + tl.arange(0, BLOCK_N)
                c_ok = cols < GH
                ok = active[:, None] & c_ok[None, :]
                offsets = rows[:, None] * GH + cols[None, :]
                dy = tl.load(dx_t + offsets, mask=ok, other=0.0).to(ACC)
                xh = (tl.load(a_t + offsets, mask=ok, other=0.0).to(ACC) - mean_a[:, None]) * rstd_a[:, None]
                w = tl.load(ln_w_hh + cols, mask=c_ok, other=0.0).to(ACC)[None, :]
                tl.store(d_pre + offsets, rstd_a[:, None] * (dy * w - (s1h[:, None] + xh * s2h[:, None]) / GH),
                         mask=ok)
        tl.debug_barrier()
        for n0 in range(0, P, BLOCK_N):  # d_h_{t-1} = (d_pre W_hh) * mask
            v = n0 + tl.arange(0, BLOCK_N)
            v_ok = v < P
            ok = active[:, None] & v_ok[None, :]
            offsets = rows[:, None] * P + v[None, :]
            d = product(d_pre, GH, GH, rows, row_ok, w_hh, P, 1, v, v_ok, mask, P,
                        BLOCK_B, BLOCK_N, BLOCK_K, False, DOT, PREC, ACC)
            if MASK:
                d = d * tl.load(mask + offsets, mask=ok, other=0.0).to(ACC)
            tl.store(dh + offsets, d, mask=ok)
        tl.debug_barrier()


def _vector_sizes(G: int, H: int, peep, ln) -> dict:
    """{name: size} of the vector gradients in d_vec's order."""
    sizes = {}
    if peep is not None:
        sizes["weight_peephole"] = (G - 1) * H
    if ln is not None:
        sizes.update(ln_weight_hh=G * H, ln_weight_c=H)
        if ln[2] is not None:
            sizes["ln_bias_c"] = H
    return sizes


def _flags(G, coupled, activation, peep, ln, w_hr, mask) -> dict:
    return dict(G=G, COUPLED=coupled, ACT=ACTIVATION_CODES[activation], PEEP=peep is not None, LN=ln is not None,
                LN_BIAS=ln is not None and ln[2] is not None, PROJ=w_hr is not None, MASK=mask is not None)


def lstm_sequence(xp: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Tensor | None = None,
                  mask: Tensor | None = None, batch_sizes: list[int] | None = None, peep: Tensor | None = None,
                  ln: tuple | None = None, coupled: bool = False, activation: str = "tanh", keep: bool = False):
    """One direction of an LSTM layer: xp (T, B, G*H), h0 (B, P), c0 (B, H), w_hh (G*H, P), w_hr (P, H) or None, mask
    (B, P) or None, batch_sizes as in rnnkit.engine, peep ((G-1)*H,) or None, ln (ln_weight_hh (G*H,), ln_weight_c
    (H,), ln_bias_c (H,) or None) or None. Returns out (T, B, P) (zero past each row's end), (h_n, c_n), and with
    `keep` what lstm_sequence_backward needs (else None)."""
    check_device(xp, h0, c0, w_hh, w_hr, mask, peep, *(ln or ()))
    T, B, GH = xp.shape
    H, P = c0.shape[1], h0.shape[1]
    G = GH // H
    cfg = launch(xp.dtype, H)
    lengths = lengths_of(batch_sizes, B, T, xp.device)
    contiguous = lambda t: None if t is None else t.contiguous()  # noqa: E731
    xp, w_hh, w_hr, mask, peep = map(contiguous, (xp, w_hh, w_hr, mask, peep))
    ln = None if ln is None else tuple(map(contiguous, ln))
    ragged = batch_sizes is not None
    steps = T if keep else 1
    hbuf = xp.new_empty(2, B, P)
    hbuf[0] = h0
    cbuf = c0.clone(memory_format=torch.contiguous_format)
    out = xp.new_zeros(T, B, P) if ragged else xp.new_empty(T, B, P)
    gates = xp.new_empty(steps, B, GH)
    cs = None
    if keep:
        cs = xp.new_empty(T + 1, B, H)
        cs[0] = c0
    a = xp.new_empty(steps, B, GH) if ln is not None else None
    acc_dtype = torch.float64 if xp.dtype == torch.float64 else torch.float32
    stats = xp.new_empty(steps, B, 4, dtype=acc_dtype) if ln is not None else None
    # h' meets the W_hr gradient product: zero where rows have ended
    h_new = None if w_hr is None else (xp.new_zeros if ragged and keep else xp.new_empty)(steps, B, H)
    some = lambda t: xp if t is None else t  # noqa: E731  (a pointer for the arguments a variant does not use)
    ln_w_hh, ln_w_c, ln_b_c = ln if ln is not None else (None, None, None)
    _lstm_forward[cfg.grid(B)](xp, hbuf, cbuf, out, w_hh, some(w_hr), some(mask), some(peep), some(ln_w_hh),
                               some(ln_w_c), some(ln_b_c), lengths, gates, some(cs), some(a), some(stats),
                               some(h_new), T, B, H, P, **_flags(G, coupled, activation, peep, ln, w_hr, mask),
                               KEEP=int(keep), EPSILON=EPS, **cfg.options())
    saved = None
    if keep:
        saved = ([h0, out, w_hh, w_hr, mask, peep, ln_w_hh, ln_w_c, ln_b_c, lengths, gates, cs, a, stats, h_new],
                 {"coupled": coupled, "activation": activation, "ragged": ragged})
    return out, (hbuf[0], cbuf), saved


def lstm_sequence_backward(saved, d_out: Tensor, d_h: Tensor, d_c: Tensor):
    """From lstm_sequence's kept values and the gradients of out (T, B, P), h_n (B, P) and c_n (B, H): d_xp
    (T, B, G*H), (d_h0, d_c0), {name: gradient} of weight_hh, weight_hr, weight_peephole and the layer-norm
    parameters the layer has (names as in cells.LSTMStep)."""
    (h0, out, w_hh, w_hr, mask, peep, ln_w_hh, ln_w_c, ln_b_c, lengths, gates, cs, a, stats, h_new), options = saved
    T, B, P = out.shape
    H = cs.shape[2]
    GH = w_hh.shape[0]
    G = GH // H
    ln = None if ln_w_hh is None else (ln_w_hh, ln_w_c, ln_b_c)
    cfg = launch(out.dtype, H)
    new = d_out.new_zeros if options["ragged"] else d_out.new_empty
    d_out = d_out.contiguous()
    dh = d_h.clone(memory_format=torch.contiguous_format)
    dc = d_c.clone(memory_format=torch.contiguous_format)
    d_xp = new(T, B, GH)
    d_hout = new(T, B, P) if w_hr is not None else None
    dhn = d_out.new_empty(B, H) if w_hr is not None else None
    d_a = new(T, B, GH) if ln is not None else None
    sizes = _vector_sizes(G, H, peep, ln)
    NV = sum(sizes.values())
    grid = cfg.grid(B)
    acc_dtype = torch.float64 if d_out.dtype == torch.float64 else torch.float32
    d_vec = d_out.new_zeros(grid[0], max(NV, 1), dtype=acc_dtype)
    some = lambda t: d_out if t is None else t  # noqa: E731
    _lstm_backward[grid](d_out, dh, dc, d_xp, some(d_hout), some(dhn), some(d_a), d_vec, gates, cs, some(a),
                         some(stats), w_hh, some(w_hr), some(mask), some(peep), some(ln_w_hh), some(ln_w_c),
                         some(ln_b_c), lengths, T, B, H, P, NV,
                         **_flags(G, options["coupled"], options["activation"], peep, ln, w_hr, mask),
                         **cfg.options())
    totals = d_vec.sum(0)[:NV].to(d_out.dtype)
    grads = dict(zip(sizes, totals.split(list(sizes.values()))))
    grads["weight_hh"] = times_h_r(d_a if ln is not None else d_xp, h0, out, mask)
    if w_hr is not None:
        grads["weight_hr"] = d_hout.flatten(0, 1).T @ h_new.flatten(0, 1)
    return d_xp, (dh, dc), grads
