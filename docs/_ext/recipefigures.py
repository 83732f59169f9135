"""The recipes' pictures, drawn by the build: the `rnnkit-run` directive runs one `rnnkit` command at a small
size, in this process, through the command line's own `main`, and shows the figure it wrote with its caption.

    ```{rnnkit-run} train mnist --data-dir {data} --out {run} --hidden 32 --max-epochs 2
    :name: mnist
    :figure: confusion.png
    :alt: confusion matrix of a small LSTM on the MNIST test set

    The caption, in Markdown: what the picture is and at what size it was run.
    ```

`{data}` is the data directory (conf.py's `recipe_data_dir`), `{run}` this command's own folder
(`recipes/_runs/PAGE/NAME`, emptied before it runs, where `:figure:` is looked for) and `{runs}` the page's
folder, so a later command reads an earlier one's run (`{runs}/NAME/checkpoints/best.ckpt`). The page shows the
command as it ran (the two folders written as `../shared/data` and `runs/NAME`), then the figure, whose caption
ends with what the run did: for `train`, its epochs, steps, training time and test metrics from metrics.json.
`:output:` shows what the command printed (the tables of `rnnkit gradflow` and `rnnkit clipping`); `:text:
FILE` shows a text file the run wrote (a charlm sample). `train` runs with `--no-progress` (it changes what is
printed only). A command that fails fails the build, with its output.
The runs are written in the source folder (gitignored), and a page is re-run whenever Sphinx reads it again.
"""
from __future__ import annotations

import contextlib
import io
import json
import shlex
import shutil
import time
import warnings
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.errors import ExtensionError
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

RUNS = "_runs"  # beside the pages of recipes/: generated, never a source


class RnnkitRun(SphinxDirective):
    required_arguments = 1
    final_argument_whitespace = True
    has_content = True
    option_spec = {"name": directives.unchanged_required, "figure": directives.unchanged_required,
                   "alt": directives.unchanged, "output": directives.flag, "text": directives.unchanged_required}

    def run(self) -> list[nodes.Node]:
        page = Path(self.env.docname)
        runs = Path(self.env.srcdir) / page.parent / RUNS / page.name
        name = self.options.get("name", f"run{self.env.new_serialno('rnnkit-run')}")
        run = runs / name
        command = " ".join(self.arguments[0].split())
        data = self.config.recipe_data_dir
        if "{data}" in command and not Path(data).is_dir():
            raise ExtensionError(f"the recipes' data directory {data!r} does not exist: set RNNKIT_DATA (or "
                                 f"recipe_data_dir in conf.py) to the folder that holds the data sets")
        argv = [word.format(data=data, run=run, runs=runs) for word in shlex.split(command)]
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(parents=True)
        printed, seconds = _run(argv)
        logger.info(f"rnnkit-run {page}/{name}: {seconds:.1f} s")
        shown = {str(run): f"runs/{name}", str(runs): "runs", **({data: "../shared/data"} if data else {})}
        command = command.format(data=shown.get(data, data), run=f"runs/{name}", runs="runs")
        result: list[nodes.Node] = [nodes.literal_block(f"rnnkit {command}", f"rnnkit {command}", language="bash")]
        if "output" in self.options:
            for path, short in shown.items():  # the run's folders as the command above writes them
                printed = printed.replace(path, short)
            result.append(nodes.literal_block(printed, printed.strip("\n"), language="text"))
        if "text" in self.options:
            text = (run / self.options["text"]).read_text()
            result.append(nodes.literal_block(text, text.strip("\n"), language="text"))
        if "figure" in self.options:
            result.append(self._figure(run / self.options["figure"], argv, run, seconds))
        else:
            result.append(nodes.paragraph("", _what_ran(argv, run, seconds)))
        return result

    def _figure(self, png: Path, argv: list[str], run: Path, seconds: float) -> nodes.figure:
        if not png.is_file():
            raise ExtensionError(f"rnnkit {' '.join(argv)} wrote no {png.name} (it wrote: "
                                 f"{', '.join(sorted(p.name for p in run.iterdir()))})")
        uri = "/" + png.relative_to(self.env.srcdir).as_posix()  # "/": from the source folder
        figure = nodes.figure("", nodes.image(uri=uri, alt=self.options.get("alt", png.name)))
        caption = nodes.caption()
        if self.content:
            parsed = nodes.Element()
            self.state.nested_parse(self.content, self.content_offset, parsed)
            for paragraph in parsed.children:  # a caption holds inline text: the paragraphs' contents
                caption += paragraph.children
                caption += nodes.Text(" ")
        caption += nodes.Text(_what_ran(argv, run, seconds))
        figure += caption
        return figure


def _run(argv: list[str]) -> tuple[str, float]:
    """`rnnkit ARGV` in this process; what it printed, and its seconds. A failure stops the build."""
    from rnnkit.cli.commands import main

    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's and torch's advice: the run's log, not the build's
        code = main([*argv, "--no-progress"] if argv[0] == "train" else argv)
    if code != 0:
        raise ExtensionError(f"rnnkit {' '.join(argv)} failed (exit code {code}):\n{printed.getvalue()[-4000:]}")
    return printed.getvalue(), time.perf_counter() - start


def _what_ran(argv: list[str], run: Path, seconds: float) -> str:
    """The caption's last sentence: what the run did, read from its own record."""
    if argv[0] != "train":
        return f"Run in this build by the command above ({seconds:.1f} s)."
    record = json.loads((run / "metrics.json").read_text())
    part, prefix, metrics = ("test", "test_", record["test"]) if record["test"] else \
        ("validation", "val_", record["val"])
    shown = ", ".join(f"{k.removeprefix(prefix)} {v:.4g}" for k, v in metrics.items())
    return (f"Run in this build by the command above: {record['epochs']} epochs, {record['steps']:,} steps, "
            f"{record['train_seconds']:.1f} s of training; {part} metrics of its best checkpoint: {shown}.")


def setup(app):
    app.add_config_value("recipe_data_dir", "", "env")
    app.add_directive("rnnkit-run", RnnkitRun)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
