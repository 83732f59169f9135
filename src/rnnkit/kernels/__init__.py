"""Kernels behind the engine's whole-sequence calls, by backend: `cpu` (C++, its recurrent products on packed weights) and `triton` (CUDA, or
the CPU through Triton's interpreter). They take tensors and flags and import nothing else of rnnkit."""
