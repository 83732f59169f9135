"""Shared test helpers: strict relative comparison and seeded determinism."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    # the Triton kernels' tests (tests/test_triton.py) run through Triton's interpreter, which must be chosen before
    # triton is first imported (its own library is @triton.jit too), by whichever test imports it first
    os.environ.setdefault("TRITON_INTERPRET", "1")


def assert_rel(actual, expected, tol, what=""):
    """max|a - e| <= tol * max(1, max|e|): relative agreement at the scale of the values."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= tol * scale, f"{what}: max abs diff {err:.3e} > {tol:.0e} * {scale:.3g}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
