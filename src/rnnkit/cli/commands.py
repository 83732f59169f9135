"""The `rnnkit` command: `train TASK`, `eval`, `predict`, `sample`, `export`, the tasks' own commands,
`data download`, `gradflow`, `clipping`, `info`, `demo`, `bench`, `numpy-demo`.
Exit codes: 0 success, 2 usage error, 1 runtime error (no traceback unless --debug)."""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from .. import __version__
from ..engine import dispatch
from ..engine.cells import GRUStep, LSTMStep, RNNStep
from ..kernels import triton as triton_kernels
from ..kernels.cpu import fused
from ..nn import minimal
from ..nn.variants import VARIANTS
from ..training.config import ConfigError  # standard library only, like this module's other imports

class UsageError(Exception):
    """Bad command-line input: exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line and a pointer to --help (not the whole usage). With
    `intermixed=True` (a command without subcommands) positionals may also follow options, as in
    `rnnkit classify CKPT --ensemble CKPT2 "a witty film"`, which plain argparse refuses."""

    def __init__(self, *args, intermixed: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._intermixed, self._parsing = intermixed, False

    def parse_known_args(self, args=None, namespace=None):
        if not self._intermixed or self._parsing:
            return super().parse_known_args(args, namespace)
        self._parsing = True  # parse_known_intermixed_args calls back here for its two passes
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n(see `{self.prog} --help`)\n")


def cmd_info(args) -> int:
    print(f"rnnkit {__version__} (torch {torch.__version__})\n")
    print("Layers RNN, LSTM, GRU (drop-in for torch.nn) and cells RNNCell, LSTMCell, GRUCell.\n"
          "Every layer also takes lengths= in forward, recurrent_dropout= and impl= ('auto', 'native', 'engine', "
          "'autograd', 'triton').\n")
    for title, doc in (("RNN / RNNCell", RNNStep.__doc__), ("LSTM / LSTMCell", LSTMStep.__doc__),
                       ("GRU / GRUCell", GRUStep.__doc__), ("MinGRU / MinLSTM", minimal.__doc__),
                       ("Which implementation runs (impl=)", dispatch.__doc__)):
        print(f"== {title}")
        print(inspect.cleandoc(doc))
        print()
    reason = fused.unavailable_reason()
    print("== Fused CPU kernels (rnnkit/kernels/cpu)")
    if reason is not None:
        print(f"not available ({reason}): the LSTM variants run as PyTorch ops")
    else:
        whole = fused.sequence_available()
        sums = {"blas": "PyTorch's BLAS", "rnnkit": "rnnkit's kernel"}[fused.sums_kernel(torch.float32)] \
            if whole else ""
        print(f"available, cached in {fused.cache_dir()}; " + (
            "the engine runs each LSTM, GRU and RNN sequence in one call (time loop, gate math, the recurrent "
            "products on rnnkit's packed kernel, the others through PyTorch's BLAS); the weight gradients are "
            f"summed on {sums}, the faster of the two here (fused.sums_kernel, timed once per process; "
            "RNNKIT_SUMS=rnnkit|blas sets it)"
            if whole else "PyTorch's CPU library exports no BLAS gemm: the engine's loop calls the gate math per step"))
    print("\n== Triton kernels (rnnkit/kernels/triton, impl='triton')")
    reason = triton_kernels.unavailable_reason()
    print(reason if reason else "available: each sequence is one kernel launch forward and one backward, on CUDA "
                                "(on the CPU only under TRITON_INTERPRET=1, Triton's interpreter)")
    print("\n== Which path each configuration takes (impl='auto', a train step)")
    for label, step in INFO_CONFIGS:
        for device in ("cpu", "cuda"):
            path, why = dispatch.explain(step, device)
            print(f"{label if device == 'cpu' else '':24s} {device:5s} {path:8s} {why}")
    print("\nAfter a call, a layer's `last_plan` says what ran it and why (rnnkit.engine.dispatch.Plan).")
    return 0


INFO_CONFIGS = [(label, v.build(8, 8).cell) for label, v in VARIANTS.items() if not v.train_only]  # `rnnkit info`


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def cmd_demo(args) -> int:
    B, T, I, H = args.batch, args.steps, 32, args.hidden
    if min(B, T, H) < 1:
        raise UsageError(f"--batch, --steps and --hidden must be positive; got {B}, {T}, {H}")
    torch.manual_seed(args.seed)
    print(f"rnnkit {__version__} demo: batch {B}, steps {T}, input {I}, hidden {H}, 2 layers, "
          f"bidirectional, batch_first; torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    header = f"{'layer':28s} {'output':>14s} {'h_n':>12s} {'fwd+bwd ms':>11s} {'torch.nn ms':>12s} {'max |diff|':>11s}"
    print(header)
    print("-" * len(header))
    x = torch.randn(B, T, I, requires_grad=True)
    for label, variant in VARIANTS.items():
        layer = variant.build(I, H, 2, batch_first=True, bidirectional=True)
        out, state = layer(x)
        h_n = state[0] if isinstance(state, tuple) else state
        ms = _time(lambda: layer(x)[0].sum().backward(), args.repeats)
        ref_ms = diff = "-"
        if variant.in_torch_nn:
            ref = variant.torch_equivalent(I, H, 2, batch_first=True, bidirectional=True)
            ref.load_state_dict(layer.state_dict())
            with warnings.catch_warnings():  # torch notes that oneDNN has no LSTM projection
                warnings.simplefilter("ignore", UserWarning)
                diff = f"{(ref(x)[0] - out).abs().max().item():.1e}"
                ref_ms = f"{_time(lambda: ref(x)[0].sum().backward(), args.repeats):.1f}"
        print(f"{label:28s} {str(tuple(out.shape)):>14s} {str(tuple(h_n.shape)):>12s} {ms:11.1f} {ref_ms:>12s} {diff:>11s}")
    print("\nmax |diff|: output against torch.nn with the same weights, where torch.nn has the layer.")
    return 0


def cmd_bench(args) -> int:
    from . import bench

    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in bench.SHAPES]
    if unknown or not shapes:
        raise UsageError(f"--shapes takes a comma-separated subset of {','.join(bench.SHAPES)}; got {args.shapes!r}")
    cases = list(bench.CASES) if args.cases == "all" else [c.strip() for c in args.cases.split(",")]
    unknown = [c for c in cases if c not in bench.CASES]
    if unknown:
        raise UsageError(f"unknown --cases {unknown}; choose from: {', '.join(bench.CASES)}")
    if args.repeats < 1:
        raise UsageError(f"--repeats must be positive; got {args.repeats}")
    if args.device != "cpu" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device!r} asked for, but torch sees no CUDA device")

    def progress(row):
        infer = f", inference {row['infer_ratio']:.2f}x" if "infer_ratio" in row else ""
        print(f"  {row['shape']} {row['case']:24s} [{row['impl']}] train {row['train_ratio']:.2f}x{infer}",
              file=sys.stderr, flush=True)

    result = bench.run(shapes, cases, args.repeats, args.device, memory=not args.no_memory, progress=progress)
    print(bench.format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def cmd_numpy_demo(args) -> int:
    from ..reference import chardemo

    try:
        return chardemo.run(args)
    except chardemo.UsageError as e:
        raise UsageError(str(e)) from None


# The optional dependencies, by the extra of pyproject.toml that installs them (the layers need torch alone).
EXTRA_OF_MODULE = {**dict.fromkeys(("lightning", "pytorch_lightning", "lightning_utilities", "torchmetrics",
                                    "tensorboard", "matplotlib", "PIL", "conllu", "sacrebleu", "tokenizers", "yaml",
                                    "filelock"), "train"),
                   "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "pyarrow": "vectors"}


def _missing_extra(command: str, module: str) -> str | None:
    """The one line to print when `command` imports `module` and it is absent, or None if no extra has it."""
    extra = EXTRA_OF_MODULE.get(module.partition(".")[0])
    if extra is None:
        return None
    return f'rnnkit {command} needs the {extra!r} extra: pip install "rnnkit[{extra}]" (missing: {module})'


def _print_metrics(title: str, metrics: dict) -> None:
    print(title)
    width = max(map(len, metrics), default=0)
    for name, value in metrics.items():
        print(f"  {name:{width}s}  {value:.4f}")


def cmd_train(args) -> int:
    from ..tasks import get_task
    from ..training import config, run

    task = get_task(args.task)
    given = config.given_options(task.config_class, args)  # flags given override the --config file
    from_file = {}
    if args.config_file is not None:
        from_file = {k: v for k, v in config.read_config_file(args.config_file, task.config_class).items()
                     if k not in given}
        given = {**from_file, **given}
    try:
        cfg = run.resume_config(task, given.get("out", ""), given) if given.get("resume") \
            else task.config_class(**given)
        cfg.validate()
    except config.ConfigError as e:  # a value the file gave: say so, the flag alone would point at the command
        message = f"{e} "
        named = sorted((i, k) for k in from_file for i in (message.find(f"--{config.flag(k)} "),
                                                           message.find(f"--no-{config.flag(k)} ")) if i >= 0)
        if not named:
            raise
        raise config.ConfigError(f"{e} ({named[0][1]} in {args.config_file})") from None
    if args.print_config:
        print(config.to_yaml(cfg, f"rnnkit train {task.name}: `--config FILE` reads this back"), end="")
        return 0
    result = run.train(task, cfg)
    if "artifacts" in result:  # the process that wrote the run's outputs (rank 0 under DDP)
        out = cfg.out or os.environ[run.RUN_DIR_ENV]
        print(f"\nrun directory: {out}  ({result['epochs']} epochs, {result['train_seconds']:.0f} s of training)")
        _print_metrics("validation (best checkpoint):", result["val"])
        if result["test"]:
            _print_metrics("test (best checkpoint, evaluated once):", result["test"])
    return 0


def _load(path):
    from ..tasks import load

    return load(path)


def cmd_eval(args) -> int:
    import dataclasses

    from ..tasks import testfile
    from ..training.run import evaluate

    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1; got {args.batch_size}")
    loaded = _load(args.checkpoint)
    testfile.check_options(loaded.task, args)
    if args.test_file is None:
        split, metrics = evaluate(loaded, args.data_dir, args.batch_size, progress=not args.json)
        items, where = None, f"{split} set"
    else:
        metrics, items = testfile.evaluate_file(loaded, args, progress=not args.json)
        split, where = "test", f"test file {args.test_file}"
    cfg = dataclasses.replace(loaded.cfg, data_dir=args.data_dir or loaded.cfg.data_dir)
    metrics.update(loaded.task.decoded_metrics(loaded, cfg, items))
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "task": loaded.task.name, "split": split,
                          **({"test_file": args.test_file} if args.test_file else {}), "metrics": metrics}, indent=2))
    else:
        _print_metrics(f"{loaded.task.name} checkpoint {args.checkpoint}, {where}:", metrics)
    return 0


def cmd_predict(args) -> int:
    loaded = _load(args.checkpoint)
    try:
        results = loaded.task.predict(loaded, args.inputs, args)
    except NotImplementedError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        ranked = sorted(enumerate(r["probabilities"]), key=lambda kv: -kv[1])[:3]
        print(f"{r['input']}: {r['class']}   (" + ", ".join(f"{c}: {p:.3f}" for c, p in ranked) + ")")
    return 0


def cmd_sample(args) -> int:
    if args.length < 1:
        raise UsageError(f"--length must be >= 1; got {args.length}")
    if not args.temperature >= 0 or args.temperature == float("inf"):
        raise UsageError(f"--temperature must be a finite number >= 0 (0: greedy); got {args.temperature}")
    if args.top_k < 0:
        raise UsageError(f"--top-k must be >= 0 (0: no limit); got {args.top_k}")
    if args.count < 1:
        raise UsageError(f"--count must be >= 1; got {args.count}")
    loaded = _load(args.checkpoint)
    try:
        loaded.task.sample(loaded, args)
    except NotImplementedError as e:
        raise UsageError(str(e)) from None
    return 0


def cmd_export(args) -> int:
    loaded = _load(args.checkpoint)
    if args.format == "safetensors":
        from ..pretrained import save_pretrained

        try:
            path = save_pretrained(loaded, args.out)
        except FileExistsError as e:
            raise UsageError(str(e)) from None
        print(f"{loaded.task.name} model saved in {path}/ (model.safetensors, config.json, extra.json); "
              f"load it with rnnkit.pretrained.from_pretrained({str(path)!r})")
    else:
        for path in _export_onnx(loaded, args.out):
            print(f"wrote {path}")
    return 0


def _export_onnx(loaded, out: str) -> list[str]:
    """One file per graph (one graph: `out` itself; several: OUT_STEM.NAME.onnx), all or none written."""
    from .._files import make_ordinary

    try:
        graphs = loaded.task.onnx_graphs(loaded)
    except NotImplementedError as e:
        raise UsageError(str(e)) from None
    out = Path(out)
    paths = {name: out if len(graphs) == 1 else out.with_name(f"{out.stem}.{name}{out.suffix or '.onnx'}")
             for name in graphs}
    taken = [str(p) for p in paths.values() if p.exists()]
    if taken:
        raise UsageError(f"{', '.join(taken)} already exists; choose another --out")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the directory of --out does not exist: {out.parent}")
    staged = {name: path.with_name(f".{path.name}.{os.getpid()}.tmp") for name, path in paths.items()}
    try:
        for name, graph in graphs.items():
            graph.export(staged[name])
            make_ordinary(staged[name])  # the exporter's own writes decide its mode otherwise
        for name, path in paths.items():
            os.replace(staged[name], path)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    return [str(p) for p in paths.values()]


def cmd_gradflow(args) -> int:
    from ..analysis import gradflow

    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = [c for c in cells if c not in gradflow.CELLS]
    if unknown or not cells:
        raise UsageError(f"--cells takes a comma-separated subset of {','.join(gradflow.CELLS)}; got {args.cells!r}")
    for name in ("length", "hidden", "batch"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1; got {getattr(args, name)}")
    curves = gradflow.compare_cells(cells, args.length, args.hidden, batch=args.batch, seed=args.seed,
                                    forget_bias=args.forget_bias) if not args.checkpoint else {}
    for path in args.checkpoint or []:
        loaded = _load(path)
        curves[f"{loaded.cfg.cell} trained ({loaded.task.name})"] = gradflow.trained_curve(
            loaded, args.length, args.batch, args.seed)
    T = args.length
    marks = sorted({T, max(1, T - 10), max(1, T - 50), 1}, reverse=True)
    when = "after training" if args.checkpoint else "at initialisation"
    print(f"‖∂L/∂h_t‖ {when}, loss at step T={T} (batch {args.batch}):")
    width = max(len(name) for name in curves) + 2
    print(f"{'cell':{width}s}" + "".join(f"{'t=' + str(t):>12s}" for t in marks))
    for name, norms in curves.items():
        print(f"{name:{width}s}" + "".join(f"{norms[t - 1]:12.3e}" for t in marks))
    if args.out:
        from ..analysis.plots import plot_gradient_flow

        plot_gradient_flow(curves, args.out, title=f"‖∂L/∂h_t‖ {when}, loss at step {T}")
        print(f"plot: {args.out}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"length": T, "hidden": args.hidden, "batch": args.batch, "seed": args.seed,
                       "norms": curves}, f, indent=1)
    return 0


def cmd_clipping(args) -> int:
    from ..analysis import plots

    runs = {}
    for run_dir in args.runs:
        norms, tau = plots.read_run_grad_norms(run_dir)
        label = os.path.basename(os.path.normpath(run_dir))
        runs[label if label not in runs else run_dir] = (norms, tau)
    print(f"{'run':24s} {'τ':>6s} {'steps':>7s} {'median ‖g‖':>11s} {'p99 ‖g‖':>9s} {'max ‖g‖':>9s} {'clipped':>8s}")
    for label, (norms, tau) in runs.items():
        g = torch.tensor(norms, dtype=torch.float64)
        clipped = f"{(g > tau).double().mean().item():.1%}" if tau > 0 else "off"
        print(f"{label:24s} {tau if tau > 0 else 0:6g} {len(g):7d} {g.median().item():11.3g} "
              f"{g.quantile(0.99).item():9.3g} {g.max().item():9.3g} {clipped:>8s}")
    if args.out:
        print(f"plot: {plots.plot_norm_distribution(runs, args.out)}")
    return 0


def cmd_data_download(args) -> int:
    from ..data import DATASETS, download_dataset

    if args.name not in DATASETS:
        raise UsageError(f"unknown data set {args.name!r}; known: {', '.join(DATASETS)}")
    path = download_dataset(args.name, args.data_dir, mirrors=args.mirror)
    print(f"{args.name}: verified files in {path}")
    return 0


def _task_command(task, command):
    def run(args) -> int:
        loaded = _load(args.checkpoint)
        if loaded.task.name != task.name:
            raise UsageError(f"`rnnkit {command.name}` runs {task.name} checkpoints; {args.checkpoint} is a "
                             f"{loaded.task.name} checkpoint")
        return command.run(loaded, args)

    return run


def _add_training_commands(sub) -> None:
    try:
        from ..tasks import TASKS
        from ..training.config import add_arguments
    except ModuleNotFoundError as e:  # layers-only install: say what is missing when the command is used
        if e.name is None or _missing_extra("train", e.name) is None:
            raise

        def missing_extras(args, module=e.name):
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)

        for name in ("train", "eval", "predict", "sample", "export"):
            p = sub.add_parser(name, help="(needs rnnkit[train])", add_help=False)
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(fn=missing_extras)
        return
    train = sub.add_parser("train", help="train a task's model (rnnkit train TASK --help lists its options)")
    tasks = train.add_subparsers(dest="task", metavar="TASK", required=True)
    for task in TASKS.values():
        p = tasks.add_parser(task.name, help=task.help, description=task.help, usage="%(prog)s [options]",
                             epilog=f"rnnkit train {task.name} --print-config writes a --config file of every option.")
        add_arguments(p, task.config_class, task_title=f"{task.name} options")
        files = p.add_argument_group("config file")
        files.add_argument("--config", dest="config_file", metavar="FILE",
                           help="read options from this YAML file, keys as in --print-config (max_epochs: 5); "
                                "flags given on the command line override it")
        files.add_argument("--print-config", action="store_true",
                           help="print the config these options make, as YAML that --config reads, and exit")
        p.set_defaults(fn=cmd_train)
    ev = sub.add_parser("eval", help="metrics of a checkpoint on its task's test set (or held-out text)")
    ev.add_argument("checkpoint", metavar="CKPT")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.add_argument("--data-dir", default=None, help="data directory (default: the one the run used)")
    ev.add_argument("--batch-size", type=int, default=None)
    ev.add_argument("--test-file", default=None, metavar="FILE", help="score the checkpoint on this file instead, "
                    "with the metrics of its task's test set and the checkpoint's vocabularies; " + "; ".join(
                        f"{task.name}: {task.test_file_help}" for task in TASKS.values() if task.test_file_help))
    ev.add_argument("--test-target", default=None, metavar="FILE",
                    help="translate: the reference translations of --test-file's lines, line by line")
    ev.add_argument("--test-labels", default=None, metavar="FILE",
                    help="mnist: the IDX labels file (gzip'd) of --test-file's images")
    ev.add_argument("--header", action="store_true",
                    help="sentiment: the first line of --test-file is a header (as SST-2's sentence<TAB>label)")
    ev.add_argument("--test-fraction", type=float, default=None, metavar="F",
                    help="forecast: score only the windows forecasting the last F of --test-file's rows, as "
                         "training's test part (default: every window with the model's W rows before it)")
    ev.set_defaults(fn=cmd_eval)
    pr = sub.add_parser("predict", help="run a checkpoint on inputs (mnist: image files of digits)")
    pr.add_argument("checkpoint", metavar="CKPT")
    pr.add_argument("inputs", nargs="+", metavar="INPUT")
    pr.add_argument("--json", action="store_true", help="print the predictions as JSON")
    pr.set_defaults(fn=cmd_predict)
    sa = sub.add_parser("sample", help="generate from a checkpoint (charlm: text, printed as it is generated)")
    sa.add_argument("checkpoint", metavar="CKPT")
    sa.add_argument("--prime", default=None, help="text the model reads before generating (default: a newline, "
                    "or the vocabulary's first character if it has none)")
    sa.add_argument("--length", type=int, default=500, help="characters to generate")
    sa.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 is greedy")
    sa.add_argument("--top-k", type=int, default=0, help="sample among the k most likely only (0: all)")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--digit", type=int, default=None, help="digits: the class to generate (default: 0)")
    sa.add_argument("--count", type=int, default=16, help="digits: how many to generate")
    sa.add_argument("--out", default=None, help="digits: write a PNG grid here (default: print them as text)")
    sa.add_argument("--classifier", default=None, metavar="MNIST_CKPT",
                    help="digits: print the fraction that this `rnnkit train mnist` checkpoint recognises")
    sa.set_defaults(fn=cmd_sample)
    ex = sub.add_parser("export", help="write a checkpoint's model for use elsewhere: safetensors weights + JSON "
                        "config and vocabulary (rnnkit.pretrained.from_pretrained loads it, torch alone needed), "
                        "or ONNX graphs that onnxruntime runs for any batch size and length")
    ex.add_argument("checkpoint", metavar="CKPT")
    ex.add_argument("--format", choices=["safetensors", "onnx"], default="safetensors")
    ex.add_argument("--out", required=True, metavar="PATH",
                    help="safetensors: the directory to create (must not hold anything); onnx: the .onnx file "
                         "(a model of several graphs, e.g. encoder and decoder: PATH_STEM.NAME.onnx each)")
    ex.set_defaults(fn=cmd_export)
    for task in TASKS.values():
        for command in task.commands:
            p = sub.add_parser(command.name, help=command.help, description=command.help, intermixed=True)
            p.add_argument("checkpoint", metavar="CKPT", help=f"a {task.name} checkpoint (rnnkit train {task.name})")
            command.add_arguments(p)
            p.set_defaults(fn=_task_command(task, command))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rnnkit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"rnnkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_training_commands(sub)
    data = sub.add_parser("data", help="download data sets (verified by sha256)")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    dl = data_sub.add_parser("download", help="download a data set into the data directory")
    dl.add_argument("name", help="data set name, e.g. mnist")
    dl.add_argument("--data-dir", default=None, help="default: $RNNKIT_DATA, else the user cache directory")
    dl.add_argument("--mirror", action="append", metavar="URL",
                    help="base URL to download from instead of the public mirrors (repeatable, tried in order)")
    dl.set_defaults(fn=cmd_data_download)
    sub.add_parser("info", help="list the cells and variants with their equations").set_defaults(fn=cmd_info)
    gf = sub.add_parser("gradflow", help="plot ‖∂L/∂h_t‖ over time for a loss at the last step: "
                        "vanishing gradients in a vanilla RNN, not in LSTM/GRU")
    gf.add_argument("--cells", default="rnn,lstm,gru", help="comma-separated subset of rnn,lstm,gru")
    gf.add_argument("--length", type=int, default=100, help="sequence length T")
    gf.add_argument("--hidden", type=int, default=64)
    gf.add_argument("--batch", type=int, default=32)
    gf.add_argument("--seed", type=int, default=0)
    gf.add_argument("--forget-bias", type=float, default=None,
                    help="LSTM forget-gate bias at initialisation (default: torch.nn's init, about 0)")
    gf.add_argument("--checkpoint", action="append", metavar="CKPT",
                    help="measure the trained recurrent layer of this checkpoint instead (repeatable)")
    gf.add_argument("--out", metavar="FILE.png", help="write the plot here")
    gf.add_argument("--json", metavar="FILE", help="write the norms as JSON")
    gf.set_defaults(fn=cmd_gradflow)
    cl = sub.add_parser("clipping", help="the distribution of the per-step gradient norm ‖g‖ in training runs, "
                        "with and without clipping (table, and a histogram with --out)")
    cl.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories of `rnnkit train`")
    cl.add_argument("--out", metavar="FILE.png", help="write the histogram here")
    cl.set_defaults(fn=cmd_clipping)
    demo = sub.add_parser("demo", help="build every layer, run forward and backward, print shapes and timings")
    demo.add_argument("--batch", type=int, default=32)
    demo.add_argument("--steps", type=int, default=50)
    demo.add_argument("--hidden", type=int, default=64)
    demo.add_argument("--repeats", type=int, default=3)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(fn=cmd_demo)
    bench = sub.add_parser("bench", help="time rnnkit's layers against torch.nn (ratios), see benchmarks/")
    bench.add_argument("--shapes", default="A,B,C,D", help="subset of A,B,C,D (default: all)")
    bench.add_argument("--cases", default="all", help="comma-separated case names (default: all)")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--device", default="cpu", help="cpu or cuda")
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bench.set_defaults(fn=cmd_bench)
    from ..reference import chardemo

    numpy_demo = sub.add_parser("numpy-demo", help="a character-level model trained from scratch in NumPy, "
                                "printing loss and samples (see docs/bptt.md)")
    chardemo.add_arguments(numpy_demo)
    numpy_demo.set_defaults(fn=cmd_numpy_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.fn(args)
    except (UsageError, ConfigError) as e:
        if args.debug:
            raise
        print(f"rnnkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rnnkit: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:  # an optional dependency: name the extra that installs it
        message = _missing_extra(args.command, e.name or "")
        if message is None or args.debug:
            raise
        print(f"rnnkit: error: {message}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        if args.debug:
            raise
        print(f"rnnkit: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
