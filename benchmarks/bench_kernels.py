"""The C++ sequence loop's products on a packed right operand (fused.repeated_product: packed once, then the
product repeated as over a sequence's steps) against torch.mm of the same operands (PyTorch's BLAS gemm, MKL in the
CPU wheels), at the products of `rnnkit bench`'s shapes A-D: a step's h W_hh^T, the backward's d W_hh, a batch of
one, an inference chunk's input projection; and the weight gradients' sums over a sequence's rows on the same kernel
(fused.summed_product with kernel="rnnkit"; the layers sum on the faster of it and the BLAS, fused.sums_kernel).
Float32; the best of interleaved repeats, in GFLOP/s.

    python benchmarks/bench_kernels.py [--repeats 5]
"""
import argparse
import os
import time

import torch

from rnnkit.cli.bench import machine
from rnnkit.kernels.cpu import fused

SHAPES = [  # (m, k, n, what)
    (128, 128, 512, "A: h W_hh^T"), (64, 256, 1024, "B: h W_hh^T"), (64, 1024, 256, "B: d W_hh"),
    (32, 128, 512, "C: h W_hh^T"), (1, 512, 2048, "D: h W_hh^T"), (3584, 28, 512, "A: chunk x W_ih^T"),
    (6400, 64, 1024, "B: x W_ih^T")]
# the weight gradients, summed over a sequence's T*B rows (fused.summed_product: d_pre^T h against torch.mm)
SUMMED_SHAPES = [  # (m, k, n, what): k is the sum's length
    (512, 3584, 128, "A: W_hh's gradient d_pre^T h"), (128, 3584, 128, "A: RNN W_hh's gradient"),
    (1024, 6400, 256, "B: W_hh's gradient"), (512, 16384, 128, "C: W_hh's gradient"), (2048, 200, 512, "D: W_hh's gradient")]


def best_time(fn, times: int, repeats: int) -> float:
    """The best, over repeats, of the time per product of `fn(times)`."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(times)
        best = min(best, (time.perf_counter() - start) / times)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if fused.library() is None or fused.gemm_address(torch.float32) is None:
        raise SystemExit(f"the C++ kernels cannot run here: {fused.unavailable_reason() or 'no BLAS gemm found'}")
    info = machine()
    print(f"rnnkit {info['rnnkit']}, torch {info['torch']}; {info['cpu']}, {info['threads']} threads; "
          f"load average before the run {', '.join(f'{v:.2f}' for v in os.getloadavg())}; best of {args.repeats}\n")
    print("| product | m | k | n | rnnkit GFLOP/s | torch.mm GFLOP/s | rnnkit / torch.mm time |")
    print("|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    for m, k, n, what in SHAPES:
        a, w, out = torch.randn(m, k), torch.randn(n, k), torch.empty(m, n)

        def packed(count):
            fused.repeated_product(a, w, out, transposed=True, times=count)

        def gemm(count):
            for _ in range(count):
                torch.mm(a, w.T, out=out)

        _row(what, m, k, n, packed, gemm, args.repeats)
    for m, k, n, what in SUMMED_SHAPES:
        d, h, out = torch.randn(k, m), torch.randn(k, n), torch.empty(m, n)

        def summed(count):
            for _ in range(count):
                fused.summed_product(d, h, out, kernel="rnnkit")

        def gemm(count):
            for _ in range(count):
                torch.mm(d.T, h, out=out)

        _row(what, m, k, n, summed, gemm, args.repeats)


def _row(what: str, m: int, k: int, n: int, ours_fn, gemm_fn, repeats: int) -> None:
    times = max(2, 100_000_000 // (m * k * n))  # about 0.2 GFLOP per measurement
    ours_fn(1), gemm_fn(1)
    ours, theirs = [], []
    for _ in range(repeats):  # interleaved
        ours.append(best_time(ours_fn, times, 1))
        theirs.append(best_time(gemm_fn, times, 1))
    t_ours, t_theirs, flops = min(ours), min(theirs), 2 * m * k * n
    print(f"| {what} | {m} | {k} | {n} | {flops / t_ours / 1e9:.0f} | {flops / t_theirs / 1e9:.0f} | "
          f"{t_ours / t_theirs:.2f} |")


if __name__ == "__main__":
    main()
