"""Fused LSTM kernels on the CPU, for every LSTM the engine runs — above all the variants PyTorch's own
kernels lack (peephole, coupled input-forget gate, softsign, layer norm, projection, recurrent dropout):

  - `lstm_sequence` / `lstm_sequence_backward`: one direction of a layer over a whole sequence in one call —
    the time loop, the recurrent matrix products (through the BLAS gemm PyTorch's CPU library exports,
    looked up and checked by `gemm_address`) and the gate math — for inference and for the engine's
    explicit BPTT, forward and backward;
  - `lstm_forward` / `lstm_backward`: the gate math of one step, in one pass over the units instead of one
    PyTorch op per gate, for the engine's step loop where no gemm is found.

`_fused.cpp` is compiled at first use with the system C++ compiler (`$CXX`, else `c++`, `g++`, `clang++`),
with no PyTorch headers, into a per-user cache (`$RNNKIT_CACHE`, else `~/.cache/rnnkit`), and loaded with
ctypes. Without a compiler, or with `RNNKIT_FUSED=0`, `library()` is None (`unavailable_reason()` says why)
and cells.LSTMStep runs its PyTorch ops instead (the reference the fused loops are tested against). Only
float32/float64 tensors on the CPU take these paths, outside autograd recording.
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
FLAGS = ["-std=c++20", "-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno", "-shared", "-fPIC"]
# OpenMP: threads over a step's rows, in PyTorch's own runtime (the library is loaded after torch, so its
# libgomp.so.1 is the one already in the process); a compiler without it builds the single-threaded loops
OPENMP_FLAGS = (["-fopenmp"], ["-fopenmp-simd"])
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
        getattr(lib, f"lstm_sequence_{suffix}").argtypes = [p] * 6
        getattr(lib, f"lstm_sequence_backward_{suffix}").argtypes = [p] * 7
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


def _vector_sizes(peep: Tensor | None, ln_w_hh: Tensor | None, H: int, ln_b_c: Tensor | None) -> dict:
    """{name: size} of the vector parameters whose gradients the kernels add to d_vec, in its order."""
    sizes = {}
    if peep is not None:
        sizes["weight_peephole"] = peep.numel()
    if ln_w_hh is not None:
        sizes.update(ln_weight_hh=ln_w_hh.numel(), ln_weight_c=H)
        if ln_b_c is not None:
            sizes["ln_bias_c"] = H
    return sizes


def _split(d_vec: Tensor, sizes: dict) -> dict:
    """d_vec cut into the named gradients of _vector_sizes."""
    return dict(zip(sizes, d_vec.split(list(sizes.values()))))


# ---- whole sequences: the time loop in C++, the recurrent products through PyTorch's own BLAS ----

_GEMM_NAMES = {torch.float32: "sgemm_", torch.float64: "dgemm_"}
_gemm: dict | None = None  # dtype -> address of the Fortran-interface gemm, once looked up


def _check_gemm(address: int, dtype: torch.dtype) -> bool:
    """Whether the function at `address` computes C = A^T B + C with 32-bit integer arguments, as PyTorch does."""
    scalar = ctypes.c_float if dtype == torch.float32 else ctypes.c_double
    c_int = ctypes.POINTER(ctypes.c_int)
    fn = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, c_int, c_int, c_int, ctypes.POINTER(scalar),
                          ctypes.c_void_p, c_int, ctypes.c_void_p, c_int, ctypes.POINTER(scalar), ctypes.c_void_p,
                          c_int)(address)
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(shape, generator=g, dtype=dtype) for shape in ((5, 3), (2, 5), (2, 3)))
    expected = c + b @ a  # row-major (2, 3) = b (2, 5) a (5, 3): column-major c^T = a^T b^T
    m, n, k, one = ctypes.c_int(3), ctypes.c_int(2), ctypes.c_int(5), scalar(1)
    fn(b"N", b"N", m, n, k, one, a.data_ptr(), m, b.data_ptr(), k, one, c.data_ptr(), m)
    return torch.allclose(c, expected, rtol=1e-5, atol=1e-6)


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
    """Whether LSTMs of `dtype` on the CPU run whole sequences in C++ (the kernels built, a gemm found)."""
    return library() is not None and gemm_address(dtype) is not None


BACKWARD_CHUNK_BYTES = 2 << 20  # layer norm: d_a of this many bytes' worth of steps per W_hh product


_Buffers, _Strides, _Dims, _Flags3, _Grads = (ctypes.c_void_p * 20, ctypes.c_int64 * 6, ctypes.c_int64 * 6,
                                               ctypes.c_int * 3, ctypes.c_void_p * 8)


class Sequence:
    """The tensors of an lstm_sequence call (see `Sequence` in _fused.cpp), and its options; with `keep`,
    what lstm_sequence_backward needs. `tensors()` and `of()` pass them through autograd's saved tensors."""

    NAMES = ("batch_sizes", "w_hh", "w_hr", "mask", "xp", "gates", "c", "h0", "h", "out", "hr", "act_c", "h_new",
             "a", "stats", "w_hh_t", "x", "w_ih_t", "b", "ln_w_ih",  # these 20 in the C++ order
             "peep", "ln_w_hh", "ln_w_c", "ln_b_c")

    def __init__(self, coupled: bool, softsign: bool, keep: bool, chunk: int = 0, **tensors):
        self.coupled, self.softsign, self.keep, self.chunk = coupled, softsign, keep, chunk
        self.__dict__.update(tensors)

    def tensors(self) -> list[Tensor | None]:
        return [getattr(self, name) for name in self.NAMES]

    def options(self) -> dict:
        return {"coupled": self.coupled, "softsign": self.softsign, "keep": self.keep, "chunk": self.chunk}

    @classmethod
    def of(cls, tensors, options: dict) -> "Sequence":
        return cls(**options, **dict(zip(cls.NAMES, tensors)))


def lstm_sequence(xp: Tensor | None, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Tensor | None, mask: Tensor | None,
                  batch_sizes: list[int] | None, peep: Tensor | None, ln: tuple | None, coupled: bool,
                  softsign: bool, keep: bool, projection: tuple | None = None
                  ) -> tuple[Tensor, Tensor, Tensor, Sequence | None]:
    """One direction of an LSTM layer over a whole sequence: xp (T, B, G*H) the input projections, h0 (B, P),
    c0 (B, H), w_hh (G*H, P), w_hr (P, H) or None, mask (B, P) (recurrent dropout) or None, batch_sizes as in
    rnnkit.engine (rows sorted longest first) or None; ln (w_ln_hh, w_ln_c, b_ln_c or None) or None.
    Returns out (T, B, P) (zero past a row's end), the final h and c, and with `keep` what the backward needs.
    Inference (no `keep`) may leave the projection to the call: xp None and projection = (x (T, B, I), w_ih
    (G*H, I), bias (G*H) or None, ln_w_ih (G*H) or None (layer norm), chunk: steps projected at a time).
    Needs `gemm_address(dtype)`."""
    x, w_ih, bias, ln_w_ih, chunk = projection if projection is not None else (None,) * 4 + (0,)
    source = xp if x is None else x
    T, B = source.shape[:2]
    GH, P, H = w_hh.shape[0], h0.shape[1], c0.shape[1]
    new = source.new_empty
    per_step = (lambda *shape: new(T, *shape)) if keep else (lambda *shape: new(*shape))
    # rows past their end in the inputs of the weight-gradient products must be zero, not left unwritten
    summed = (lambda *shape: source.new_zeros(T, *shape)) if keep and batch_sizes is not None else per_step
    c = new(T + 1 if keep else 2, B, H)
    c[0] = c0
    ln = (None,) * 3 if ln is None else tuple(None if t is None else t.contiguous() for t in ln)
    layer_norm = ln[0] is not None
    contiguous = lambda t: None if t is None else t.contiguous()  # noqa: E731
    q = Sequence(coupled, softsign, keep, chunk,
                 batch_sizes=None if batch_sizes is None else torch.tensor(batch_sizes, dtype=torch.int64),
                 w_hh=w_hh.contiguous(), w_hh_t=w_hh.T.contiguous(), w_hr=contiguous(w_hr), mask=contiguous(mask),
                 xp=new(min(chunk, T), B, GH) if x is not None else xp.contiguous(),
                 gates=per_step(B, GH),
                 c=c, h0=h0.contiguous(), h=h0.clone(memory_format=torch.contiguous_format), out=new(T, B, P),
                 hr=None if mask is None else summed(B, P), act_c=per_step(B, H),
                 h_new=None if w_hr is None else summed(B, H),
                 a=per_step(B, GH) if layer_norm else None, stats=per_step(B, 4) if layer_norm else None,
                 x=contiguous(x), w_ih_t=None if w_ih is None else w_ih.T.contiguous(), b=contiguous(bias),
                 ln_w_ih=contiguous(ln_w_ih),
                 peep=contiguous(peep), ln_w_hh=ln[0], ln_w_c=ln[1], ln_b_c=ln[2])
    fn = getattr(library(), f"lstm_sequence_{_DTYPES[source.dtype]}")
    fn(*_sequence_arguments(q), gemm_address(source.dtype))
    q.xp = q.w_hh_t = q.x = q.w_ih_t = None  # the backward needs none of them: kept, they would hold memory
    return q.out, q.h, c[T if keep else T % 2], q if keep else None


def _sequence_arguments(q: Sequence, chunk: int | None = None):
    params = _Pointers(_ptr(q.peep), _ptr(q.ln_w_hh), _ptr(q.ln_w_c), _ptr(q.ln_b_c), None)
    T, B = q.out.shape[:2]
    dims = _Dims(T, B, q.c.shape[2], q.h.shape[1], 0 if q.x is None else q.x.shape[2],
                 q.chunk if chunk is None else chunk)
    flags = _Flags3(q.coupled, q.softsign, q.keep)
    buffers = _Buffers(*(_ptr(getattr(q, name)) for name in q.NAMES[:20]))  # those of `Sequence` in C++
    strides = _Strides(*(0 if t is None or not q.keep else t.shape[1:].numel()
                         for t in (q.gates, q.hr, q.act_c, q.h_new, q.a, q.stats)))
    return params, dims, flags, buffers, strides


def lstm_sequence_backward(q: Sequence, d_out: Tensor, d_h: Tensor, d_c: Tensor) -> tuple:
    """The gradients of lstm_sequence(keep=True) from d_out (T, B, P) and those of the final h and c (B, P),
    (B, H): d_xp (T, B, G*H), d_h0, d_c0 and {name: gradient} of weight_hh, weight_hr, weight_peephole and
    the layer-norm gains/bias the layer has (names as in cells.LSTMStep)."""
    T, B, GH = q.gates.shape
    H = q.c.shape[2]
    d_out = d_out.contiguous()
    d_h, d_c = d_h.clone(memory_format=torch.contiguous_format), d_c.clone(memory_format=torch.contiguous_format)
    d_xp = d_out.new_empty(T, B, GH) if q.batch_sizes is None else d_out.new_zeros(T, B, GH)
    d_hout = None if q.w_hr is None else d_out.new_zeros(T, B, q.h.shape[1])
    sizes = _vector_sizes(q.peep, q.ln_w_hh, H, q.ln_b_c)
    d_vec = d_out.new_zeros(sum(sizes.values()))
    layer_norm = q.ln_w_hh is not None
    chunk = max(1, BACKWARD_CHUNK_BYTES // (B * GH * d_out.element_size()))  # steps of d_a per W_hh product
    d_w_hh = d_out.new_zeros(q.w_hh.shape) if layer_norm else None
    work = d_out.new_empty(2 * B * H + GH + (chunk * B * GH if layer_norm else 0))
    grads_in = _Grads(*(_ptr(t) for t in (d_out, d_h, d_c, d_xp, d_hout, d_vec, d_w_hh, work)))
    fn = getattr(library(), f"lstm_sequence_backward_{_DTYPES[d_out.dtype]}")
    fn(*_sequence_arguments(q, chunk), gemm_address(d_out.dtype), grads_in)
    grads = _split(d_vec, sizes)
    if not layer_norm:  # W_hh's gradient: d_xp^T h_r over all steps, h_r the masked h_{t-1}
        if q.hr is not None:
            d_w_hh = d_xp.flatten(0, 1).T @ q.hr.flatten(0, 1)
        else:
            d_w_hh = d_xp[0].T @ q.h0
            if T > 1:
                d_w_hh += d_xp[1:].flatten(0, 1).T @ q.out[:-1].flatten(0, 1)
    grads["weight_hh"] = d_w_hh
    if q.w_hr is not None:
        grads["weight_hr"] = d_hout.flatten(0, 1).T @ q.h_new.flatten(0, 1)
    return d_xp, d_h, d_c, grads
