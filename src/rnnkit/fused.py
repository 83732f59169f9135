"""Fused LSTM gate math on the CPU: one pass over the units per time step instead of one PyTorch op per
gate, for every LSTM the engine runs — above all the variants PyTorch's own kernels lack (peephole, coupled
input-forget gate, softsign, layer norm, recurrent dropout).

`_fused.cpp` is compiled at first use with the system C++ compiler (`$CXX`, else `c++`, `g++`, `clang++`),
with no PyTorch headers, into a per-user cache (`$RNNKIT_CACHE`, else `~/.cache/rnnkit`), and loaded with
ctypes. Without a compiler, or with `RNNKIT_FUSED=0`, `library()` is None (`unavailable_reason()` says why)
and cells.LSTMStep runs its PyTorch ops instead (the reference the fused loops are tested against). Only
float32/float64 tensors on the CPU take this path, outside autograd recording; the matrix products stay in
PyTorch.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("_fused.cpp")
FLAGS = ["-std=c++20", "-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno", "-fopenmp-simd",
         "-shared", "-fPIC"]
_DTYPES = {torch.float32: "f32", torch.float64: "f64"}
_library: ctypes.CDLL | None = None
_error: str | None = None  # why the library is unavailable, once tried


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cache_dir() -> Path:
    return Path(os.environ.get("RNNKIT_CACHE") or Path.home() / ".cache" / "rnnkit")


def _cpu() -> str:
    """The instruction sets the build may use (-march=native): a cache shared by different machines
    must not hand one a library built for another."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _build() -> ctypes.CDLL:
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found ($CXX, c++, g++, clang++)")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([compiler, *FLAGS, platform.machine(), _cpu()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"fused-{key}.so"
    if not target.is_file():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError:  # e.g. a read-only home: build per process in the temporary directory
            target = Path(tempfile.mkdtemp(prefix="rnnkit-")) / target.name
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)  # built aside, then renamed: atomic
        os.close(fd)
        try:
            done = subprocess.run([compiler, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[-500:]}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    p = ctypes.c_void_p
    for suffix in _DTYPES.values():
        getattr(lib, f"lstm_forward_{suffix}").argtypes = [p] * 9
        getattr(lib, f"lstm_backward_{suffix}").argtypes = [p] * 15
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first call; None (reason in `unavailable_reason()`) if they cannot be."""
    global _library, _error
    if _library is None and _error is None:
        if os.environ.get("RNNKIT_FUSED", "1") == "0":
            _error = "disabled by RNNKIT_FUSED=0"
        else:
            try:
                _library = _build()
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                _error = str(e)
    return _library


def unavailable_reason() -> str | None:
    library()
    return _error


def usable(*tensors: Tensor) -> bool:
    """True when the fused loops can run on these tensors: CPU, float32/float64, and no autograd graph to
    record through them (the engine's explicit forward and backward, and inference, run outside autograd),
    and no tracer or compiler watching (a ctypes call is invisible to them)."""
    first = tensors[0]  # called at every time step: the cheap checks first (ONNX export traces)
    if first.dtype not in _DTYPES or first.is_cuda or (_library is None and library() is None):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    if torch._C._get_tracing_state() is not None or torch.compiler.is_compiling():
        return False
    dtype = first.dtype
    return first.device.type == "cpu" and all(t.dtype is dtype and not t.is_cuda for t in tensors)


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _common(c: Tensor, peep, ln, coupled: bool, softsign: bool):
    """The kernels' first three arguments: parameter pointers, (B, H), flags."""
    if ln is None:
        params = _Pointers(_ptr(peep), None, None, None, None)
    else:
        params = _Pointers(_ptr(peep), *(_ptr(t) for t in ln))
    return params, _Dims(*c.shape), _Flags(coupled, softsign)


_Pointers, _Dims, _Flags = ctypes.c_void_p * 5, ctypes.c_int64 * 2, ctypes.c_int * 2


def lstm_forward(gates: Tensor, c: Tensor, peep: Tensor | None, coupled: bool, softsign: bool,
                 ln: tuple | None = None):
    """One step's gate math. gates (B, G*H), contiguous: the pre-activations (with layer norm: xp alone),
    replaced by the activated gates. ln: (a = h W_hh^T (B, G*H), ln_weight_hh, ln_weight_c, ln_bias_c or
    None) for a layer-norm LSTM. Returns c_new, act_c, h (B, H) and the rows' LN moments (B, 4) or None."""
    c = c.contiguous()
    if ln is not None:
        ln = tuple(None if t is None else t.contiguous() for t in ln)
    c_new, act_c, h = (torch.empty_like(c) for _ in range(3))
    stats = c.new_empty(c.shape[0], 4) if ln is not None else None
    fn = getattr(library(), f"lstm_forward_{_DTYPES[c.dtype]}")
    fn(*_common(c, peep, ln, coupled, softsign), gates.data_ptr(), c.data_ptr(), c_new.data_ptr(),
       act_c.data_ptr(), h.data_ptr(), _ptr(stats))
    return c_new, act_c, h, stats


def lstm_backward(d_h: Tensor, d_c: Tensor, gates: Tensor, c: Tensor, c_new: Tensor, act_c: Tensor,
                  stats: Tensor | None, peep: Tensor | None, d_gates: Tensor, coupled: bool, softsign: bool,
                  ln: tuple | None = None):
    """The step's backward from d_h, d_c (B, H) and lstm_forward's results. Fills d_gates (B, G*H), the
    gradient of the pre-activations; returns d_c_prev (B, H), the gradient of a (B, G*H) with layer norm
    (else None), and the batch sums of the vector parameters' gradients: {name: (n,)}."""
    B, H = c.shape
    d_h, d_c, gates, c = d_h.contiguous(), d_c.contiguous(), gates.contiguous(), c.contiguous()
    c_new, act_c = c_new.contiguous(), act_c.contiguous()
    if not d_gates.is_contiguous():
        raise ValueError("d_gates must be contiguous")
    sizes = {}
    if peep is not None:
        sizes["weight_peephole"] = peep.numel()
    if ln is not None:
        ln = tuple(None if t is None else t.contiguous() for t in ln)
        sizes.update(ln_weight_hh=gates.shape[1], ln_weight_c=H)
        if ln[3] is not None:
            sizes["ln_bias_c"] = H
    d_vec = c.new_zeros(sum(sizes.values()))
    d_c_prev = torch.empty_like(c)
    d_a = torch.empty_like(gates) if ln is not None else None
    work = c.new_empty(H)
    fn = getattr(library(), f"lstm_backward_{_DTYPES[c.dtype]}")
    fn(*_common(c, peep, ln, coupled, softsign), d_h.data_ptr(), d_c.data_ptr(), gates.data_ptr(),
       c.data_ptr(), c_new.data_ptr(), act_c.data_ptr(), _ptr(stats), d_gates.data_ptr(), d_c_prev.data_ptr(),
       _ptr(d_vec), _ptr(d_a), work.data_ptr())
    grads, start = {}, 0
    for name, n in sizes.items():
        grads[name] = d_vec[start:start + n]
        start += n
    return d_c_prev, d_a, grads
