"""The API reference builds offline from the docstrings, with a page for every module."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _build_api():
    spec = importlib.util.spec_from_file_location("build_api", ROOT / "docs" / "build_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_api_reference_has_a_page_for_every_module(tmp_path):
    build_api = _build_api()
    index = build_api.build(tmp_path)
    assert index.is_file()
    for name in build_api.modules():
        page = tmp_path / (name.replace(".", "/") + ".html")
        assert page.is_file(), name
    layers = (tmp_path / "rnnkit/layers.html").read_text()
    assert 'id="LSTM"' in layers and 'id="GRU"' in layers and "weight_ih" in layers  # classes with their docstrings
