"""The one table of variants (rnnkit.nn.variants) says the truth about the layers: each option is a keyword of
exactly the layers it names, its neutral value gives the layer without it, the named variants build, those said
to be torch.nn's compute torch.nn's numbers, and the recipes' model builder passes every option on."""
import pytest
import torch

from rnnkit.models import make_rnn
from rnnkit.nn.variants import LAYERS, OPTIONS, VARIANTS, Variant, layer_options, misapplied
from rnnkit.training.config import RNNConfig

OPTION_LAYERS = [(name, layer) for name in OPTIONS for layer in LAYERS]


SET = {"nonlinearity": "relu", "activation": "softsign", "peephole": True, "coupled": True, "layer_norm": True,
       "forget_bias": 1.0, "proj_size": 2, "reset_after": False, "recurrent_dropout": 0.1}  # not neutral


def test_every_option_is_tried():
    assert SET.keys() == OPTIONS.keys() and all(SET[k] != o.neutral for k, o in OPTIONS.items())


@pytest.mark.parametrize("name, layer", OPTION_LAYERS, ids=[f"{n}-{k}" for n, k in OPTION_LAYERS])
def test_an_option_is_taken_by_exactly_the_layers_it_names(name, layer):
    if OPTIONS[name].applies_to(layer):
        LAYERS[layer](3, 4, **{name: SET[name]})
    else:  # refused, as torch.nn refuses proj_size on RNN/GRU
        with pytest.raises((TypeError, ValueError), match=name):
            LAYERS[layer](3, 4, **{name: SET[name]})


@pytest.mark.parametrize("name, layer", [(n, k) for n, k in OPTION_LAYERS if OPTIONS[n].applies_to(k)])
def test_the_neutral_value_is_the_layer_without_the_option(name, layer):
    torch.manual_seed(0)
    plain = LAYERS[layer](3, 4, num_layers=2, bidirectional=True)
    torch.manual_seed(0)
    neutral = LAYERS[layer](3, 4, num_layers=2, bidirectional=True, **{name: OPTIONS[name].neutral})
    assert plain.state_dict().keys() == neutral.state_dict().keys()
    x = torch.randn(5, 2, 3)
    for a, b in zip(plain(x)[0].flatten(), neutral(x)[0].flatten()):
        assert a == b


@pytest.mark.parametrize("label", VARIANTS)
def test_every_named_variant_builds_and_those_of_torch_nn_match_it(label):
    variant = VARIANTS[label]
    torch.manual_seed(0)
    ours = variant.build(3, 6, 2, bidirectional=True)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    ours = ours.double()
    assert ours(x)[0].shape == (4, 2, 2 * (3 if "proj_size" in variant.options else 6))
    ref = variant.torch_equivalent(3, 6, 2, bidirectional=True).double()
    if variant.in_torch_nn:
        ref.load_state_dict(ours.state_dict())
        torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-12, atol=1e-12)
    else:  # a variant of torch.nn's kind: the baseline the benchmarks compare with, other numbers
        assert type(ref).__name__ == type(ours).__name__
        if not variant.train_only:
            ours.eval()
            assert not torch.allclose(ours(x)[0], ref(x)[0])


def test_a_variant_naming_an_option_its_layer_lacks_is_refused():
    with pytest.raises(ValueError, match="variant 'x': gru takes no option 'peephole'"):
        Variant("x", "gru", {"peephole": True})


def test_layer_options_and_misapplied():
    values = {"peephole": True, "reset_after": False, "recurrent_dropout": 0.1, "hidden": 8}
    assert layer_options("lstm", values) == {"peephole": True, "recurrent_dropout": 0.1}
    assert layer_options("gru", values) == {"reset_after": False, "recurrent_dropout": 0.1}
    assert misapplied("gru", values) == ["peephole"]
    assert misapplied("lstm", values) == ["reset_after"]
    assert misapplied("lstm", {"reset_after": True, "nonlinearity": "tanh"}) == []  # neutral values pass


@pytest.mark.parametrize("cfg, attribute, value", [
    (RNNConfig(cell="lstm", peephole=True), "cell.peephole", True),
    (RNNConfig(cell="lstm", coupled=True), "cell.coupled", True),
    (RNNConfig(cell="lstm", layer_norm=True), "cell.layer_norm", True),
    (RNNConfig(cell="lstm", proj_size=3), "proj_size", 3),
    (RNNConfig(cell="lstm", forget_bias=1.5), "forget_bias", 1.5),
    (RNNConfig(cell="lstm", activation="softsign"), "cell.activation", "softsign"),
    (RNNConfig(cell="gru", reset_after=False), "cell.reset_after", False),
    (RNNConfig(cell="gru", activation="softsign"), "cell.activation", "softsign"),
    (RNNConfig(cell="rnn", activation="relu"), "nonlinearity", "relu"),
    (RNNConfig(cell="rnn", recurrent_dropout=0.2), "recurrent_dropout", 0.2),
])
def test_the_model_builder_passes_every_variant_option_on(cfg, attribute, value):
    layer = make_rnn(cfg, 3)
    for part in attribute.split("."):
        layer = getattr(layer, part)
    assert layer == value
