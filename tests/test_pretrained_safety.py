"""Loading a shared model (from_pretrained) or a checkpoint allocates only what its weights justify: the model
its config describes is built on the meta device and compared, tensor by tensor, with the safetensors header (or
the checkpoint's tensors) before any real allocation; a mismatch, a missing or an extra tensor is refused in
one line naming it. A genuine export still loads to the same outputs."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from clirun import rnnkit
from rnnkit.pretrained import from_pretrained, save_pretrained
from rnnkit.tasks import TASKS
from rnnkit.tasks.base import Loaded, WeightsMismatch
from rnnkit.training.module import CHECKPOINT_KEY, checkpoint_record

POS_EXTRA = {"words": ["<pad>", "<unk>", "the", "cat"], "word_counts": [0, 0, 3, 1],
             "chars": ["<pad>", "<unk>", "a", "c", "e", "h", "t"], "tags": ["DET", "NOUN"]}


def model(task_name, extra=None, **config):
    task = TASKS[task_name]
    cfg = task.config_class(**config)
    return Loaded(task, cfg, task.build_model(cfg, extra or {}).eval(), extra or {}, {})


@pytest.fixture
def saved(tmp_path):
    loaded = model("mnist", hidden=12)
    return loaded, save_pretrained(loaded, tmp_path / "m")


def forbid_real_builds(monkeypatch):
    """From now on, any build of a task model outside the meta device fails the test (instead of allocating)."""
    for task in TASKS.values():
        build = task.build_model

        def guarded(cfg, extra, build=build):
            assert torch.empty(0).device.type == "meta", "a model was built for real before its weights were checked"
            return build(cfg, extra)

        monkeypatch.setattr(task, "build_model", guarded)


def edit_json(path, change):
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def test_a_genuine_export_loads_to_the_same_outputs(saved, tmp_path):
    loaded, directory = saved
    x = torch.randn(3, 28, 28)
    assert torch.equal(from_pretrained(directory).model(x)[0], loaded.model(x)[0])
    tagger = model("pos", POS_EXTRA, hidden=6, embedding=5, char_features=4, char_embedding=3)
    again = from_pretrained(save_pretrained(tagger, tmp_path / "tagger"))
    inputs = (torch.tensor([[2, 3, 1]]), torch.tensor([[[6, 5, 4], [3, 2, 6], [1, 0, 0]]]), torch.tensor([3]))
    assert torch.equal(again.model(inputs)[0], tagger.model(inputs)[0])


@pytest.mark.parametrize("hidden, shown", [
    (10 ** 6, "rnn.weight_ih_l0 is torch.float32 [4000000, 28] by the saved config (hidden 1000000, layers 1) but "
              "torch.float32 [48, 28] in the weights"),
    (10 ** 9, "the saved config (hidden 1000000000, layers 1) describes tensors too large to exist, not the weights "
              "saved with it (Storage size calculation overflowed with sizes=[4000000000, 1000000000])"),
])
def test_a_huge_hidden_in_config_json_is_refused_before_any_allocation(saved, monkeypatch, hidden, shown):
    _, directory = saved
    forbid_real_builds(monkeypatch)
    edit_json(directory / "config.json", lambda c: c["config"].update(hidden=hidden))
    with pytest.raises(WeightsMismatch) as error:
        from_pretrained(directory)
    assert str(error.value) == f"{directory / 'model.safetensors'}: {shown}"


def test_a_vocabulary_in_extra_json_larger_than_the_weights_is_refused(tmp_path, monkeypatch):
    tagger = model("pos", POS_EXTRA, hidden=6, embedding=5, char_features=4, char_embedding=3)
    directory = save_pretrained(tagger, tmp_path / "tagger")
    forbid_real_builds(monkeypatch)
    edit_json(directory / "extra.json", lambda e: e.update(tags=e["tags"] + [f"T{i}" for i in range(10 ** 5)]))
    with pytest.raises(WeightsMismatch, match=r"head\.weight is torch\.float32 \[100002, 12\] by the saved config .* "
                                              r"but torch\.float32 \[2, 12\] in the weights"):
        from_pretrained(directory)


@pytest.mark.parametrize("change, message", [
    (lambda w: w.pop("head.bias"), "the weights lack head.bias, which the model of the saved config (hidden 12, "
                                   "layers 1) has"),
    (lambda w: w.update(extra=torch.zeros(2)), "the weights hold extra, which the model of the saved config"),
    (lambda w: w.update({"head.bias": w["head.bias"].double()}),
     "head.bias is torch.float32 [10] by the saved config (hidden 12, layers 1) but torch.float64 [10]"),
])
def test_missing_extra_and_retyped_tensors_are_named(saved, change, message, monkeypatch):
    _, directory = saved
    forbid_real_builds(monkeypatch)
    weights = load_file(directory / "model.safetensors")
    change(weights)
    save_file(weights, directory / "model.safetensors")
    with pytest.raises(WeightsMismatch) as error:
        from_pretrained(directory)
    assert message in str(error.value)


def test_a_checkpoint_whose_config_outgrows_its_weights_is_refused_by_eval(tmp_path, monkeypatch):
    loaded = model("mnist", hidden=12)
    record = checkpoint_record(loaded.task, loaded.cfg, {})
    record["config"]["hidden"] = 1_000_000_000
    torch.save({CHECKPOINT_KEY: record, "state_dict": {f"model.{k}": v for k, v in loaded.model.state_dict().items()}},
               tmp_path / "big.ckpt")
    forbid_real_builds(monkeypatch)
    code, _, err = rnnkit("eval", tmp_path / "big.ckpt")
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "big.ckpt: the saved config (hidden 1000000000, layers 1) describes tensors too large to exist" in err
