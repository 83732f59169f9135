"""torch.func and the meta device on every path: func.grad (and grad of grad) equal autograd's gradients,
and a layer on the meta device gives the shapes of a real one."""
import itertools

import pytest
import torch

import rnnkit
from conftest import assert_rel

CASES = [
    (rnnkit.LSTM, {}), (rnnkit.LSTM, {"peephole": True, "coupled": True}),
    (rnnkit.LSTM, {"layer_norm": True, "proj_size": 2}), (rnnkit.LSTM, {"activation": "softsign"}),
    (rnnkit.GRU, {}), (rnnkit.GRU, {"reset_after": False}), (rnnkit.RNN, {}), (rnnkit.RNN, {"nonlinearity": "softsign"}),
    (rnnkit.MinGRU, {"mode": "sequential"}), (rnnkit.MinLSTM, {"mode": "parallel"}),
]
IDS = [f"{c.__name__}-{k}" for c, k in CASES]


def _layer(cls, kwargs, impl, **options):
    if cls in (rnnkit.MinGRU, rnnkit.MinLSTM):
        return cls(3, 4, 2, **kwargs, **options)
    return cls(3, 4, 2, bidirectional=True, impl=impl, **kwargs, **options)


@pytest.mark.parametrize("cls,kwargs", CASES, ids=IDS)
@pytest.mark.parametrize("impl", ["auto", "engine"])
def test_func_grad_equals_autograd(cls, kwargs, impl):
    layer = _layer(cls, kwargs, impl, dtype=torch.float64)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([5, 0, 2])
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(p, x):
        out = torch.func.functional_call(layer, p, (x,), {"lengths": lengths})[0]
        return out.square().sum()
    grads = torch.func.grad(loss, argnums=(0, 1))(params, x)
    x_ = x.clone().requires_grad_()
    loss(dict(layer.named_parameters()), x_).backward()
    for name, param in layer.named_parameters():
        assert_rel(grads[0][name], param.grad, 1e-12, name)
    assert_rel(grads[1], x_.grad, 1e-12, "input")
    # second order: the gradient of a gradient penalty, as torch.func computes it and as autograd does
    penalty = torch.func.grad(lambda x: torch.func.grad(loss, argnums=1)(params, x).square().sum())(x)
    x_ = x.clone().requires_grad_()
    g, = torch.autograd.grad(loss(params, x_), x_, create_graph=True)
    expected, = torch.autograd.grad(g.square().sum(), x_)
    assert_rel(penalty, expected, 1e-10, "grad of grad")


@pytest.mark.parametrize("cls,kwargs", CASES, ids=IDS)
@pytest.mark.parametrize("impl,batch_first", list(itertools.product(["auto", "engine"], [False, True])))
def test_meta_device_forward_has_the_real_shapes(cls, kwargs, impl, batch_first):
    real = _layer(cls, kwargs, impl, batch_first=batch_first)
    meta = _layer(cls, kwargs, impl, batch_first=batch_first, device="meta")
    x = torch.randn(3, 5, 3) if batch_first else torch.randn(5, 3, 3)
    for training in (True, False):
        real.train(training), meta.train(training)
        want, got = real(x), meta(x.to("meta"))
        flat = lambda r: [r[0], *(r[1] if isinstance(r[1], tuple) else (r[1],))]  # noqa: E731
        for a, e in zip(flat(got), flat(want)):
            assert a.device.type == "meta" and a.shape == e.shape and a.dtype == e.dtype
