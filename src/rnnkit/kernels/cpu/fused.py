"""Fused kernels on the CPU for every cell the engine runs, above all the variants PyTorch's own kernels lack:

  - `lstm_sequence`, `gru_sequence`, `rnn_sequence` and their `*_backward`: one direction of a layer over a whole
    sequence in one call to one C++ loop shared by the cells — the time loop, the recurrent matrix products
    (on weights packed once per call, `repeated_product`; the others through the BLAS gemm PyTorch's CPU library
    exports, looked up and checked by `gemm_address`) and the gate math — for inference and for the engine's
    explicit BPTT, forward and backward;
  - `lstm_forward` / `lstm_backward`: the LSTM's gate math of one step, in one pass over the units instead of one
    PyTorch op per gate, for the engine's step loop where no gemm is found.

`fused.cpp` is compiled at first use with the system C++ compiler (`$CXX`, else `c++`, `g++`, `clang++`),
with no PyTorch headers, into a per-user cache (`$RNNKIT_CACHE`, else `~/.cache/rnnkit`), and loaded with
ctypes. Without a compiler, or with `RNNKIT_FUSED=0`, `library()` is None (`unavailable_reason()` says why)
and the cells run their PyTorch ops instead (the reference the fused loops are tested against). Only
float32/float64 tensors on the CPU take these paths: the sequences through rnnkit's custom operators
(rnnkit.engine.ops), which autograd and the compilers see, the per-step kernels only outside autograd recording
and tracing (`direct`).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("fused.cpp")
FLAGS = ["-std=c++20", "-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno", "-shared", "-fPIC"]
# OpenMP: threads over a step's rows, in PyTorch's own runtime (the library is loaded after torch, so its
# libgomp.so.1 is the one already in the process); a compiler without it builds the single-threaded loops
OPENMP_FLAGS = (["-fopenmp"], ["-fopenmp-simd"])
_DTYPES = {torch.float32: "f32", torch.float64: "f64"}
STATS = 6  # a row's layer-norm moments (mean, 1/sqrt(var + eps)) of h W_hh^T, c' and x W_ih^T (lstm::STATS)
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
    builds = [cache_dir() / f"fused-{key}-{flags[0].lstrip('-')}.so" for flags in OPENMP_FLAGS]
    error = None
    for target, openmp in sorted(zip(builds, OPENMP_FLAGS), key=lambda b: not b[0].is_file()):  # a cached one first
        try:
            return ctypes.CDLL(str(target if target.is_file() else _compile(compiler, openmp, target)))
        except (OSError, RuntimeError) as e:  # e.g. no OpenMP in this compiler: the next flags
            error = e
    raise error


def _compile(compiler: str, openmp: list[str], target: Path) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # e.g. a read-only home: build per process in the temporary directory
        target = Path(tempfile.mkdtemp(prefix="rnnkit-")) / target.name
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)  # built aside, then renamed: atomic
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, *openmp, "-o", tmp, str(SOURCE)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load(lib: ctypes.CDLL) -> ctypes.CDLL:
    p = ctypes.c_void_p
    for suffix in _DTYPES.values():
        getattr(lib, f"lstm_forward_{suffix}").argtypes = [p] * 9
        getattr(lib, f"lstm_backward_{suffix}").argtypes = [p] * 15
        getattr(lib, f"sequence_{suffix}").argtypes = [ctypes.POINTER(SequenceArgs)]
        getattr(lib, f"sequence_backward_{suffix}").argtypes = [ctypes.POINTER(SequenceArgs),
                                                                ctypes.POINTER(BackwardArgs)]
        getattr(lib, f"repeated_product_{suffix}").argtypes = [p, ctypes.c_int, ctypes.c_int, ctypes.c_int, p, p, p,
                                                               p]
        getattr(lib, f"summed_product_{suffix}").argtypes = [p, ctypes.c_int, p, p, p, p]
        getattr(lib, f"sequence_slices_{suffix}").argtypes = [ctypes.POINTER(SequenceArgs), p]
        getattr(lib, f"sequence_slices_{suffix}").restype = ctypes.c_int64
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first call; None (reason in `unavailable_reason()`) if they cannot be."""
    global _library, _error
    if _library is None and _error is None:
        if os.environ.get("RNNKIT_FUSED", "1") == "0":
            _error = "disabled by RNNKIT_FUSED=0"
        else:
            try:
                _library = _load(_build())
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                _error = str(e)
    return _library


def unavailable_reason() -> str | None:
    library()
    return _error


def usable(*tensors: Tensor) -> bool:
    """True when the fused loops can run on these tensors: CPU, float32/float64, and the kernels built."""
    first = tensors[0]  # called at every time step: the cheap checks first
    if first.dtype not in _DTYPES or first.is_cuda or (_library is None and library() is None):
        return False
    dtype = first.dtype
    return first.device.type == "cpu" and all(t.dtype is dtype and not t.is_cuda for t in tensors)


def direct(*tensors: Tensor) -> bool:
    """True when a kernel may be called directly on these tensors (the per-step kernels, which no operator wraps):
    `usable`, no autograd graph to record through them, and no tracer or compiler watching (a ctypes call is
    invisible to them)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    if torch._C._get_tracing_state() is not None or torch.compiler.is_compiling():
        return False
    return usable(*tensors)


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
    None) for a layer-norm LSTM. Returns c_new, act_c, h (B, H) and the rows' LN moments (B, STATS) or None."""
    c = c.contiguous()
    if ln is not None:
        ln = tuple(None if t is None else t.contiguous() for t in ln)
    c_new, act_c, h = (torch.empty_like(c) for _ in range(3))
    stats = c.new_empty(c.shape[0], STATS) if ln is not None else None
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
    if ln is not None:
        ln = tuple(None if t is None else t.contiguous() for t in ln)
    sizes = _vector_sizes(peep, None if ln is None else ln[1], H, None if ln is None else ln[3])
    d_vec = c.new_zeros(sum(sizes.values()))
    d_c_prev = torch.empty_like(c)
    d_a = torch.empty_like(gates) if ln is not None else None
    work = c.new_empty(H)
    fn = getattr(library(), f"lstm_backward_{_DTYPES[c.dtype]}")
    fn(*_common(c, peep, ln, coupled, softsign), d_h.data_ptr(), d_c.data_ptr(), gates.data_ptr(),
       c.data_ptr(), c_new.data_ptr(), act_c.data_ptr(), _ptr(stats), d_gates.data_ptr(), d_c_prev.data_ptr(),
       _ptr(d_vec), _ptr(d_a), work.data_ptr())
    return d_c_prev, d_a, _split(d_vec, sizes)


def _vector_sizes(peep: Tensor | None, ln_w_hh: Tensor | None, H: int, ln_b_c: Tensor | None,
                  ln_w_ih: Tensor | None = None, b: Tensor | None = None) -> dict:
    """{name: size} of the vector parameters whose gradients the kernels add to d_vec, in its order (lstm::Vectors);
    ln_w_ih and b where the loop finishes the input projection (lstm_sequence's `finish`), "bias" being b's."""
    sizes = {}
    if peep is not None:
        sizes["weight_peephole"] = peep.numel()
    if ln_w_hh is not None:
        sizes.update(ln_weight_hh=ln_w_hh.numel(), ln_weight_c=H)
        if ln_b_c is not None:
            sizes["ln_bias_c"] = H
        if ln_w_ih is not None:
            sizes["ln_weight_ih"] = ln_w_ih.numel()
            if b is not None:
                sizes["bias"] = b.numel()
    return sizes


def _split(d_vec: Tensor, sizes: dict) -> dict:
    """d_vec cut into the named gradients of _vector_sizes."""
    return dict(zip(sizes, d_vec.split(list(sizes.values()))))


# ---- whole sequences: the time loop in C++, the recurrent products through PyTorch's own BLAS ----

_GEMM_NAMES = {torch.float32: "sgemm_", torch.float64: "dgemm_"}
_gemm: dict | None = None  # dtype -> address of the Fortran-interface gemm, once looked up


def _check_gemm(address: int, dtype: torch.dtype) -> bool:
    """Whether the function at `address` computes C = A^T B + C with 32-bit integer arguments, as PyTorch does.
    The operands are ctypes arrays, not tensors: the check may first run under any of PyTorch's modes (torch.func's
    transforms, a compiler's tracing), where a tensor need not have memory of its own."""
    scalar = ctypes.c_float if dtype == torch.float32 else ctypes.c_double
    c_int = ctypes.POINTER(ctypes.c_int)
    fn = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, c_int, c_int, c_int, ctypes.POINTER(scalar),
                          ctypes.c_void_p, c_int, ctypes.c_void_p, c_int, ctypes.POINTER(scalar), ctypes.c_void_p,
                          c_int)(address)
    rng = random.Random(0)
    a, b, c = ([[rng.uniform(-1, 1) for _ in range(cols)] for _ in range(rows)]
               for rows, cols in ((5, 3), (2, 5), (2, 3)))
    # row-major (2, 3) = b (2, 5) a (5, 3): column-major c^T = a^T b^T
    expected = [[c[i][j] + sum(b[i][k] * a[k][j] for k in range(5)) for j in range(3)] for i in range(2)]
    a_, b_, c_ = ((scalar * (len(m) * len(m[0])))(*(v for row in m for v in row)) for m in (a, b, c))
    m, n, k, one = ctypes.c_int(3), ctypes.c_int(2), ctypes.c_int(5), scalar(1)
    fn(b"N", b"N", m, n, k, one, ctypes.addressof(a_), m, ctypes.addressof(b_), k, one, ctypes.addressof(c_), m)
    got = [[c_[3 * i + j] for j in range(3)] for i in range(2)]
    return all(abs(g - e) <= 1e-6 + 1e-5 * abs(e) for gr, er in zip(got, expected) for g, e in zip(gr, er))


def gemm_address(dtype: torch.dtype) -> int | None:
    """The address of the BLAS gemm PyTorch's CPU library exports for `dtype`, checked once on a small
    product; None where there is none, or it disagrees. Looked for only in PyTorch builds with MKL on
    x86-64 Linux (the pip wheels), whose `sgemm_`/`dgemm_` take 32-bit integers: elsewhere a same-named
    function with another integer width could not even be checked safely."""
    global _gemm
    if _gemm is None:
        _gemm = {}
        path = Path(torch.__file__).with_name("lib") / "libtorch_cpu.so"
        if platform.system() == "Linux" and platform.machine() == "x86_64" and torch.backends.mkl.is_available() \
                and path.is_file():
            try:
                lib = ctypes.CDLL(str(path))
            except OSError:
                return None
            for dt, name in _GEMM_NAMES.items():
                symbol = getattr(lib, name, None)
                address = ctypes.cast(symbol, ctypes.c_void_p).value if symbol is not None else None
                if address and _check_gemm(address, dt):
                    _gemm[dt] = address
    return _gemm.get(dtype)


def sequence_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether layers of `dtype` on the CPU run whole sequences in C++ (the kernels built, a gemm found)."""
    return library() is not None and gemm_address(dtype) is not None


BACKWARD_CHUNK_BYTES = 2 << 20  # layer norm: d_a of this many bytes' worth of steps per W_hh product

# The buffers of a sequence call, in SequenceArgs' order (fused.cpp): those every cell has, the GRU's, the LSTM's
SLOTS = ("batch_sizes", "w_hh", "mask", "xp", "h0", "h", "out", "hr", "x", "w_ih", "b", "ln_w_ih", "work",
         "gates", "extra", "b_hh",
         "c", "act_c", "h_new", "a", "stats", "w_hr", "peep", "ln_w_hh", "ln_w_c", "ln_b_c")
GRADS = ("d_out", "d_h", "d_c", "d_xp", "d_hout", "d_vec", "d_w_hh", "work", "d_extra")  # BackwardArgs' order
_CELLS = ("lstm", "gru", "rnn")
_ACTIVATIONS = ("tanh", "softsign", "relu")


class SequenceArgs(ctypes.Structure):
    """fused.cpp's SequenceArgs, field for field: the configuration, the sizes, the gemm, the buffers (SLOTS)."""

    _fields_ = [*((name, ctypes.c_int32) for name in ("cell", "activation", "keep", "clear", "coupled",
                                                       "reset_after", "peephole", "layer_norm")),
                *((name, ctypes.c_int64) for name in ("steps", "batch", "hidden", "proj", "input", "chunk",
                                                       "n_gates")),
                ("gemm", ctypes.c_void_p), ("sum_gemm", ctypes.c_void_p), *((name, ctypes.c_void_p) for name in SLOTS)]


class BackwardArgs(ctypes.Structure):
    """fused.cpp's BackwardArgs: the backward's own buffers (GRADS)."""

    _fields_ = [(name, ctypes.c_void_p) for name in GRADS]


class Projection(NamedTuple):
    """Inference's input projection, done in the sequence call `chunk` steps at a time: x (T, B, I), w_ih (G*H, I),
    bias (G*H) or None, ln_w_ih (G*H) or None (the LSTM's layer norm of x W_ih^T)."""

    x: Tensor
    w_ih: Tensor
    bias: Tensor | None
    ln_w_ih: Tensor | None
    chunk: int


class Sequence:
    """The tensors of a sequence call (SLOTS) and its options; with `keep`, what the backward needs."""

    def __init__(self, cell: str, activation: str, keep: bool, coupled: bool = False, reset_after: bool = False,
                 chunk: int = 0, clear: bool = False, **tensors):
        self.cell, self.activation, self.keep, self.clear = cell, activation, keep, clear
        self.coupled, self.reset_after, self.chunk = coupled, reset_after, chunk
        for name in SLOTS:
            setattr(self, name, tensors.get(name))

    def final_states(self) -> tuple[Tensor, ...]:
        """(h, c) or (h,) at each row's last step (c: every step's kept, or the last two alternating)."""
        if self.cell != "lstm":
            return (self.h,)
        return self.h, self.c[-1] if self.keep else self.c[len(self.out) % 2]


def _contiguous(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def _batch_sizes(batch_sizes) -> Tensor | None:
    """batch_sizes (a list or a tensor) as the loops read it: a contiguous int64 tensor."""
    if batch_sizes is None or isinstance(batch_sizes, Tensor):
        return None if batch_sizes is None else batch_sizes.to(torch.int64).contiguous()
    return torch.tensor(batch_sizes, dtype=torch.int64)


def _sequence(cell: str, activation: str, xp: Tensor | None, h0: Tensor, w_hh: Tensor, mask: Tensor | None,
              batch_sizes: list[int] | None, keep: bool, projection: Projection | None, H: int, buffers,
              finish: tuple | None = None, **options) -> Sequence:
    """What every cell's sequence call shares: the time-major input (xp (T, B, G*H), or `projection`'s x), h0 (B, P),
    w_hh (G*H, P), recurrent dropout's mask (B, P) or None, batch_sizes as in rnnkit.engine (rows sorted longest
    first) or None. `buffers(T, B, per_step, summed)` makes the cell's own: per_step(*shape) is a step's buffer, for all
    T steps with `keep`; summed(*shape) the same, zero-filled where rows past their end would be read by the
    weight-gradient products. `finish`: (ln_w_ih, bias or None) where xp is x W_ih^T, which the LSTM's loop normalises
    (then kept in the Sequence, for the backward). Runs the C++ loop and returns the Sequence (out (T, B, P), zero
    past a row's end; h, the final h)."""
    x, w_ih, bias, ln_w_ih, chunk = projection if projection is not None else (None, None, None, None, 0)
    if finish is not None:
        ln_w_ih, bias = finish
    source = xp if x is None else x
    T, B = source.shape[:2]
    GH, P = w_hh.shape
    new = source.new_empty
    per_step = (lambda *shape: new(T, *shape)) if keep else (lambda *shape: new(*shape))
    summed = (lambda *shape: source.new_zeros(T, *shape)) if keep and batch_sizes is not None else per_step
    q = Sequence(cell, activation, keep, chunk=chunk, **options,
                 batch_sizes=_batch_sizes(batch_sizes),
                 w_hh=w_hh.contiguous(),
                 mask=_contiguous(mask),
                 xp=new(min(chunk, T), B, GH) if x is not None else xp.contiguous(),
                 h0=h0.contiguous(), h=h0.clone(memory_format=torch.contiguous_format), out=new(T, B, P),
                 hr=None if mask is None else summed(B, P), work=new(B, GH),
                 x=_contiguous(x), w_ih=_contiguous(w_ih), b=_contiguous(bias),
                 ln_w_ih=_contiguous(ln_w_ih), **buffers(T, B, per_step, summed))
    fn = getattr(library(), f"sequence_{_DTYPES[source.dtype]}")
    fn(ctypes.byref(_args(q, H, 0 if x is None else x.shape[2], chunk)))
    if finish is None:
        q.xp = None  # the backward needs none of these: kept, they would hold memory
    q.x = q.w_ih = q.work = None
    return q


def sequence_slices(batch: int, steps: int, batch_sizes=None, dtype: torch.dtype = torch.float32) -> list[int]:
    """The slices of rows a sequence call (forward or backward) of `batch` rows and `steps` steps runs, each on its
    own thread as a sequence of its own: their first rows and the end ([0, batch]: not split). From fused.cpp's SLICE_ROWS rows
    per thread on, at multiples of the products' row blocks; with batch_sizes (per step, the rows sorted longest
    first) so that each runs about as many row-steps."""
    sizes = _batch_sizes(batch_sizes)
    args = SequenceArgs(steps=steps, batch=batch, batch_sizes=_ptr(sizes))
    starts = (ctypes.c_int64 * (library().sequence_max_slices() + 1))()
    n = getattr(library(), f"sequence_slices_{_DTYPES[dtype]}")(ctypes.byref(args), starts)
    return list(starts[:n + 1])


def _args(q: Sequence, H: int, I: int, chunk: int, sum_gemm: int | None = None) -> SequenceArgs:
    """The SequenceArgs of q: I the input's width (inference's projection, else 0), chunk its steps per product (the
    backward: the LSTM's layer-norm chunk), sum_gemm the backward's (`_sum_gemm`; the forward sums nothing)."""
    T, B, P = q.out.shape
    return SequenceArgs(_CELLS.index(q.cell), _ACTIVATIONS.index(q.activation), q.keep, q.clear, q.coupled,
                        q.reset_after,
                        q.peep is not None, q.ln_w_hh is not None, T, B, H, P, I, chunk, q.w_hh.shape[0] // H,
                        gemm_address(q.out.dtype), sum_gemm, *(_ptr(getattr(q, name)) for name in SLOTS))


def _sequence_backward(q: Sequence, d_out: Tensor, d_h: Tensor, chunk: int = 0, **grads) -> tuple[Tensor, Tensor]:
    """The C++ backward loop over a kept sequence: d_xp (T, B, G*H) and d_h0 (B, P) from d_out (T, B, P) and d_h,
    the gradient of the final h; `grads` the cell's own buffers (names of GRADS)."""
    T, B, P = q.out.shape
    H = q.c.shape[2] if q.cell == "lstm" else P
    d_out = d_out.contiguous()
    d_h = d_h.clone(memory_format=torch.contiguous_format)
    d_xp = d_out.new_empty(T, B, q.w_hh.shape[0]) if q.batch_sizes is None else d_out.new_zeros(T, B, q.w_hh.shape[0])
    grads.update(d_out=d_out, d_h=d_h, d_xp=d_xp)
    fn = getattr(library(), f"sequence_backward_{_DTYPES[d_out.dtype]}")
    fn(ctypes.byref(_args(q, H, 0, chunk, _sum_gemm(d_out.dtype))),
       ctypes.byref(BackwardArgs(*(_ptr(grads.get(name)) for name in GRADS))))
    return d_xp, d_h


def repeated_product(a: Tensor, b: Tensor, out: Tensor, transposed: bool = False, accumulate: bool = False,
                     times: int = 1, packed: bool = True) -> Tensor:
    """out = a @ b (+ out if accumulate) through a sequence call's products with a repeated right operand: b packed
    once into the loops' own panel layout (packed) or the gemm at each product, `times` times (out is then
    a @ b + times * out, accumulating). b is (k, n), or (n, k) with `transposed` (b.T is then multiplied); every
    tensor on the CPU, of one dtype (float32 or float64), with rows of stride(1) == 1. Needs `gemm_address(dtype)`:
    for the tests and benchmarks/bench_kernels.py."""
    (m, k), n = a.shape, b.shape[0] if transposed else b.shape[1]
    if out.shape != (m, n) or (b.shape[1] if transposed else b.shape[0]) != k:
        raise ValueError(f"repeated_product: shapes {tuple(a.shape)}, {tuple(b.shape)} (transposed={transposed}), "
                         f"out {tuple(out.shape)} do not match")
    if any(t.stride(1) != 1 for t in (a, b, out)) or len({a.dtype, b.dtype, out.dtype}) != 1:
        raise ValueError("repeated_product: needs rows of stride 1 and one dtype, got strides "
                         f"{a.stride()}, {b.stride()}, {out.stride()} and {a.dtype}, {b.dtype}, {out.dtype}")
    dims = (ctypes.c_int64 * 7)(m, n, k, a.stride(0), b.stride(0), out.stride(0), times)
    getattr(library(), f"repeated_product_{_DTYPES[a.dtype]}")(dims, transposed, accumulate, packed, _ptr(a),
                                                                 _ptr(b), _ptr(out), gemm_address(a.dtype))
    return out


def summed_product(a: Tensor, b: Tensor, out: Tensor | None = None, kernel: str | None = None) -> Tensor:
    """a^T @ b (+ out, accumulated into it, if given): a (k, m) and b (k, n), e.g. a gradient's rows d_pre (T*B, G*H)
    and the inputs h (T*B, H) they multiplied, summed over their k rows (a weight gradient). `kernel`: "rnnkit" (the
    C++ loops' own), "blas" (PyTorch's gemm, `gemm_address`), or None: `sums_kernel(dtype)`, the faster of the two on
    this machine. Contiguous rows (stride(1) == 1), CPU, float32 or float64 (the kernels built)."""
    (k, m), n = a.shape, b.shape[1]
    if b.shape[0] != k or (out is not None and out.shape != (m, n)):
        raise ValueError(f"summed_product: shapes {tuple(a.shape)}, {tuple(b.shape)}"
                         f"{'' if out is None else f', out {tuple(out.shape)}'} do not match")
    if a.stride(1) != 1 or b.stride(1) != 1 or a.dtype != b.dtype:
        raise ValueError(f"summed_product: needs rows of stride 1 and one dtype, got strides {a.stride()}, "
                         f"{b.stride()} and {a.dtype}, {b.dtype}")
    if kernel not in (None, *SUM_KERNELS):
        raise ValueError(f"summed_product: kernel must be one of {SUM_KERNELS} or None, got {kernel!r}")
    accumulate = out is not None
    out = a.new_empty(m, n) if out is None else out
    if out.stride(1) != 1 or out.dtype != a.dtype:
        raise ValueError(f"summed_product: out needs rows of stride 1 and dtype {a.dtype}, got {out.stride()}, "
                         f"{out.dtype}")
    gemm = gemm_address(a.dtype) if (kernel or sums_kernel(a.dtype)) == "blas" else None
    if kernel == "blas" and gemm is None:
        raise ValueError(f"summed_product: kernel 'blas' needs PyTorch's gemm, which was not found for {a.dtype}")
    _summed(a.dtype, (m, n, k, a.stride(0), b.stride(0), out.stride(0)), accumulate, _ptr(a), _ptr(b), _ptr(out),
            gemm)
    return out


def _summed(dtype: torch.dtype, dims, accumulate: bool, a, b, out, gemm: int | None) -> None:
    getattr(library(), f"summed_product_{_DTYPES[dtype]}")((ctypes.c_int64 * 6)(*dims), accumulate, a, b, out, gemm)


SUM_KERNELS = ("rnnkit", "blas")
_sum_kernels: dict[torch.dtype, str] = {}


def sums_kernel(dtype: torch.dtype) -> str:
    """The kernel that sums the sequence calls' weight gradients (`summed_product`): "rnnkit" or "blas", whichever
    summed a gradient of a sequence's size (512 x 128 over 1024 rows) faster here, timed once per process and dtype
    (about 10 ms); `RNNKIT_SUMS=rnnkit` or `blas` sets it. Which wins depends on the machine: MKL, PyTorch's BLAS,
    runs its AVX-512 code on Intel processors (1.4-1.75x as fast as rnnkit's kernel on the project's Xeon) but
    its AVX2 code on AMD ones (about half rnnkit's speed on a Zen 5 EPYC). Either gives the same sums to rounding."""
    if dtype not in _sum_kernels:
        chosen = os.environ.get("RNNKIT_SUMS") or None
        if chosen is not None and chosen not in SUM_KERNELS:
            raise ValueError(f"RNNKIT_SUMS must be one of {SUM_KERNELS}, got {chosen!r}")
        if gemm_address(dtype) is None:
            chosen = "rnnkit"
        _sum_kernels[dtype] = chosen or _time_sums(dtype)
    return _sum_kernels[dtype]


def _time_sums(dtype: torch.dtype) -> str:
    """The faster kernel on one weight gradient's sum, the best of 3 interleaved runs each after a warm-up. The
    operands are ctypes arrays, not tensors, as in _check_gemm (this may first run in a backward under any mode)."""
    m, n, k = 512, 128, 1024
    scalar = ctypes.c_float if dtype == torch.float32 else ctypes.c_double
    arrays = [(scalar * size)() for size in (k * m, k * n, m * n)]  # zeros, kept alive while they are used
    a, b, out = map(ctypes.addressof, arrays)
    times: dict[str, list[float]] = {kernel: [] for kernel in SUM_KERNELS}
    for _ in range(4):
        for kernel, gemm in (("rnnkit", None), ("blas", gemm_address(dtype))):
            start = time.perf_counter()
            _summed(dtype, (m, n, k, m, n, n), False, a, b, out, gemm)
            times[kernel].append(time.perf_counter() - start)
    return min(SUM_KERNELS, key=lambda kernel: min(times[kernel][1:]))


def _sum_gemm(dtype: torch.dtype) -> int | None:
    """The gemm the sums run through (sums_kernel), or None for rnnkit's kernel."""
    return gemm_address(dtype) if sums_kernel(dtype) == "blas" else None


def _times_h_r(q: Sequence, d_pre: Tensor) -> Tensor:
    """The sum over steps of d_pre[t]^T h_r[t], h_r the h entering W_hh (masked with recurrent dropout):
    the gradient of the W_hh rows whose pre-activation gradient is d_pre (T, B, n)."""
    if q.hr is not None:
        return summed_product(d_pre.flatten(0, 1), q.hr.flatten(0, 1))
    total = summed_product(d_pre[0], q.h0)  # step 0 reads h_0, the others the outputs before them
    if len(d_pre) > 1:
        summed_product(d_pre[1:].flatten(0, 1), q.out[:-1].flatten(0, 1), total)
    return total


def lstm_sequence(xp: Tensor | None, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Tensor | None, mask: Tensor | None,
                  batch_sizes: list[int] | None, peep: Tensor | None, ln: tuple | None, coupled: bool,
                  softsign: bool, keep: bool, projection: Projection | None = None, clear: bool = False,
                  finish: tuple | None = None) -> Sequence:
    """One direction of an LSTM layer over a whole sequence: xp (T, B, G*H) the input projections (or None and
    `projection`, for inference), h0 (B, P), c0 (B, H), w_hh (G*H, P), w_hr (P, H) or None, ln (w_ln_hh, w_ln_c,
    b_ln_c or None) or None; with layer norm, `finish` (w_ln_ih, b or None): xp is x W_ih^T, normalised in the loop
    (LN(xp) * w_ln_ih + b); the rest as `_sequence`'s. The Sequence's out, h and c[-1] are the outputs and the
    final states. `clear`: with keep, the kept values of rows past their end are zero (else as the memory held them).
    Needs `gemm_address(dtype)`."""
    H = c0.shape[1]
    ln = (None,) * 3 if ln is None else tuple(_contiguous(t) for t in ln)
    layer_norm = ln[0] is not None

    def buffers(T, B, per_step, summed):
        c = c0.new_empty(T + 1 if keep else 2, B, H)  # the cell states: every step's, or the last two
        c[0] = c0
        GH = w_hh.shape[0]
        return dict(gates=per_step(B, GH), c=c, act_c=per_step(B, H), h_new=None if w_hr is None else summed(B, H),
                    a=per_step(B, GH) if layer_norm else None, stats=per_step(B, STATS) if layer_norm else None,
                    w_hr=_contiguous(w_hr), peep=_contiguous(peep), ln_w_hh=ln[0], ln_w_c=ln[1], ln_b_c=ln[2])

    if finish is not None and not layer_norm:
        raise ValueError("lstm_sequence: `finish` is the input layer norm's, for a layer-norm LSTM")
    return _sequence("lstm", "softsign" if softsign else "tanh", xp, h0, w_hh, mask, batch_sizes, keep, projection,
                     H, buffers, finish, coupled=coupled, clear=clear)


def lstm_sequence_backward(q: Sequence, d_out: Tensor, d_h: Tensor, d_c: Tensor) -> tuple:
    """The gradients of lstm_sequence(keep=True) from d_out (T, B, P) and those of the final h and c (B, P),
    (B, H): d_xp (T, B, G*H), d_h0, d_c0 and {name: gradient} of weight_hh, weight_hr, weight_peephole and
    the layer-norm gains/bias the layer has (names as in cells.LSTMStep); where the loop finished the input
    projection (`finish`: q.ln_w_ih, q.b and q.xp = x W_ih^T), d_xp is x W_ih^T's and ln_weight_ih's and the biases'
    gradients come too (bias_ih's and bias_hh's, the same: their sum is b)."""
    T, B, GH = q.gates.shape
    H = q.c.shape[2]
    d_c = d_c.clone(memory_format=torch.contiguous_format)
    d_hout = None if q.w_hr is None else d_out.new_zeros(T, B, q.h.shape[1])
    sizes = _vector_sizes(q.peep, q.ln_w_hh, H, q.ln_b_c, q.ln_w_ih, q.b)
    d_vec = d_out.new_zeros(sum(sizes.values()))
    layer_norm = q.ln_w_hh is not None
    chunk = max(1, BACKWARD_CHUNK_BYTES // (B * GH * d_out.element_size()))  # steps of d_a per W_hh product
    d_w_hh = d_out.new_zeros(q.w_hh.shape) if layer_norm else None
    work = d_out.new_empty(2 * B * H + (chunk * B * GH if layer_norm else 0))
    d_xp, d_h = _sequence_backward(q, d_out, d_h, chunk, d_c=d_c, d_hout=d_hout, d_vec=d_vec, d_w_hh=d_w_hh,
                                   work=work)
    grads = _split(d_vec, sizes)
    if "bias" in grads:
        grads["bias_ih"] = grads.pop("bias")
        grads["bias_hh"] = grads["bias_ih"].clone()
    grads["weight_hh"] = d_w_hh if layer_norm else _times_h_r(q, d_xp)
    if q.w_hr is not None:
        grads["weight_hr"] = summed_product(d_hout.flatten(0, 1), q.h_new.flatten(0, 1))
    return d_xp, (d_h, d_c), grads


def gru_sequence(xp: Tensor | None, h0: Tensor, w_hh: Tensor, b_hh: Tensor | None, mask: Tensor | None,
                 batch_sizes: list[int] | None, reset_after: bool, activation: str, keep: bool,
                 projection: Projection | None = None, clear: bool = False) -> Sequence:
    """One direction of a GRU layer over a whole sequence (cells.GRUStep's math): xp (T, B, 3H), h0 (B, H),
    w_hh (3H, H), b_hh (3H) where it is not hoisted into xp (reset_after), else None; activation 'tanh' or
    'softsign'; the rest as `_sequence`'s. Needs `gemm_address(dtype)`."""
    H = h0.shape[1]

    def buffers(T, B, per_step, summed):
        # r * h_r (reset_before) meets the weight-gradient product; rec_n (reset_after) does not
        return dict(gates=per_step(B, 3 * H), extra=per_step(B, H) if reset_after else summed(B, H),
                    b_hh=_contiguous(b_hh))

    return _sequence("gru", activation, xp, h0, w_hh, mask, batch_sizes, keep, projection, H, buffers,
                     reset_after=reset_after, clear=clear)


def gru_sequence_backward(q: Sequence, d_out: Tensor, d_h: Tensor) -> tuple:
    """The gradients of gru_sequence(keep=True) from d_out (T, B, H) and that of the final h: d_xp (T, B, 3H),
    (d_h0,) and {name: gradient} of weight_hh and (reset_after, with a bias) bias_hh."""
    T, B, H = q.out.shape
    d_extra = None
    if q.reset_after:  # the gradient at rec_n = h_r W_hn^T + b_hn, which d_xp's n block is not
        d_extra = d_out.new_empty(T, B, H) if q.batch_sizes is None else d_out.new_zeros(T, B, H)
    work = d_out.new_empty(B * 4 * H)
    d_xp, d_h = _sequence_backward(q, d_out, d_h, d_extra=d_extra, work=work)
    d_rz = d_xp[..., : 2 * H]  # (T, B, 2H): r and z are the same function of x W_ih^T and of h_r W_hh^T
    if q.reset_after:
        grads = {"weight_hh": torch.cat([_times_h_r(q, d_rz), _times_h_r(q, d_extra)])}
        if q.b_hh is not None:
            grads["bias_hh"] = torch.cat([d_rz.sum((0, 1)), d_extra.sum((0, 1))])
    else:  # W_hn multiplies r * h_r
        d_n = d_xp[..., 2 * H:].flatten(0, 1)
        grads = {"weight_hh": torch.cat([_times_h_r(q, d_rz), summed_product(d_n, q.extra.flatten(0, 1))])}
    return d_xp, (d_h,), grads


def rnn_sequence(xp: Tensor | None, h0: Tensor, w_hh: Tensor, mask: Tensor | None, batch_sizes: list[int] | None,
                 nonlinearity: str, keep: bool, projection: Projection | None = None, clear: bool = False) -> Sequence:
    """One direction of an Elman RNN layer over a whole sequence: xp (T, B, H), h0 (B, H), w_hh (H, H),
    nonlinearity 'tanh', 'relu' or 'softsign'; the rest as `_sequence`'s. Needs `gemm_address(dtype)`."""
    return _sequence("rnn", nonlinearity, xp, h0, w_hh, mask, batch_sizes, keep, projection, h0.shape[1],
                     lambda T, B, per_step, summed: {}, clear=clear)


def rnn_sequence_backward(q: Sequence, d_out: Tensor, d_h: Tensor) -> tuple:
    """The gradients of rnn_sequence(keep=True): d_xp (T, B, H), (d_h0,) and {"weight_hh": gradient}."""
    d_xp, d_h = _sequence_backward(q, d_out, d_h)
    return d_xp, (d_h,), {"weight_hh": _times_h_r(q, d_xp)}


def sequence_backward(q: Sequence, d_out: Tensor, d_final: list[Tensor | None]) -> tuple:
    """The gradients of any cell's sequence call (keep=True), from d_out and those of the final states (None:
    zero): d_xp, the initial states' gradients and {parameter name: gradient}."""
    d_final = [torch.zeros_like(s) if d is None else d for s, d in zip(q.final_states(), d_final)]
    backward = {"lstm": lstm_sequence_backward, "gru": gru_sequence_backward, "rnn": rnn_sequence_backward}[q.cell]
    return backward(q, d_out, *d_final)
