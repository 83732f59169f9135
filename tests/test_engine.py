"""The engine: lengths bookkeeping, per-sequence reversal, and the explicit BPTT against autograd
(the same loop recorded by torch.autograd) and against finite differences (gradcheck)."""
import pytest
import torch

from conftest import assert_rel
from rnnkit.engine import loop as engine
from test_cells import ALL_STEPS, DTYPE, random_mask, random_params, random_state, step_id

TOL = 1e-10
# applied by project_input before the loop, never by a step: gradcheck holds them constant
PROJECT_ONLY = {"weight_ih", "bias_ih", "ln_weight_ih"}


def brute_batch_sizes(lengths, T):
    return [sum(1 for n in lengths if n > t) for t in range(T)]


# -- batch_sizes_from_lengths -------------------------------------------------------------------

@pytest.mark.parametrize("lengths,T", [
    ([5, 3, 3, 1], 5),
    ([4, 4, 4], 4),
    ([3, 1, 0], 5),  # a zero length, and steps where no row is active
    ([0, 0], 3),
    ([2], 0),  # no steps at all
    ([], 3),  # no rows at all
    ([6, 5, 4, 3, 2, 1, 0], 6),
])
def test_batch_sizes_from_lengths(lengths, T):
    assert engine.batch_sizes_from_lengths(lengths, T) == brute_batch_sizes(lengths, T)


def test_batch_sizes_from_lengths_random():
    gen = torch.Generator().manual_seed(3)
    for _ in range(50):
        T = int(torch.randint(0, 8, (), generator=gen))
        B = int(torch.randint(0, 6, (), generator=gen))
        lengths = sorted(torch.randint(0, T + 1, (B,), generator=gen).tolist(), reverse=True)
        assert engine.batch_sizes_from_lengths(lengths, T) == brute_batch_sizes(lengths, T), (lengths, T)


# -- reverse_padded ------------------------------------------------------------------------------

def hand_reverse(x, lengths):
    """y[t, b] = x[len_b - 1 - t, b] for t < len_b, zero after: one row at a time."""
    y = torch.zeros_like(x)
    for b, n in enumerate(lengths.tolist()):
        for t in range(n):
            y[t, b] = x[n - 1 - t, b]
    return y


LENGTH_CASES = [
    [4, 2, 3],  # unsorted
    [0, 4, 1],  # a zero length
    [4, 4, 4],  # all full
    [0, 0, 0],
]


@pytest.mark.parametrize("trailing", [(), (2,), (2, 3)], ids=["TB", "TBF", "TBFG"])
@pytest.mark.parametrize("lengths", LENGTH_CASES, ids=str)
def test_reverse_padded(lengths, trailing):
    T = 4
    lengths = torch.tensor(lengths)
    x = torch.randn(T, len(lengths), *trailing, dtype=DTYPE)  # (T, B, ...)
    y = engine.reverse_padded(x, lengths)
    assert_rel(y, hand_reverse(x, lengths), 0.0, "reverse_padded")
    valid = (torch.arange(T).unsqueeze(1) < lengths).reshape(T, len(lengths), *[1] * len(trailing))
    assert torch.equal(y * ~valid, torch.zeros_like(y)), "past the end must be zero"
    assert torch.equal(engine.reverse_padded(y, lengths), x * valid), "self-inverse on valid steps"


def test_reverse_padded_gradient_is_the_reverse():
    lengths, T = torch.tensor([3, 0, 2]), 3
    x = torch.randn(T, 3, 2, dtype=DTYPE, requires_grad=True)
    d_y = torch.randn(T, 3, 2, dtype=DTYPE)
    (d_x,) = torch.autograd.grad((engine.reverse_padded(x, lengths) * d_y).sum(), x)
    assert_rel(d_x, hand_reverse(d_y, lengths), 0.0, "gradient")


@pytest.mark.parametrize("T", [0, 1, 4])
def test_reverse_padded_without_lengths_is_flip(T):
    x = torch.randn(T, 3, 2, dtype=DTYPE)
    assert torch.equal(engine.reverse_padded(x, None), torch.flip(x, [0]))


@pytest.mark.parametrize("T", [0, 1, 4])
def test_reverse_padded_with_full_lengths_is_flip(T):
    """Includes T = 0 (every length 0), which the layers accept: lengths may be any value in [0, T]."""
    x = torch.randn(T, 3, 2, dtype=DTYPE)
    assert torch.equal(engine.reverse_padded(x, torch.full((3,), T)), torch.flip(x, [0]))


# -- engine.run: explicit BPTT against autograd ---------------------------------------------------

def make_inputs(step, T, B, lengths, with_mask, seed=4):
    """xp (T, B, G*H), state0, every parameter (as a layer passes them), batch_sizes, mask."""
    gen = torch.Generator().manual_seed(seed)
    xp = torch.randn(T, B, step.gates * step.hidden_size, generator=gen, dtype=DTYPE)
    state0 = random_state(step, B, gen)
    p = random_params(step, gen=gen)
    batch_sizes = None if lengths is None else engine.batch_sizes_from_lengths(lengths, T)
    mask = random_mask(B, step.output_size, gen) if with_mask else None
    return xp, state0, p, batch_sizes, mask


def run_with_grads(step, xp, state0, p, batch_sizes, mask, bptt, weights):
    """engine.run, then the gradient of sum(weights * outputs) w.r.t. xp, state0 and every parameter."""
    leaves = [t.clone().requires_grad_(True) for t in (xp, *state0, *p.values())]
    n = len(state0)
    xp_, state_, p_ = leaves[0], tuple(leaves[1:1 + n]), dict(zip(p, leaves[1 + n:]))
    out, final = engine.run(step, xp_, state_, p_, batch_sizes, mask, bptt)
    loss = sum((t * w).sum() for t, w in zip([out, *final], weights))
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]
    return out.detach(), [f.detach() for f in final], grads


RUN_CASES = {  # name: (T, lengths sorted longest first, or None)
    "full": (4, None),
    "T0": (0, None),
    "sorted": (4, [4, 2, 2]),
    "zero-len": (4, [3, 1, 0]),  # a zero-length row, and a step where no row is active
    "all-zero": (3, [0, 0, 0]),
}


@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("case", RUN_CASES)
@pytest.mark.parametrize("step", ALL_STEPS, ids=step_id)
def test_explicit_bptt_matches_autograd(step, case, with_mask):
    T, lengths = RUN_CASES[case]
    B = 3
    xp, state0, p, batch_sizes, mask = make_inputs(step, T, B, lengths, with_mask)
    gen = torch.Generator().manual_seed(5)
    weights = [torch.randn(T, B, step.output_size, generator=gen, dtype=DTYPE),
               *(torch.randn(s.shape, generator=gen, dtype=DTYPE) for s in state0)]
    out, final, grads = run_with_grads(step, xp, state0, p, batch_sizes, mask, "explicit", weights)
    ref_out, ref_final, ref_grads = run_with_grads(step, xp, state0, p, batch_sizes, mask, "autograd", weights)

    assert out.shape == (T, B, step.output_size)
    assert_rel(out, ref_out, TOL, "output")
    for k, (a, e) in enumerate(zip(final, ref_final, strict=True)):
        assert_rel(a, e, TOL, f"final state {k}")
    names = ["xp"] + [f"state0[{k}]" for k in range(len(state0))] + list(p)
    for what, a, e in zip(names, grads, ref_grads, strict=True):
        assert_rel(a, e, TOL, f"grad {what}")


@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("step", ALL_STEPS, ids=step_id)
def test_run_with_lengths_equals_each_row_alone(step, with_mask):
    """Packed layout: zero outputs past each row's end, and each row's outputs and final state are
    those of the row run alone over its own length (a zero-length row keeps its initial state)."""
    T, lengths = 4, [4, 2, 0]
    xp, state0, p, batch_sizes, mask = make_inputs(step, T, len(lengths), lengths, with_mask)
    for bptt in engine.BPTT_MODES:
        out, final = engine.run(step, xp, state0, p, batch_sizes, mask, bptt)
        for b, n in enumerate(lengths):
            row = slice(b, b + 1)
            alone_out, alone_final = engine.run(step, xp[:n, row], tuple(s[row] for s in state0), p,
                                                None, None if mask is None else mask[row], bptt)
            assert_rel(out[:n, row], alone_out, TOL, f"{bptt}: output of row {b}")
            assert torch.equal(out[n:, b], torch.zeros_like(out[n:, b])), f"{bptt}: padding of row {b}"
            for k, (s, a) in enumerate(zip(final, alone_final, strict=True)):
                assert_rel(s[row], a, TOL, f"{bptt}: final state {k} of row {b}")


def test_run_rejects_unknown_bptt():
    step = ALL_STEPS[0]
    xp, state0, p, _, _ = make_inputs(step, 2, 2, None, False)
    with pytest.raises(ValueError, match="bptt"):
        engine.run(step, xp, state0, p, bptt="manual")


# -- engine.run: explicit BPTT against finite differences -----------------------------------------

# name: (T, lengths, with_mask, fast_mode); tiny: T = 3, B = 2. The full Jacobian is checked for
# the plain run and for the run with everything (lengths and mask); the runs with one feature use
# gradcheck's fast mode (a random projection v^T J u), which keeps the file quick.
GRADCHECK_CASES = {
    "plain": (3, None, False, False),
    "mask": (3, None, True, True),
    "lengths": (3, [2, 0], False, True),  # rows ending at different steps, a zero length, an empty step
    "lengths-mask": (3, [2, 0], True, False),
}


@pytest.mark.parametrize("case", GRADCHECK_CASES)
@pytest.mark.parametrize("step", ALL_STEPS, ids=step_id)
def test_explicit_bptt_gradcheck(step, case):
    T, lengths, with_mask, fast_mode = GRADCHECK_CASES[case]
    B = 2 if lengths is None else len(lengths)
    xp, state0, p, batch_sizes, mask = make_inputs(step, T, B, lengths, with_mask, seed=6)
    names = [name for name in p if name not in PROJECT_ONLY]
    constants = {name: v for name, v in p.items() if name in PROJECT_ONLY}
    n = len(state0)

    def f(xp, *rest):
        params = {**constants, **dict(zip(names, rest[n:]))}
        out, final = engine.run(step, xp, tuple(rest[:n]), params, batch_sizes, mask, "explicit")
        return (out, *final)

    inputs = [t.clone().requires_grad_(True) for t in (xp, *state0, *(p[name] for name in names))]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast_mode)
