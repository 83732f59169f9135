"""Where the Triton kernels run: the dispatcher's choices on a CUDA device (the device mocked: choose() only reads its
type), with and without Triton importable, the error of impl="triton" without it, and `rnnkit info`'s table."""
import pytest
import torch

import rnnkit
from rnnkit.engine import dispatch
from rnnkit.engine.cells import GRUStep, LSTMStep, RNNStep
from rnnkit.kernels import triton as triton_kernels

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
MISSING = "the Triton kernels need the 'triton' package, which is not importable (No module named 'triton'); " \
          f"install it with {triton_kernels.INSTALL}"


@pytest.fixture
def with_triton(monkeypatch):
    monkeypatch.setattr(triton_kernels, "unavailable_reason", lambda: None)


@pytest.fixture
def without_triton(monkeypatch):
    monkeypatch.setattr(triton_kernels, "unavailable_reason", lambda: MISSING)


VARIANTS = [LSTMStep(4, peephole=True), LSTMStep(4, coupled=True), LSTMStep(4, layer_norm=True),
            LSTMStep(4, activation="softsign"), GRUStep(4, reset_after=False), GRUStep(4, activation="softsign"),
            RNNStep(4, "softsign")]
STANDARD = [LSTMStep(4), LSTMStep(4, proj_size=2), GRUStep(4), RNNStep(4, "tanh"), RNNStep(4, "relu")]


@pytest.mark.parametrize("step", VARIANTS, ids=repr)
def test_cuda_variants_run_on_triton_where_it_imports(step, with_triton):
    for recording in (True, False):
        assert dispatch.choose("auto", step, CUDA, 8, 0.0, True, None, recording=recording) == "triton"
    assert dispatch.choose("auto", step, CPU, 8, 0.0, True, None) == "engine"  # the CPU has its own C++ loops


@pytest.mark.parametrize("step", VARIANTS, ids=repr)
def test_cuda_variants_run_on_the_engine_without_triton(step, without_triton):
    assert dispatch.choose("auto", step, CUDA, 8, 0.0, True, None) == "engine"


@pytest.mark.parametrize("step", STANDARD, ids=repr)
def test_cuda_keeps_cudnn_where_torch_has_the_configuration(step, with_triton):
    assert dispatch.choose("auto", step, CUDA, 8, 0.0, True, None) == "native"
    assert dispatch.choose("auto", step, CUDA, 8, 0.0, True, torch.tensor([3, 1])) == "native"
    assert dispatch.choose("auto", step, CUDA, 1, 0.0, False, None, recording=False, steps=1) == "native"
    # what cuDNN cannot do: recurrent dropout in training, a zero length
    assert dispatch.choose("auto", step, CUDA, 8, 0.3, True, None) == "triton"
    assert dispatch.choose("auto", step, CUDA, 2, 0.0, True, torch.tensor([3, 0])) == "triton"
    assert dispatch.choose("auto", step, CUDA, 8, 0.3, False, None) == "native"  # dropout is off in eval mode


def test_explicit_impls_are_kept(with_triton):
    step = LSTMStep(4, peephole=True)
    for impl in ("engine", "autograd", "triton"):
        assert dispatch.choose(impl, step, CUDA, 8, 0.0, True, None) == impl
        assert dispatch.choose(impl, step, CPU, 8, 0.0, True, None) == impl


def test_triton_without_the_package_names_it_and_the_install_command(without_triton):
    with pytest.raises(ImportError, match=r"'triton' package.*pip install"):
        rnnkit.LSTM(3, 4, peephole=True, impl="triton")
    with pytest.raises(ImportError, match=r"\[gpu\].*triton==3.9.0"):
        dispatch.choose("triton", GRUStep(4), CUDA, 8, 0.0, True, None)


def test_unavailable_reason_when_the_import_fails(monkeypatch):
    """The real check: an import of triton that fails gives the message, naming the package and the command."""
    import builtins
    real_import = builtins.__import__

    def blocked(name, *args, **kwargs):
        if name == "triton" or name.startswith("triton."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(triton_kernels, "_checked", False)
    monkeypatch.setattr(triton_kernels, "_error", None)
    monkeypatch.setattr(triton_kernels.importlib, "import_module", lambda name: blocked(name))
    reason = triton_kernels.unavailable_reason()
    assert "'triton' package" in reason and "pip install" in reason
    assert not triton_kernels.available()


@pytest.mark.parametrize("step,cuda,cpu", [
    (LSTMStep(4), "native", "native"), (LSTMStep(4, peephole=True), "triton", "engine"),
    (GRUStep(4, reset_after=False), "triton", "engine"), (RNNStep(4, "softsign"), "triton", "engine"),
])
def test_explain_gives_the_path_and_why(step, cuda, cpu, with_triton):
    assert dispatch.explain(step, "cuda")[0] == cuda
    assert dispatch.explain(step, "cpu")[0] in (cpu, "engine")
    path, why = dispatch.explain(step, "cuda")
    assert ("Triton is importable" in why) == (path == "triton")


def test_explain_without_triton_says_why(without_triton):
    path, why = dispatch.explain(LSTMStep(4, coupled=True), "cuda")
    assert path == "engine" and "pip install" in why


def test_info_prints_the_path_of_each_configuration_on_each_device(capsys):
    from rnnkit import cli
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "== Which path each configuration takes (impl='auto', a train step)" in out
    for line in ("LSTM peephole", "GRU reset_before", "RNN softsign"):
        assert any(row.startswith(line) for row in out.splitlines()), line
