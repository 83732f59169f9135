"""The CPU kernels: whole sequences of the LSTM, GRU and RNN cells in one C++ call (fused.cpp, compiled at first
use by fused.py), forward, explicit backward and inference, with the recurrent products on weights packed once per call (the others through PyTorch's gemm)."""
