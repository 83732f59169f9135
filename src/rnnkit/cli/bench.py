"""Speed and memory of rnnkit's layers as ratios to torch.nn of the same size, measured in one run.

Time: the median of repeated train steps (forward + backward of `output.sum()`, batch-first) and
inference calls (eval mode, no grad), rnnkit and torch.nn interleaved so both see the same
machine state. Memory: the peak resident memory a train step adds, each measured in a fresh
process. Ratios below 1 mean rnnkit is faster or smaller.
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time

import torch

import rnnkit
from rnnkit.engine import dispatch
from rnnkit.nn.variants import VARIANTS

SHAPES = {  # name: (B, T, I, H)
    "A": (128, 28, 28, 128),  # MNIST rows
    "B": (64, 100, 64, 256),  # character language model
    "C": (32, 512, 32, 128),  # long sequences
    "D": (1, 200, 64, 512),  # batch of one
}
# the variants timed (rnnkit.nn.variants), each against torch.nn's layer of the same kind (with proj_size too)
CASES = {label: VARIANTS[label] for label in (
    "LSTM", "GRU", "RNN tanh", "LSTM proj_size=H/2", "LSTM peephole", "LSTM coupled", "LSTM layer_norm",
    "LSTM softsign", "GRU reset_before", "GRU softsign", "LSTM recurrent_dropout")}


def build(label: str, shape: str, device=None, shapes=SHAPES):
    """The rnnkit layer of a case, the torch.nn layer it is compared with, and an input."""
    B, T, I, H = shapes[shape]
    variant = CASES[label]
    ours = variant.build(I, H, batch_first=True, device=device)
    ref = variant.torch_equivalent(I, H, batch_first=True, device=device)
    return ours, ref, torch.randn(B, T, I, device=device)


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "load": os.getloadavg(),
            "python": platform.python_version(), "torch": torch.__version__, "rnnkit": rnnkit.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def _train_step(layer, x):
    def run():
        layer.zero_grad(set_to_none=True)
        layer(x)[0].sum().backward()
    return run


def _inference(layer, x):
    def run():
        with torch.no_grad():
            layer(x)
    return run


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_pair(fn_a, fn_b, repeats: int, device) -> tuple[float, float]:
    """Median seconds of fn_a and fn_b, run alternately after one warm-up each."""
    times_a, times_b = [], []
    fn_a(), fn_b()
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times_a), statistics.median(times_b)


def time_case(label: str, shape: str, repeats: int, device: torch.device) -> dict:
    """Median train-step and inference times of one case at one shape, and their ratios."""
    train_only = CASES[label].train_only
    B = SHAPES[shape][0]
    torch.manual_seed(0)
    ours, ref, x = build(label, shape, device)
    row = {"case": label, "shape": shape, "impl": _impl_used(ours, x, B, True)}
    ours.train(), ref.train()
    row["train_s"], row["train_ref_s"] = _median_pair(_train_step(ours, x), _train_step(ref, x), repeats, device)
    row["train_ratio"] = row["train_s"] / row["train_ref_s"]
    if not train_only:
        ours.eval(), ref.eval()
        row["infer_s"], row["infer_ref_s"] = _median_pair(_inference(ours, x), _inference(ref, x), repeats, device)
        row["infer_ratio"] = row["infer_s"] / row["infer_ref_s"]
        row["infer_impl"] = _impl_used(ours, x, B, False)
    return row


def _impl_used(layer, x, batch, recording) -> str:
    return dispatch.choose(layer.impl, layer.cell, x.device, batch, layer.recurrent_dropout, recording, None,
                           recording=recording)


PEAK_SCRIPT = """
import sys, torch, rnnkit
from rnnkit.cli.bench import build

def status(key):  # KiB, from the kernel's accounting of this process
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(key + ":")))

label, shape, which = sys.argv[1], sys.argv[2], sys.argv[3]
ours, ref, x = build(label, shape)
layer = ours if which == "rnnkit" else ref
layer(x)[0].sum().backward()  # warm-up: lazy initialisation is not the step's memory
layer.zero_grad(set_to_none=True)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak resident size (VmHWM) to the current one
before = status("VmRSS")
layer(x)[0].sum().backward()
print(status("VmHWM") - before)
"""


def peak_memory(label: str, shape: str) -> dict:
    """Peak resident memory (KiB) one train step adds, rnnkit and torch.nn, each in a new process."""
    peaks = {}
    for which in ("rnnkit", "torch"):
        # a fixed mmap threshold makes glibc return every block of 16 KiB or more to the system on
        # free, so resident memory follows live tensors instead of the allocator's cache
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "16384", "MALLOC_TRIM_THRESHOLD_": "0"}
        out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, label, shape, which],
                             capture_output=True, text=True, check=True, env=env)
        peaks[which] = int(out.stdout.strip().splitlines()[-1])
    return {"case": label, "shape": shape, "peak_kib": peaks["rnnkit"], "peak_ref_kib": peaks["torch"],
            "peak_ratio": peaks["rnnkit"] / max(peaks["torch"], 1)}


def run(shapes=tuple(SHAPES), cases=tuple(CASES), repeats: int = 5, device: str = "cpu", memory: bool = True,
        progress=None) -> dict:
    device = torch.device(device)
    rows = []
    for shape in shapes:
        for label in cases:
            rows.append(time_case(label, shape, repeats, device))
            if progress:
                progress(rows[-1])
    memory_rows = [peak_memory(label, "B") for label in cases] if memory and device.type == "cpu" else []
    return {"machine": machine(), "repeats": repeats, "device": str(device), "time": rows, "memory": memory_rows}


def format_table(result: dict) -> str:
    m = result["machine"]
    lines = [f"rnnkit {m['rnnkit']}, torch {m['torch']}, Python {m['python']}; {m['cpu']}, "
             f"{m['cores']} cores, {m['threads']} threads; device {result['device']}; "
             f"load average before the run {', '.join(f'{v:.2f}' for v in m['load'])}; median of {result['repeats']}",
             "",
             "| case | shape | train path | train ratio | infer path | infer ratio | train ms | torch.nn train ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["time"]:
        infer = f"{r['infer_impl']} | {r['infer_ratio']:.2f}" if "infer_ratio" in r else "- | -"
        lines.append(f"| {r['case']} | {r['shape']} | {r['impl']} | {r['train_ratio']:.2f} | {infer} | "
                     f"{r['train_s'] * 1e3:.1f} | {r['train_ref_s'] * 1e3:.1f} |")
    if result["memory"]:
        lines += ["", "| case | shape | peak memory ratio | rnnkit MiB | torch.nn MiB |", "|---|---|---|---|---|"]
        for r in result["memory"]:
            lines.append(f"| {r['case']} | {r['shape']} | {r['peak_ratio']:.2f} | {r['peak_kib'] / 1024:.0f} | "
                         f"{r['peak_ref_kib'] / 1024:.0f} |")
    return "\n".join(lines)
