"""rnnkit on one GPU, in under 5 minutes: `python benchmarks/bench_gpu.py [--json FILE] [--shapes A,B,C,D,E]
[--cases ...] [--repeats N] [--budget SECONDS] [--no-tests]`.

First it runs the GPU tests (tests/test_cuda.py: every impl against cuDNN; tests/test_triton_cuda.py: the compiled
Triton kernels against the engine and cuDNN). Then, per variant and shape (A-D of the CPU table, and E: B=64, T=512,
I=256, H=1024), it times a train step (forward + backward of `output.sum()`, batch-first) and inference (eval, no
grad) of impl="triton", "engine" and, where torch.nn has the configuration, "native" (cuDNN), the median of
--repeats after warm-up (which compiles the Triton kernels), and the ratio of each to cuDNN's nn.LSTM / nn.GRU /
nn.RNN of the same size (the variants are compared with the standard layer, as in `rnnkit bench`). Peak memory is
torch.cuda.max_memory_allocated over one train step, above what was allocated before it. Rows that do not fit in
--budget seconds are listed as skipped. The issue's targets are checked at the end: every variant's train step
<= 1.5x cuDNN, Triton >= 5x faster than the engine at A-C, peak memory <= 1.3x torch.nn's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import rnnkit
from rnnkit.cli import bench
from rnnkit.cli.bench import CASES, SHAPES
from rnnkit.engine import dispatch
from rnnkit.kernels import triton as triton_kernels

ROOT = Path(__file__).resolve().parents[1]
GPU_SHAPES = {**SHAPES, "E": (64, 512, 256, 1024)}
TESTS = ["tests/test_cuda.py", "tests/test_triton_cuda.py"]


def build(label: str, shape: str):
    ours, ref, x = bench.build(label, shape, torch.device("cuda"), GPU_SHAPES)
    return ours, ref, x, CASES[label].train_only


def timed(fn, repeats: int) -> float:
    """Median milliseconds of `repeats` calls after two warm-up calls (the first compiles the Triton kernels)."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_mib(fn) -> float:
    """MiB one call allocates at its peak above what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def impls_of(layer) -> list[str]:
    impls = ["triton", "engine"]
    if dispatch.native_kernel(layer.cell) is not None and layer.recurrent_dropout == 0:
        impls.append("native")
    return impls


def measure(label: str, shape: str, repeats: int) -> list[dict]:
    ours, ref, x, train_only = build(label, shape)
    ref_train = timed(bench._train_step(ref.train(), x), repeats)
    ref_infer = None if train_only else timed(bench._inference(ref.eval(), x), repeats)
    ref_mem = peak_mib(bench._train_step(ref.train(), x))
    rows = []
    for impl in impls_of(ours):
        ours.impl = impl
        train = timed(bench._train_step(ours.train(), x), repeats)
        infer = None if train_only else timed(bench._inference(ours.eval(), x), repeats)
        mem = peak_mib(bench._train_step(ours.train(), x))
        rows.append(dict(case=label, shape=shape, impl=impl, train_ms=train, train_ratio=train / ref_train,
                         infer_ms=infer, infer_ratio=None if infer is None else infer / ref_infer,
                         peak_mib=mem, peak_ratio=mem / ref_mem if ref_mem else None, cudnn_train_ms=ref_train,
                         cudnn_infer_ms=ref_infer, cudnn_peak_mib=ref_mem))
    del ours, ref, x
    torch.cuda.empty_cache()
    return rows


def fmt(v, digits=2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def print_table(rows: list[dict]) -> None:
    print("| case | shape | impl | train ms | train / cuDNN | infer ms | infer / cuDNN | peak MiB | peak / cuDNN "
          "| cuDNN train ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['case']} | {r['shape']} | - | skipped: {r['skipped']} | | | | | | |")
            continue
        print(f"| {r['case']} | {r['shape']} | {r['impl']} | {fmt(r['train_ms'], 1)} | {fmt(r['train_ratio'])} "
              f"| {fmt(r['infer_ms'], 1)} | {fmt(r['infer_ratio'])} | {fmt(r['peak_mib'], 0)} | {fmt(r['peak_ratio'])} "
              f"| {fmt(r['cudnn_train_ms'], 1)} |")


def check_targets(rows: list[dict]) -> list[str]:
    """The issue's targets, one line each: met or not, with the worst case."""
    measured = [r for r in rows if "skipped" not in r]
    triton = [r for r in measured if r["impl"] == "triton"]
    lines = []
    if triton:
        worst = max(triton, key=lambda r: r["train_ratio"])
        lines.append(f"train step <= 1.5x cuDNN: {'met' if worst['train_ratio'] <= 1.5 else 'NOT met'} "
                     f"(worst {worst['case']} at {worst['shape']}: {worst['train_ratio']:.2f}x)")
        speedups = []
        for r in triton:
            engine = next((e for e in measured if e["impl"] == "engine" and e["case"] == r["case"]
                           and e["shape"] == r["shape"]), None)
            if engine is not None and r["shape"] in "ABC":
                speedups.append((engine["train_ms"] / r["train_ms"], r))
        if speedups:
            s, r = min(speedups, key=lambda p: p[0])
            lines.append(f"triton >= 5x faster than the engine at A-C: {'met' if s >= 5 else 'NOT met'} "
                         f"(least {r['case']} at {r['shape']}: {s:.1f}x)")
        mem = [r for r in triton if r["peak_ratio"] is not None]
        if mem:
            worst = max(mem, key=lambda r: r["peak_ratio"])
            lines.append(f"peak memory <= 1.3x torch.nn: {'met' if worst['peak_ratio'] <= 1.3 else 'NOT met'} "
                         f"(worst {worst['case']} at {worst['shape']}: {worst['peak_ratio']:.2f}x)")
    return lines


def run_tests(timeout: float) -> int:
    """The GPU tests in their own process (the Triton kernels compile for the GPU there; no interpreter)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS]
    print("$", " ".join(command[2:]), flush=True)
    try:
        return subprocess.run(command, cwd=ROOT, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        print(f"the tests did not finish in {timeout:.0f} s")
        return 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="A,B,C,D,E")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=150.0, help="seconds for the timings (after the tests)")
    parser.add_argument("--test-timeout", type=float, default=120.0)
    parser.add_argument("--no-tests", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu.py needs a CUDA device; none is available (the GPU figures stay unmeasured)")
        return 2
    reason = triton_kernels.unavailable_reason()
    if reason:
        print(reason)
        return 2
    shapes, cases = args.shapes.split(","), args.cases.split(",")
    unknown = [s for s in shapes if s not in GPU_SHAPES] + [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown shapes or cases: {unknown}; shapes {list(GPU_SHAPES)}, cases {list(CASES)}")
    print(f"rnnkit {rnnkit.__version__}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"{torch.cuda.get_device_name()}; cuDNN {torch.backends.cudnn.version()}; median of {args.repeats}\n")
    tests_rc = 0 if args.no_tests else run_tests(args.test_timeout)
    print()
    torch.manual_seed(0)
    rows, deadline = [], time.monotonic() + args.budget
    for shape in shapes:
        for label in cases:
            if time.monotonic() > deadline:
                rows.append(dict(case=label, shape=shape, skipped=f"over the {args.budget:.0f} s budget"))
                continue
            try:
                rows.extend(measure(label, shape, args.repeats))
            except torch.cuda.OutOfMemoryError as e:
                rows.append(dict(case=label, shape=shape, skipped=f"out of memory ({str(e)[:60]})"))
                torch.cuda.empty_cache()
            print(f"  {label} at {shape} done", file=sys.stderr, flush=True)
    print_table(rows)
    print()
    for line in check_targets(rows):
        print(line)
    print(f"GPU tests: {'passed' if tests_rc == 0 else 'FAILED' if not args.no_tests else 'not run'}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "tests_rc": tests_rc}, indent=1))
    return tests_rc


if __name__ == "__main__":
    sys.exit(main())
