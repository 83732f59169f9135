"""Shared test helpers: strict relative comparison and seeded determinism."""
import pytest
import torch


def assert_rel(actual, expected, tol, what=""):
    """max|a - e| <= tol * max(1, max|e|): relative agreement at the scale of the values."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= tol * scale, f"{what}: max abs diff {err:.3e} > {tol:.0e} * {scale:.3g}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
