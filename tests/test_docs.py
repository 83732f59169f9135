"""The documentation builds offline with warnings as errors, running every tutorial of the course and the
recipes' small runs.

The build runs in a temporary copy of docs/ without a single PNG file, so nothing is written into the source
tree and every picture on the site is one the build drew: a broken link or cross-reference, a reference to an
object the API reference lacks, a malformed docstring, a missing image, a tutorial or a recipe's run that raises
fails it (Sphinx -W --keep-going). Then the site is checked for what the pages promise: a page per tutorial with
its downloads, each recipe page's pictures, a page per module, and no test named in the docs that does not exist.
"""
import importlib
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rnnkit

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GENERATED = ("_build", "api", "course", "sg_execution_times.rst", "_runs")  # written by a build, never sources
TUTORIALS = sorted((DOCS / "tutorials").glob("[0-9][0-9]_*.py"))
RECIPES = sorted(p for p in (DOCS / "recipes").glob("*.md") if p.stem not in ("index", "training"))
DATA = ROOT.parent / "shared" / "data"  # the recipes' small runs read the real data sets from there
TEST_NAME = re.compile(r"tests/(test_\w+\.py)::(test_\w+)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("sphinx_gallery")
    work = tmp_path_factory.mktemp("docs")
    source = work / "docs"
    shutil.copytree(DOCS, source, ignore=shutil.ignore_patterns(*GENERATED, "*.png", "__pycache__"))
    shutil.copy(ROOT / "README.md", work / "README.md")  # the install page quotes its quick start
    out = work / "html"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "RNNKIT_DATA": str(DATA)}
    result = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-j", "1", "-q",
                             "-d", str(work / "doctrees"), str(source), str(out)],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, f"the documentation build failed:\n{result.stdout[-5000:]}\n{result.stderr[-10000:]}"
    return out


def test_the_site_builds_with_every_tutorial_run_and_downloadable(site):
    assert (site / "index.html").is_file()
    assert len(TUTORIALS) >= 12
    downloads = {p.name for p in (site / "_downloads").rglob("*")}
    for tutorial in TUTORIALS:
        page = (site / "course" / f"{tutorial.stem}.html").read_text()
        assert "sphx-glr-single-img" in page or "sphx-glr-multi-img" in page, f"{tutorial.name} drew no picture"
        assert f"{tutorial.stem}.py" in downloads and f"{tutorial.stem}.ipynb" in downloads, tutorial.name


def test_every_recipe_figure_is_drawn_by_the_build(site):
    """Each recipe page shows the pictures its `rnnkit-run` commands wrote during this build (the source copy
    held no PNG), with a caption that says what ran; no PNG is kept in docs/ at all."""
    assert len(RECIPES) >= 9
    runs = site.parent / "docs" / "recipes" / "_runs"
    for recipe in RECIPES:
        wanted = re.findall(r"^:figure: (\S+)$", recipe.read_text(), re.M)
        assert wanted, f"{recipe.name} draws no picture"
        page = (site / "recipes" / f"{recipe.stem}.html").read_text()
        figures = re.findall(r'<figure[^>]*>\s*<img[^>]+src="\.\./(_images/[^"]+)".*?<figcaption>(.*?)</figcaption>',
                             page, re.S)
        assert len(figures) == len(wanted), recipe.name
        for (image, caption), name in zip(figures, wanted):
            drawn = (site / image).read_bytes()
            assert drawn.startswith(b"\x89PNG"), image
            written = [p for p in (runs / recipe.stem).rglob(name) if p.read_bytes() == drawn]
            assert written, f"{recipe.name}: {image} is not a file its runs wrote in this build"
            assert "in this build by the command above" in caption, f"{recipe.name}: {caption}"
        assert "../images/" not in recipe.read_text(), recipe.name
    assert not (DOCS / "images").exists()
    listed = subprocess.run(["git", "ls-files", "docs"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode == 0:
        assert [f for f in listed.stdout.split() if f.endswith(".png")] == []


def test_the_api_reference_has_a_page_for_every_module(site):
    names = [m.name for m in pkgutil.walk_packages(rnnkit.__path__, "rnnkit.")
             if not any(part.startswith("_") for part in m.name.split("."))]
    for name in ["rnnkit", *names]:
        assert (site / "api" / f"{name}.html").is_file(), name
    top = (site / "api" / "rnnkit.html").read_text()
    for name in rnnkit.__all__:
        if name != "__version__":
            assert f'id="rnnkit.{name}"' in top, name
    layers = importlib.import_module("rnnkit.engine.cells")
    cells = (site / "api" / "rnnkit.engine.cells.html").read_text()
    assert 'id="rnnkit.engine.cells.LSTMStep"' in cells and "viewcode-link" in cells  # a [source] link
    assert layers.LSTMStep.__doc__.split("\n")[0].split("(")[0] in cells


def test_the_site_uses_nothing_remote(site):
    for page in site.rglob("*.html"):
        assert not re.search(r'<(img|script)[^>]+src="(https?:)?//', page.read_text()), page


def test_the_course_equations_are_math_rendered_by_the_sites_own_mathjax(site):
    assert (site / "_static" / "mathjax" / "tex-chtml.js").is_file()
    for tutorial in ("01_rnn_step", "04_lstm", "05_gru", "06_clipping", "10_charlm", "11_seq2seq"):
        page = (site / "course" / f"{tutorial}.html").read_text()
        assert 'class="math' in page, tutorial
        assert re.search(r'<script[^>]+src="[./]*_static/mathjax/tex-chtml\.js', page), tutorial
    lstm = (site / "course" / "04_lstm.html").read_text()
    assert r"c_t &amp;= f_t \odot c_{t-1} + i_t \odot g_t" in lstm  # the notes' cell update, as TeX


def test_every_test_the_docs_name_exists():
    named = set()
    for page in [*DOCS.rglob("*.md"), *TUTORIALS]:
        if not any(part in GENERATED for part in page.relative_to(DOCS).parts):
            named |= set(TEST_NAME.findall(page.read_text()))
    assert len(named) >= 20
    for file, test in sorted(named):
        path = ROOT / "tests" / file
        assert path.is_file() and re.search(rf"^def {test}\(", path.read_text(), re.M), f"tests/{file}::{test}"
