"""ONNX export of rnnkit's recurrent layers, for any batch size and sequence length.

While `export_onnx` runs `torch.onnx.export` (the TorchScript exporter, dynamo=False) on a model, each rnnkit
layer's forward and step are this module's (instance attributes set for the duration of the export), which emit:
  - ONNX's own `RNN`, `GRU` or `LSTM` operator, one node per layer, when the cell maps to it:
    RNN tanh/relu/softsign, GRU in both reset conventions (`linear_before_reset`), LSTM with
    peepholes (input `P`), coupled input-forget gate (`input_forget`), softsign, any biases
    (forget_bias is only an init). `lengths=` becomes `sequence_lens`.
  - an ONNX `Loop` over time otherwise (LSTM with layer_norm or proj_size): a TorchScript-scripted
    step loop, with padded sequences reversed by a gather for the backward direction.
minGRU/minLSTM have no hook: `export_onnx` swaps their step loop for a scripted one (an ONNX Loop;
their parallel scan needs logcumsumexp, which the exporter lacks) for the duration of the export.
Either way the graph holds no trace-time T or B. Recurrent and inter-layer dropout are training
only: the graph is the inference model. Semantics are the layer's: outputs past a sequence's length
are zero, final states are those at its last valid step.

Weight layout (torch -> ONNX): LSTM gates i,f,g,o -> i,o,f,c; peepholes p_i,p_f,p_o -> P = p_i,p_o,p_f;
coupled f,g,o -> i=-f,o,0,c with input_forget=1 (onnxruntime derives f = 1 - i, see _onnx_weights);
GRU r,z,n -> z,r,h; B = [b_ih, b_hh].

Shapes: B batch, T time, I input, H hidden, P = proj_size or H, L layers, D directions.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
from pathlib import Path
from typing import List

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..engine.cells import LN_EPS, GRUStep, LSTMStep, RNNStep, Step

OPSET = 17
_ONNX_ACTIVATION = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "softsign": "Softsign"}
_INT32 = 6  # ONNX TensorProto.INT32, the type of sequence_lens


@contextlib.contextmanager
def _eager():
    """The layer's own forward, untraced: its values stand behind the ONNX nodes in the trace."""
    tracing = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(tracing)


def operator_for(step: Step) -> str:
    """The ONNX operator a cell exports to: 'RNN', 'GRU', 'LSTM', or 'Loop' when none fits."""
    if isinstance(step, LSTMStep):
        return "Loop" if step.layer_norm or step.proj_size else "LSTM"
    if isinstance(step, GRUStep):
        return "GRU"
    if isinstance(step, RNNStep):
        return "RNN"
    raise ValueError(f"no ONNX export for cell {step!r}")


# -- the layer's forward while exporting ---------------------------------------------------------

def onnx_forward(layer, input, hx=None, lengths=None):
    """`layer.forward` during ONNX export: the same inputs, outputs and semantics, ONNX-friendly ops."""
    if isinstance(input, PackedSequence):
        raise ValueError("ONNX export takes a padded tensor and lengths=, not a PackedSequence")
    x, batched = layer._check_input(input)  # (T, B, I)
    if lengths is not None:
        if not isinstance(lengths, Tensor) or lengths.dim() != 1:
            raise ValueError(f"lengths must be a 1-D integer tensor for ONNX export; got {lengths!r}")
        lengths = lengths.long()
    if operator_for(layer.cell) == "Loop":
        states = layer._check_state(hx, x.shape[1], batched, x)
        out, finals = _loop_stack(layer, x, states, lengths)
    else:
        out, finals = _operator_stack(layer, input, hx, x, batched, lengths)
    if not batched:
        return out.squeeze(1), layer._pack_state(tuple(s.squeeze(1) for s in finals))
    if layer.batch_first:
        out = out.transpose(0, 1)
    return out, layer._pack_state(finals)


def _onnx_step(layer, x_t, hx=None):
    """`layer.step` during ONNX export: a one-step sequence."""
    output, final = onnx_forward(layer, x_t.unsqueeze(1 if layer.batch_first else 0), hx)
    return output.squeeze(1 if layer.batch_first else 0), final


# -- ONNX's RNN/GRU/LSTM operators ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _OpSpec:
    op: str  # 'RNN', 'GRU' or 'LSTM'
    hidden_size: int
    num_layers: int
    bidirectional: bool
    activations: tuple[str, ...]  # one direction's, ONNX names
    attributes: tuple[tuple[str, int], ...]  # linear_before_reset / input_forget


def _op_spec(layer) -> _OpSpec:
    step = layer.cell
    op = operator_for(step)
    if op == "RNN":
        acts, attrs = (step.nonlinearity,), ()
    elif op == "GRU":
        acts, attrs = ("sigmoid", step.activation), (("linear_before_reset", int(step.reset_after)),)
    else:
        acts, attrs = ("sigmoid", step.activation, step.activation), (("input_forget", int(step.coupled)),)
    names = tuple(_ONNX_ACTIVATION[a] for a in acts)
    return _OpSpec(op, step.hidden_size, layer.num_layers, layer.bidirectional, names, attrs)


def _blocks(t: Tensor, count: int, order) -> Tensor:
    """Reorder t's `count` equal blocks along dim 0: `order` holds a block index, -1 - index for
    the negated block, or None for a block of zeros."""
    parts = t.chunk(count, 0)
    return torch.cat([torch.zeros_like(parts[0]) if k is None else parts[k] if k >= 0 else -parts[-1 - k]
                      for k in order], 0)


def _onnx_weights(layer, index: int) -> list:
    """W, R, B, P (P None without peepholes) of one layer and direction, in ONNX's gate order."""
    step = layer.cell
    p = {generic: getattr(layer, name) for generic, name in layer._names[index].items()}
    G = step.gates
    if isinstance(step, LSTMStep):
        # coupled: onnxruntime's input_forget computes f = 1 - i, so i carries -(f's pre-activation):
        # i = sigmoid(-a_f) = 1 - f, f = 1 - i; ONNX's own f block is unused (zeros)
        order, peep_order = ((-1, 2, None, 1), (-1, 1, None)) if step.coupled else ((0, 3, 1, 2), (0, 2, 1))
    else:
        order, peep_order = ((1, 0, 2) if isinstance(step, GRUStep) else (0,)), None
    W = _blocks(p["weight_ih"], G, order)  # (G'*H, I)
    R = _blocks(p["weight_hh"], G, order)  # (G'*H, H)
    if step.bias:
        B = torch.cat([_blocks(p["bias_ih"], G, order), _blocks(p["bias_hh"], G, order)])  # (2*G'*H,)
    else:
        B = W.new_zeros(2 * W.shape[0])
    P = _blocks(p["weight_peephole"], G - 1, peep_order) if getattr(step, "peephole", False) else None
    return [W, R, B, P]


class _RecurrentOp(torch.autograd.Function):
    """One layer stack as ONNX RNN/GRU/LSTM nodes. forward() returns the eager layer's values, so
    the traced model computes the right numbers; symbolic() writes the nodes."""

    @staticmethod
    def forward(ctx, compute, spec, x, lengths, h0, c0, *weights):
        return compute()

    @staticmethod
    def symbolic(g, compute, spec: _OpSpec, x, lengths, h0, c0, *weights):
        D = 2 if spec.bidirectional else 1
        seq = _absent(g) if lengths is None else g.op("Cast", lengths, to_i=_INT32)
        attrs = {f"{name}_i": value for name, value in spec.attributes}
        n_out = 3 if spec.op == "LSTM" else 2
        finals = [[] for _ in range(n_out - 1)]
        for layer in range(spec.num_layers):
            W, R, B, P = weights[4 * layer: 4 * layer + 4]
            inputs = [x, W, R, B, seq] + [_absent(g) if s is None else _slice0(g, s, layer * D, (layer + 1) * D)
                                          for s in ((h0, c0) if spec.op == "LSTM" else (h0,))]
            if P is not None:
                inputs.append(P)
            y, *states = g.op(spec.op, *inputs, outputs=n_out, hidden_size_i=spec.hidden_size,
                              direction_s="bidirectional" if D == 2 else "forward",
                              activations_s=list(spec.activations) * D, **attrs)
            # Y (T, D, B, H) -> (T, B, D*H), the next layer's input
            x = g.op("Reshape", g.op("Transpose", y, perm_i=[0, 2, 1, 3]),
                     g.op("Constant", value_t=torch.tensor([0, 0, -1])))
            for collected, s in zip(finals, states):
                collected.append(s)
        return (x, *[g.op("Concat", *f, axis_i=0) if len(f) > 1 else f[0] for f in finals])


def _absent(g):
    """An omitted optional input of an ONNX node (as torch's own RNN symbolics write it)."""
    node = g.op("prim::Constant")
    node.setType(torch._C.OptionalType.ofTensor())
    return node


def _slice0(g, t, start: int, end: int):
    const = lambda v: g.op("Constant", value_t=torch.tensor([v]))  # noqa: E731
    return g.op("Slice", t, const(start), const(end), const(0))


def _operator_stack(layer, input, hx, x, batched, lengths):
    """The stack as ONNX operator nodes: out (T, B, D*H) and final states (D*L, B, H)."""
    def compute():  # the eager layer's results, time-major, for the trace
        with _eager(), torch.no_grad():
            out, final = type(layer).forward(layer, input, hx, lengths=lengths)  # the class's, not the export's
        final = final if isinstance(final, tuple) else (final,)
        if not batched:
            return (out.unsqueeze(1), *[s.unsqueeze(1) for s in final])
        return ((out.transpose(0, 1) if layer.batch_first else out), *final)

    h0 = c0 = None
    if hx is not None:
        states = layer._check_state(hx, x.shape[1], batched, x)
        h0, c0 = (states + (None,))[:2]
    D = layer.num_directions
    weights = []
    for l in range(layer.num_layers):  # per layer: each of W, R, B, P stacked over directions
        per_dir = [_onnx_weights(layer, l * D + d) for d in range(D)]
        weights += [None if ws[0] is None else torch.stack(ws) for ws in zip(*per_dir)]
    out, *finals = _RecurrentOp.apply(compute, _op_spec(layer), x, lengths, h0, c0, *weights)
    return out, tuple(finals)


# -- a Loop over time, for what no operator expresses --------------------------------------------

def _act(v: Tensor, softsign: bool) -> Tensor:
    return v / (1 + v.abs()) if softsign else torch.tanh(v)


def _lstm_loop(xp: Tensor, h: Tensor, c: Tensor, lengths: Tensor, w_hh: Tensor, ln_w_hh: Tensor, peep: Tensor,
               ln_w_c: Tensor, ln_b_c: Tensor, w_hr: Tensor, layer_norm: bool, peephole: bool, coupled: bool,
               softsign: bool, proj: bool, eps: float, H: int):
    """The LSTM recurrence over time, scripted below so that it exports as an ONNX Loop for any T.

    xp (T, B, G*H) the hoisted input projection, h (B, P), c (B, H), lengths (B,); a weight the
    configuration lacks is an empty tensor. Returns out (T, B, P), zero past each length, and h_n,
    c_n at each sequence's last valid step. The equations of cells.LSTMStep.step (which takes a
    dict and is not scriptable); the flags are constants of the trace, so the exporter folds
    their branches away.
    """
    G = 3 if coupled else 4  # H is an argument: ONNX needs layer norms' shapes constant
    outs: List[Tensor] = []
    for t in range(xp.size(0)):
        rec = h @ w_hh.t()  # (B, G*H)
        if layer_norm:
            rec = torch.nn.functional.layer_norm(rec, [G * H], ln_w_hh, None, eps)
        gates = xp[t] + rec
        f = gates[:, (G - 3) * H:(G - 2) * H]  # gates i, f, g, o (coupled: f, g, o)
        g = _act(gates[:, (G - 2) * H:(G - 1) * H], softsign)
        o = gates[:, (G - 1) * H:]
        if peephole:
            f = f + peep[(G - 3) * H:(G - 2) * H] * c
        f = torch.sigmoid(f)
        if coupled:
            c_new = f * c + (1 - f) * g
        else:
            i = gates[:, :H]
            if peephole:
                i = i + peep[:H] * c
            c_new = f * c + torch.sigmoid(i) * g
        if peephole:
            o = o + peep[(G - 2) * H:] * c_new
        c_out = c_new
        if layer_norm:
            c_out = torch.nn.functional.layer_norm(c_new, [H], ln_w_c, ln_b_c, eps)
        h_new = torch.sigmoid(o) * _act(c_out, softsign)  # (B, H)
        if proj:
            h_new = h_new @ w_hr.t()  # (B, P)
        valid = (lengths > t).unsqueeze(1)  # (B, 1): past a sequence's end its state stays
        h = torch.where(valid, h_new, h)
        c = torch.where(valid, c_new, c)
        outs.append(torch.where(valid, h_new, torch.zeros_like(h_new)))
    return torch.stack(outs), h, c


_SCRIPTED = {}


def _scripted(fn):
    """fn scripted, on first use: importing rnnkit stays cheap."""
    if fn not in _SCRIPTED:
        _SCRIPTED[fn] = torch.jit.script(fn)
    return _SCRIPTED[fn]


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence within its length, padding left in place: x (T, B, F), lengths (B,).
    A gather, so that it exports for any T (engine.reverse_padded's semantics)."""
    t = torch.arange(x.shape[0], device=x.device).unsqueeze(1)  # (T, 1)
    index = torch.where(t < lengths, lengths - 1 - t, t)  # (T, B)
    return x.gather(0, index.unsqueeze(2).expand_as(x))


def _project_input(step: LSTMStep, x: Tensor, p: dict) -> Tensor:
    """step.project_input, with the layer norm's shape a constant of the graph: (T, B, I) -> (T, B, G*H)."""
    if not step.layer_norm:
        return step.project_input(x, p)
    a = x @ p["weight_ih"].T  # (T, B, G*H)
    return torch.nn.functional.layer_norm(a, (step.gates * step.hidden_size,), p["ln_weight_ih"],
                                          step._input_bias(p), LN_EPS)


def _loop_stack(layer, x, states, lengths):
    """The LSTM stack as one scripted Loop per layer and direction, as _Recurrent._run_stack composes
    them: x (T, B, I), states ((D*L, B, P), (D*L, B, H)) -> out (T, B, D*P), final states."""
    step, D = layer.cell, layer.num_directions
    if lengths is None:
        lengths = torch.ones_like(x[0, :, 0], dtype=torch.long) * x.shape[0]  # (B,) all T, traced
    flags = (step.layer_norm, step.peephole, step.coupled, step.activation == "softsign", step.proj_size > 0, LN_EPS,
             step.hidden_size)
    finals = [[], []]
    for l in range(layer.num_layers):
        outs = []
        for d in range(D):
            index = l * D + d
            p = {generic: getattr(layer, name) for generic, name in layer._names[index].items()}
            inp = reverse_padded(x, lengths) if d else x
            xp = _project_input(step, inp, p)  # (T, B, G*H)
            empty, zeros = xp.new_zeros(0), xp.new_zeros(step.hidden_size)  # for parameters it lacks
            out, h, c = _scripted(_lstm_loop)(xp, states[0][index], states[1][index], lengths, p["weight_hh"],
                                               p.get("ln_weight_hh", empty), p.get("weight_peephole", empty),
                                               p.get("ln_weight_c", empty), p.get("ln_bias_c", zeros),
                                               p.get("weight_hr", empty), *flags)
            outs.append(reverse_padded(out, lengths) if d else out)
            finals[0].append(h)
            finals[1].append(c)
        x = torch.cat(outs, 2) if D > 1 else outs[0]  # (T, B, D*P)
    return x, tuple(torch.stack(f) for f in finals)


def _linear_recurrence(a: Tensor, b: Tensor, h: Tensor, valid: Tensor):
    """h_t = a_t * h_{t-1} + b_t over time, scripted so that it exports as an ONNX Loop.
    a, b (T, B, H), h (B, H), valid (T, B, 1). Returns out (T, B, H), zero where not valid, and h_n."""
    outs: List[Tensor] = []
    for t in range(a.size(0)):
        h = torch.where(valid[t], a[t] * h + b[t], h)  # (B, H); an ended row keeps its state
        outs.append(torch.where(valid[t], h, torch.zeros_like(h)))
    return torch.stack(outs), h


def _minimal_loop(layer):
    """A stand-in for `_MinimalRNN._loop` (same arguments and results) during export."""
    def loop(xp, h, valid, lengths):
        a, b = layer.cell.coefficients(xp)  # (T, B, H) each
        h = torch.zeros_like(b[0]) if h is None else h
        valid = torch.ones_like(a[..., :1], dtype=torch.bool) if valid is None else valid  # (T, B, 1)
        return _scripted(_linear_recurrence)(a, b, h, valid)
    return loop


# -- the public helper ---------------------------------------------------------------------------

class LayerForExport(nn.Module):
    """A bare rnnkit layer as an exportable module: forward(input, lengths=None) ->
    (output, h_n) or (output, h_n, c_n), flat, as ONNX outputs are."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, input: Tensor, lengths: Tensor | None = None):
        out, final = self.layer(input, lengths=lengths)
        return (out, *final) if isinstance(final, tuple) else (out, final)


class Prediction(nn.Module):
    """A task model `forward(inputs, targets=None) -> (output, loss)` as an exportable module:
    forward(*inputs) -> output (several inputs reach the model as one tuple, e.g. (x, lengths))."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        return self.model(inputs if len(inputs) > 1 else inputs[0])[0]


class StepWithState(nn.Module):
    """A model that carries a recurrent state, `forward((x, state)) -> ((output, state), loss)`, as an
    exportable module: forward(x, *state) -> (output, *state), the state flat ((h, c) or h)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, *state: Tensor):
        (output, final), _ = self.model((x, state if len(state) > 1 else state[0]))
        return (output, *final) if isinstance(final, tuple) else (output, final)


@dataclasses.dataclass
class Graph:
    """One ONNX graph to write: module(*inputs) -> outputs, with the names and dynamic axes of each."""

    module: nn.Module
    inputs: tuple
    input_names: list
    output_names: list
    dynamic_axes: dict

    def export(self, path, overwrite: bool = False) -> Path:
        return export_onnx(self.module, self.inputs, path, self.input_names, self.output_names, self.dynamic_axes,
                           overwrite=overwrite)


def zero_state(rnn: nn.Module, batch: int) -> tuple:
    """The initial state of an rnnkit layer as the flat ONNX inputs: (h0,) or (h0, c0), each (D*L, B, size)."""
    D = 2 if rnn.bidirectional else 1
    weight = next(rnn.parameters())
    h = weight.new_zeros(D * rnn.num_layers, batch, getattr(rnn, "proj_size", 0) or rnn.hidden_size)
    if rnn.mode == "LSTM":
        return h, weight.new_zeros(D * rnn.num_layers, batch, rnn.hidden_size)
    return (h,)


def many_to_one(model: nn.Module, features: int, input_name: str, output_name: str, lengths: bool = True,
                time: int | None = None) -> Graph:
    """The graph of a many-to-one model (x (B, T, F) [, lengths (B,)]) -> (B, K): any batch size; any T
    unless `time` fixes it (e.g. a forecaster's window)."""
    weight = next(model.parameters())
    x = torch.randn(2, time or 5, features, dtype=weight.dtype, device=weight.device)
    inputs, names = (x,), [input_name]
    axes = {input_name: {0: "batch"} if time else {0: "batch", 1: "time"}, output_name: {0: "batch"}}
    if lengths:
        inputs, names = (x, torch.tensor([x.shape[1], 3], device=weight.device)), [input_name, "lengths"]
        axes["lengths"] = {0: "batch"}
    return Graph(Prediction(model), inputs, names, [output_name], axes)


def carrying_state(module: nn.Module, rnn: nn.Module, inputs: tuple, input_names: list, axes: dict) -> Graph:
    """The graph of a module that carries `rnn`'s state: (*inputs, h0[, c0]) -> (logits, hn[, cn]), for a
    batch of 2 in the example; `axes` gives the dynamic axes of the inputs and of "logits"."""
    state = zero_state(rnn, 2)
    names, out = ["h0", "c0"][:len(state)], ["logits"] + ["hn", "cn"][:len(state)]
    axes = {**axes, **{name: {1: "batch"} for name in names + out[1:]}}
    return Graph(module, (*inputs, *state), [*input_names, *names], out, axes)


def language_model_step(model: nn.Module) -> Graph:
    """The graph of a language model over ids (`rnnkit.models.language.CharLM`): (ids (B, T), h0[, c0]) ->
    (logits (B, T, V), hn[, cn]); generation feeds one id (T = 1) and the state back."""
    ids = torch.zeros(2, 4, dtype=torch.long, device=model.head.weight.device)
    return carrying_state(StepWithState(model), model.rnn, (ids,), ["ids"],
                          {"ids": {0: "batch", 1: "time"}, "logits": {0: "batch", 1: "time"}})


def export_onnx(module: nn.Module, example_inputs, path, input_names, output_names, dynamic_axes=None,
                opset: int = OPSET, overwrite: bool = False) -> Path:
    """Export `module` in eval mode to an ONNX file at `path` and return the path.

    example_inputs: a tuple of tensors for module.forward (a bare rnnkit layer takes
    (input,) or (input, lengths)); dynamic_axes as torch.onnx.export's, e.g.
    {"input": {0: "batch", 1: "time"}}. Raises ValueError when the file exists (unless
    overwrite) or when the module holds something that cannot export.
    """
    from ..nn.layers import _Recurrent
    from ..nn.minimal import _MinimalRNN

    path = Path(path)
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists; refusing to overwrite it")
    was_training = module.training
    if isinstance(module, (_Recurrent, _MinimalRNN)):
        module = LayerForExport(module)
    example_inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    # minGRU/minLSTM: their step loop, as an ONNX Loop (ONNX has no logcumsumexp for the scan)
    minimal = {m: m.mode for m in module.modules() if isinstance(m, _MinimalRNN)}
    recurrent = [m for m in module.modules() if isinstance(m, _Recurrent)]
    module.eval()
    try:
        for m in minimal:
            m.mode, m._loop = "sequential", _minimal_loop(m)
        for m in recurrent:  # instance attributes over the class's methods, for the duration of the export
            m.forward, m.step = functools.partial(onnx_forward, m), functools.partial(_onnx_step, m)
        with torch.no_grad(), warnings.catch_warnings():
            # the TorchScript exporter and torch.jit.script are chosen on purpose (see the top of this
            # file); rnnkit's own input checks read lengths as Python values, which is harmless
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"rnnkit\.export")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"rnnkit\.layers")
            torch.onnx.export(module, example_inputs, str(path), input_names=list(input_names),
                              output_names=list(output_names), dynamic_axes=dynamic_axes or {},
                              opset_version=opset, dynamo=False)
    except (RuntimeError, torch.onnx.errors.OnnxExporterError) as error:
        raise ValueError(f"cannot export {type(module).__name__} to ONNX: {error}") from error
    finally:
        module.train(was_training)
        for m, mode in minimal.items():
            m.mode = mode
            vars(m).pop("_loop", None)  # the instance attribute set above; the class's method shows again
        for m in recurrent:
            vars(m).pop("forward", None), vars(m).pop("step", None)
    return path
