"""Kernels behind the engine's whole-sequence calls, by backend (`triton`: CUDA, or the CPU through Triton's interpreter)."""
