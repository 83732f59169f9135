"""ONNX export of rnnkit's recurrent layers, for any batch size and sequence length.

`export_onnx` runs torch's exporter, `torch.onnx.export(..., dynamo=True)`: torch.export captures the model, onnxscript
writes the ONNX graph. For the duration of the export each rnnkit layer's forward and step are this module's (instance
attributes, removed after), which call one custom op per layer of the stack:

    rnnkit_onnx::layer              one layer of RNN/LSTM/GRU cells, all its directions
    rnnkit_onnx::linear_recurrence  minGRU/minLSTM's h_t = a_t * h_{t-1} + b_t (a and b come from the
                                    input alone and are computed before it, in the graph)

An op's eager implementation runs rnnkit's own engine (the layer's numbers); its fake implementation gives the shapes,
for any T and B; its translation (onnxscript, given to the exporter as `custom_translation_table`) writes
  - ONNX's own `RNN`, `GRU` or `LSTM` operator, one node per layer, when the cell maps to it:
    RNN tanh/relu/softsign, GRU in both reset conventions (`linear_before_reset`), LSTM with
    peepholes (input `P`), coupled input-forget gate (`input_forget`), softsign, any biases
    (forget_bias is only an init). `lengths=` becomes `sequence_lens`.
  - an ONNX `Loop` over time otherwise (LSTM with layer_norm or proj_size; minGRU/minLSTM), one per
    layer and direction; the backward direction reverses each sequence within its length
    (`ReverseSequence`). For a cell, nothing of its math is written here: torch's exporter traces the
    cell's own `project_input` and `step` once (`_traced_step`, one step at a small size, batch, time and
    input size dynamic), and that graph is inlined (`_inline`), its time-independent part (the input
    projection, the weights' transposes and splits) before the Loop, the rest as the Loop's body. The
    translation is generic over cells (tested with GRU and RNN cells too); a new cell or a changed
    equation needs no change here.
Either way the graph holds no trace-time T or B. Recurrent and inter-layer dropout are training
only: the graph is the inference model. Semantics are the layer's: outputs past a sequence's length
are zero, final states are those at its last valid step.

Weight layout (torch -> ONNX), written by the translation and folded into initializers after it: LSTM gates
i,f,g,o -> i,o,f,c; peepholes p_i,p_f,p_o -> P = p_i,p_o,p_f; coupled f,g,o -> i=-f,o,0,c with input_forget=1
(onnxruntime derives f = 1 - i, see _operator_layer); GRU r,z,n -> z,r,h; B = [b_ih, b_hh].

Shapes: B batch, T time, I input, H hidden, P = proj_size or H, L layers, D directions.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import itertools
import json
import logging
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..engine import loop
from ..engine.cells import GRUStep, LSTMStep, RNNStep, Step

OPSET = 18  # the opset torch's ONNX translations are written for (lower ones would be version-converted)
_CELLS = {cls.__name__: cls for cls in (RNNStep, LSTMStep, GRUStep)}
_ONNX_ACTIVATION = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "softsign": "Softsign"}
_INT32, _INT64 = 6, 7  # ONNX TensorProto.INT32 (the type of sequence_lens), INT64
_FOLD_LIMIT = 1 << 40  # elements: fold every reordering of the weights into initializers, whatever their size


def operator_for(step: Step) -> str:
    """The ONNX operator a cell exports to: 'RNN', 'GRU', 'LSTM', or 'Loop' when none fits."""
    if isinstance(step, LSTMStep):
        return "Loop" if step.layer_norm or step.proj_size else "LSTM"
    if isinstance(step, GRUStep):
        return "GRU"
    if isinstance(step, RNNStep):
        return "RNN"
    raise ValueError(f"no ONNX export for cell {step!r}")


def _spec(step: Step) -> str:
    """A cell as the string attribute of the op: its class and fields (rebuilt by _cell)."""
    return json.dumps({"cell": type(step).__name__, **dataclasses.asdict(step)}, sort_keys=True)


def _cell(spec: str) -> Step:
    fields = json.loads(spec)
    return _CELLS[fields.pop("cell")](**fields)


def _per_direction(step: Step, params, directions: int) -> list[dict]:
    """The op's flat parameter list as one {generic name: tensor} per direction (the layer's order)."""
    names = list(step.param_shapes(1))
    return [dict(zip(names, params[d * len(names):(d + 1) * len(names)])) for d in range(directions)]


# -- the ops ---------------------------------------------------------------------------------------

@torch.library.custom_op("rnnkit_onnx::layer", mutates_args=())
def _layer_op(x: Tensor, params: list[Tensor], lengths: Optional[Tensor], h0: Optional[Tensor],
              c0: Optional[Tensor], cell: str, directions: int) -> list[Tensor]:
    """One layer of an rnnkit stack, every direction: x (T, B, I) -> [out (T, B, D*P), h_n (D, B, P)(, c_n (D, B, H))].

    params: each direction's parameters in turn, in the cell's order (Step.param_shapes); lengths (B,) or None;
    h0, c0 (D, B, .) or None for zeros; cell: _spec of the cell. Runs on rnnkit's engine, as the layer does.
    """
    step, T, B = _cell(cell), x.shape[0], x.shape[1]
    states = tuple(x.new_zeros(directions, B, size) for size in step.state_sizes()) if h0 is None \
        else (h0, c0)[:step.num_states]
    sizes = perm = None
    if lengths is not None:  # the engine's layout: longest first, batch_sizes[t] rows active at step t
        perm = torch.sort(lengths, descending=True, stable=True)[1]
        x, lengths, states = x[:, perm], lengths[perm], tuple(s[:, perm] for s in states)
        sizes = loop.batch_sizes_from_lengths(lengths.tolist(), T)
    outs, finals = [], []
    for d, p in enumerate(_per_direction(step, params, directions)):
        inp = loop.reverse_padded(x, lengths) if d else x
        out, final = loop.run(step, step.project_input(inp, p), tuple(s[d] for s in states), p, sizes)
        outs.append(loop.reverse_padded(out, lengths) if d else out)
        finals.append(final)
    results = [torch.cat(outs, 2), *(torch.stack(f) for f in zip(*finals))]
    if perm is not None:
        unperm = torch.argsort(perm)
        results = [r[:, unperm] for r in results]
    return results


@_layer_op.register_fake
def _(x, params, lengths, h0, c0, cell, directions):
    step, T, B = _cell(cell), x.shape[0], x.shape[1]
    return [x.new_empty(T, B, directions * step.output_size), *(x.new_empty(directions, B, size)
                                                               for size in step.state_sizes())]


@torch.library.custom_op("rnnkit_onnx::linear_recurrence", mutates_args=())
def _linear_recurrence_op(a: Tensor, b: Tensor, h0: Tensor, lengths: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """h_t = a_t * h_{t-1} + b_t: a, b (T, B, H), h0 (B, H), lengths (B,) or None -> out (T, B, H), zero past each
    length, and h_n, each row's state at its last valid step (the loop of _MinimalRNN._loop)."""
    h, outs = h0, []
    for t in range(a.shape[0]):
        h_new = torch.addcmul(b[t], a[t], h)  # (B, H)
        valid = None if lengths is None else (lengths > t).unsqueeze(1)  # (B, 1); an ended row keeps its state
        h = h_new if valid is None else torch.where(valid, h_new, h)
        outs.append(h if valid is None else h * valid)
    return (torch.stack(outs) if outs else a.new_zeros(a.shape)), h.clone()


@_linear_recurrence_op.register_fake
def _(a, b, h0, lengths):
    return a.new_empty(a.shape), h0.new_empty(h0.shape)


# -- the layers' forward while exporting -----------------------------------------------------------

def _export_lengths(lengths):
    if lengths is not None and (not isinstance(lengths, Tensor) or lengths.dim() != 1):
        raise ValueError(f"lengths must be a 1-D integer tensor for ONNX export; got {lengths!r}")
    return lengths


def onnx_forward(layer, input, hx=None, lengths=None):
    """`layer.forward` during ONNX export: the same inputs, outputs and semantics, one op per layer."""
    if isinstance(input, PackedSequence):
        raise ValueError("ONNX export takes a padded tensor and lengths=, not a PackedSequence")
    x, batched = layer._check_input(input)  # (T, B, I)
    lengths = _export_lengths(lengths)
    states = (None, None) if hx is None else (*layer._check_state(hx, x.shape[1], batched, x), None)
    D, spec, finals = layer.num_directions, _spec(layer.cell), []
    for l in range(layer.num_layers):
        rows = slice(l * D, (l + 1) * D)
        params = [w for d in range(D) for w in layer._weights(l * D + d, x.dtype).values()]
        x, *final = _layer_op(x, params, lengths, *(None if s is None else s[rows] for s in states[:2]), spec, D)
        finals.append(final)  # x: (T, B, D*P), the next layer's input
    finals = tuple(torch.cat(f) for f in zip(*finals))  # each (D*L, B, .)
    if not batched:
        return x.squeeze(1), layer._pack_state(tuple(s.squeeze(1) for s in finals))
    return (x.transpose(0, 1) if layer.batch_first else x), layer._pack_state(finals)


def _onnx_step(layer, x_t, hx=None):
    """`layer.step` during ONNX export: a one-step sequence."""
    output, final = onnx_forward(layer, x_t.unsqueeze(1 if layer.batch_first else 0), hx)
    return output.squeeze(1 if layer.batch_first else 0), final


def _minimal_forward(layer, input, hx=None, lengths=None):
    """minGRU/minLSTM's forward during export: the step loop (their parallel scan needs logcumsumexp, which ONNX
    lacks), lengths unchecked (their values are not known while tracing)."""
    x, batched = layer._check_input(input)  # (T, B, I)
    out, h_n = layer._cast_and_run(x, hx, batched, _export_lengths(lengths), use_scan=False)
    if not batched:
        return out.squeeze(1), h_n.squeeze(1)
    return (out.transpose(0, 1) if layer.batch_first else out), h_n


def _minimal_loop(layer, xp, h, valid, lengths):
    """A stand-in for `_MinimalRNN._loop` (same arguments and results) during export."""
    a, b = layer.cell.coefficients(xp)  # (T, B, H) each
    h = torch.zeros_like(b[0]) if h is None else h
    return _linear_recurrence_op(a, b, h, lengths)


# -- the translations (onnxscript) -----------------------------------------------------------------

def _onnxscript():
    import onnx_ir as ir
    import onnxscript
    from onnxscript import opset18 as op

    return onnxscript, op, ir


def _recorded_nodes() -> list:
    """The list where the exporter collects the translation's nodes (appending an ir.Node records it)."""
    onnxscript, _, _ = _onnxscript()
    nodes = getattr(onnxscript.evaluator.default(), "nodes", None)
    if not isinstance(nodes, list):
        raise RuntimeError(f"torch {torch.__version__}'s ONNX exporter records nodes differently; rnnkit's Loop "
                           "translation needs updating")
    return nodes


def _record(op_type: str, inputs: list, num_outputs: int, **attributes):
    """A node with `num_outputs` outputs, recorded where the exporter collects the translation's nodes: an onnxscript
    op call gives a variadic output (Loop's) a single value."""
    _, _, ir = _onnxscript()
    node = ir.Node("", op_type, inputs, ir.convenience.convert_attributes(attributes), num_outputs=num_outputs)
    _recorded_nodes().append(node)
    return node.outputs


def _blocks(t, count: int, order):
    """t's `count` equal blocks along axis 0 reordered: `order` holds a block index, -1 - index for the
    negated block, or None for a block of zeros."""
    _, op, _ = _onnxscript()
    n = t.shape[0] // count
    parts = [op.Slice(t, [k * n], [(k + 1) * n], [0]) for k in range(count)]
    zeros = lambda like: op.CastLike(op.ConstantOfShape(op.Shape(like)), like)  # noqa: E731
    return op.Concat(*[zeros(parts[0]) if k is None else parts[k] if k >= 0 else op.Neg(parts[-1 - k])
                       for k in order], axis=0)


def _stacked(p_dirs: list[dict], name: str, count: int, order):
    """One parameter of every direction in ONNX's layout, stacked: (D, ...)."""
    _, op, _ = _onnxscript()
    return op.Concat(*[op.Unsqueeze(_blocks(p[name], count, order), [0]) for p in p_dirs], axis=0)


def _layer_onnx(x, params, lengths, h0, c0, cell: str, directions: int):
    step = _cell(cell)
    p_dirs = _per_direction(step, params, directions)
    if operator_for(step) == "Loop":
        return _loop_layer(step, x, p_dirs, lengths, h0, c0)
    return _operator_layer(step, x, p_dirs, lengths, h0, c0)


def _operator_layer(step: Step, x, p_dirs: list[dict], lengths, h0, c0):
    """One layer as ONNX's RNN, GRU or LSTM node: [out (T, B, D*H), h_n (D, B, H)(, c_n)]."""
    _, op, _ = _onnxscript()
    G, D = step.gates, len(p_dirs)
    if isinstance(step, LSTMStep):
        # coupled: onnxruntime's input_forget computes f = 1 - i, so i carries -(f's pre-activation):
        # i = sigmoid(-a_f) = 1 - f, f = 1 - i; ONNX's own f block is unused (zeros)
        order, peep_order = ((-1, 2, None, 1), (-1, 1, None)) if step.coupled else ((0, 3, 1, 2), (0, 2, 1))
        acts, attrs = ("sigmoid", step.activation, step.activation), {"input_forget": int(step.coupled)}
        node = op.LSTM
    elif isinstance(step, GRUStep):
        order, acts, attrs, node = (1, 0, 2), ("sigmoid", step.activation), \
            {"linear_before_reset": int(step.reset_after)}, op.GRU
    else:
        order, acts, attrs, node = (0,), (step.nonlinearity,), {}, op.RNN
    W, R = _stacked(p_dirs, "weight_ih", G, order), _stacked(p_dirs, "weight_hh", G, order)  # (D, 4H|3H|H, I|H)
    B = None
    if step.bias:  # (D, 2*...): [b_ih, b_hh]; ONNX's default without it is zeros
        B = op.Concat(_stacked(p_dirs, "bias_ih", G, order), _stacked(p_dirs, "bias_hh", G, order), axis=1)
    inputs = [x, W, R, B, None if lengths is None else op.Cast(lengths, to=_INT32), h0]
    if isinstance(step, LSTMStep):
        inputs += [c0, _stacked(p_dirs, "weight_peephole", G - 1, peep_order) if step.peephole else None]
    y, *finals = node(*inputs, hidden_size=step.hidden_size, direction="bidirectional" if D == 2 else "forward",
                      activations=[_ONNX_ACTIVATION[a] for a in acts] * D, **attrs)
    # Y (T, D, B, H) -> (T, B, D*H), the next layer's input
    return [op.Reshape(op.Transpose(y, perm=[0, 2, 1, 3]), [0, 0, -1]), *finals]


class _OneStep(nn.Module):
    """What a Loop over time needs of a cell, as one module for torch's exporter: forward(x, xp_t, state, params)
    -> (xp, state'), xp = cell.project_input(x, p) for the whole sequence (T, B, I) -> (T, B, G*H), state' =
    cell.step(xp_t, state, p)'s new state from one step's xp_t (B, G*H) and state ((B, P)(, (B, H)))."""

    def __init__(self, step: Step, names: list):
        super().__init__()
        self.cell, self.names = step, names

    def forward(self, x, xp_t, state: list, params: list):
        p = dict(zip(self.names, params))
        return self.cell.project_input(x, p), self.cell.step(xp_t, tuple(state), p)[0]


_TRACE_SIZES = {"time": 3, "batch": 2, "input": 5}  # distinct, and > 1 (torch.export fixes a size of 0 or 1)
# a number for each inlined copy of a traced step, its names' prefix: unique in any graph (a translation sees
# only its inputs, which two layers may share)
_LOOPS = itertools.count()


def _torch_dtype(dtype):
    """The torch dtype of an ONNX (onnx_ir) floating-point type."""
    _, _, ir = _onnxscript()
    dtypes = {ir.DataType.FLOAT: torch.float32, ir.DataType.DOUBLE: torch.float64, ir.DataType.FLOAT16: torch.float16,
              ir.DataType.BFLOAT16: torch.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"no ONNX Loop export for input dtype {dtype}")
    return dtypes[dtype]


@functools.lru_cache(maxsize=None)
def _traced_step(cell: str, dtype: torch.dtype):
    """The ONNX graph of _OneStep for the cell (a _spec), traced by torch's exporter from the cell's own
    project_input and step at _TRACE_SIZES, time, batch and input size dynamic: inputs x, xp_t, *state,
    *params (the cell's order), outputs xp, *state'. One trace per cell and dtype in a process (a layer's
    directions and layers share it, ~1 s on a CPU); the caller clones it.

    Why a trace and not onnxscript written for the cell: the Loop then computes what the cell computes, by
    construction, for every variant, present and future (a second hand-written copy of the equations drifts).
    It runs inside the enclosing export's translation, after torch.export has captured the model, so it is
    an ordinary export of its own."""
    step = _cell(cell)
    T, B, I = _TRACE_SIZES.values()
    shapes, wider = step.param_shapes(I), step.param_shapes(I + 1)
    dims = {name: torch.export.Dim(name) for name in _TRACE_SIZES}
    params = [torch.zeros(shape, dtype=dtype) for shape in shapes.values()]
    args = (torch.zeros(T, B, I, dtype=dtype), torch.zeros(B, step.gates * step.hidden_size, dtype=dtype),
            [torch.zeros(B, size, dtype=dtype) for size in step.state_sizes()], params)
    dynamic = ({0: dims["time"], 1: dims["batch"], 2: dims["input"]}, {0: dims["batch"]},
               [{0: dims["batch"]}] * step.num_states,
               [{a: dims["input"] for a, (n, m) in enumerate(zip(shapes[name], wider[name])) if n != m}
                for name in shapes])  # the axes that follow the input size (weight_ih's second)
    # the cell's step takes its C++ kernel only where no tracer or compiler watches (fused.direct): here it
    # runs as torch ops, which the exporter translates
    with torch.no_grad():
        program = torch.export.export(_OneStep(step, list(shapes)), args, dynamic_shapes=dynamic)
    model = torch.onnx.export(program, dynamo=True, opset_version=OPSET, optimize=False, verbose=False).model
    import onnxscript.optimizer

    onnxscript.optimizer.optimize(model)  # e.g. chunk's SplitToSequence -> Split, while its sizes are known
    graph = model.graph
    if len(graph.inputs) != 2 + step.num_states + len(shapes):
        raise RuntimeError(f"the traced step of {cell} has inputs {[v.name for v in graph.inputs]}")
    foreign = {(n.domain, n.op_type) for n in graph.all_nodes() if n.domain not in ("", "ai.onnx")}
    if foreign:
        raise RuntimeError(f"the traced step of {cell} holds nodes outside ONNX's default domain {foreign}; "
                           "rnnkit's Loop translation cannot inline them")
    return graph


def _inline(graph, values: list, prefix: str):
    """A clone of `graph`'s nodes with its inputs replaced by `values` where one is given: (hoisted, body,
    placeholders, outputs). body holds the nodes that depend on an input left as None (a placeholder, the
    Loop body's: its value is set later), hoisted the others (time-independent: emitted once, outside the
    Loop). Every value and node name gets `prefix` (unique in the model), symbolic shapes are dropped (their
    names are the trace's)."""
    _, _, ir = _onnxscript()
    graph = graph.clone()
    constants = [ir.Node("", "Constant", [], [ir.AttrTensor("value", v.const_value)], outputs=[ir.Value(name=name)])
                 for name, v in graph.initializers.items()]
    for node, name in zip(constants, list(graph.initializers)):
        ir.convenience.replace_all_uses_with(graph.initializers[name], node.outputs[0])
    placeholders = [v for v, given in zip(graph.inputs, values) if given is None]
    for v, given in zip(graph.inputs, values):
        if given is not None:
            ir.convenience.replace_all_uses_with(v, given)
    outputs, nodes = list(graph.outputs), list(graph)
    graph.outputs.clear()
    graph.remove(nodes)
    looped, hoisted, body = set(placeholders), list(constants), []
    for node in nodes:  # in topological order
        node.name = f"{prefix}{node.name or node.op_type}"
        for v in node.outputs:
            v.name = f"{prefix}{v.name}"
            if v.shape is not None and not all(isinstance(d, int) for d in v.shape):
                v.shape = None
        if any(v in looped for v in node.inputs if v is not None):
            body.append(node)
            looped.update(node.outputs)
        else:
            hoisted.extend(_as_slices(node) or [node])
    return hoisted, body, placeholders, outputs


def _as_slices(node) -> list:
    """A Split of statically known sizes as one Slice per output, else []. The exporter's optimizer folds only
    nodes of one output into initializers: a hoisted Split of the weights (a cell's `chunk` of its peepholes)
    would stay in the graph, and the optimizer would warn of it at every export."""
    _, _, ir = _onnxscript()
    if node.op_type != "Split" or node.inputs[0].shape is None:
        return []
    axis = node.attributes.get_int("axis", 0)
    size = node.inputs[0].shape[axis]
    split = node.inputs[1] if len(node.inputs) > 1 else None
    if split is None:  # num_outputs equal parts, the last smaller (ONNX's Split)
        n = len(node.outputs)
        part = -(-size // n) if isinstance(size, int) else None
        sizes = None if part is None else [part] * (n - 1) + [size - part * (n - 1)]
    else:
        constant = split.const_value
        if constant is None and split.producer() is not None and split.producer().op_type == "Constant":
            constant = split.producer().attributes["value"].as_tensor()
        sizes = None if constant is None else [int(k) for k in constant.numpy().reshape(-1)]
    if sizes is None:
        return []
    slices, start = [], 0
    for n, out in zip(sizes, node.outputs):
        bounds = [ir.Value(name=f"{out.name}_{b}") for b in ("start", "end", "axis")]
        slices += [ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.tensor([v], dtype=ir.DataType.INT64))],
                           outputs=[b]) for b, v in zip(bounds, (start, start + n, axis))]
        slices.append(ir.Node("", "Slice", [node.inputs[0], *bounds], name=f"{node.name}_{len(slices)}"))
        ir.convenience.replace_all_uses_with(out, slices[-1].outputs[0])
        slices[-1].outputs[0].name = out.name
        start += n
    node.resize_inputs(0)  # the Split is dropped
    return slices


def _loop_layer(step: Step, x, p_dirs: list[dict], lengths, h0, c0):
    """One layer as one Loop over time per direction (LSTM with layer norm or projection: what ONNX's LSTM
    lacks), made from the cell's own code (_traced_step): the input projection hoisted out of the Loop, its body
    one step; [out (T, B, D*P), h_n (D, B, P)(, c_n (D, B, H))]."""
    _, op, _ = _onnxscript()
    T = op.Shape(x, start=0, end=1)  # (1,)
    batch = op.Shape(x, start=1, end=2)  # (1,)
    lengths = None if lengths is None else op.Cast(lengths, to=_INT64)
    seq_lens = op.Expand(T, batch) if lengths is None else lengths  # (B,), for ReverseSequence
    traced = _traced_step(_spec(step), _torch_dtype(x.dtype))
    outs, finals = [], [[] for _ in range(step.num_states)]
    for d, p in enumerate(p_dirs):
        inp = op.ReverseSequence(x, seq_lens, batch_axis=1, time_axis=0) if d else x
        hoisted, body, placeholders, (xp, *new) = _inline(
            traced, [inp, None, *[None] * step.num_states, *p.values()], f"rnnkit_loop{next(_LOOPS)}_")
        _recorded_nodes().extend(hoisted)  # xp (T, B, G*H) and the weights' reshapes, once per direction
        state = [op.Gather(s, d, axis=0) if s is not None else
                 op.CastLike(op.ConstantOfShape(op.Concat(batch, op.Constant(value_ints=[size]), axis=0)), x)
                 for s, size in zip((h0, c0), step.state_sizes())]  # (B, P)(, (B, H))

        def one_step(o, t, *carried, xp=xp, body=body, placeholders=placeholders, new=new):
            _, _, ir = _onnxscript()
            ir.convenience.replace_all_uses_with(placeholders, [o.Gather(xp, t, axis=0), *carried])
            for node in body:
                o.builder.add_node(node)
            return new

        out, *final = _loop(x, one_step, op.Squeeze(T, [0]), state, lengths)
        outs.append(op.ReverseSequence(out, seq_lens, batch_axis=1, time_axis=0) if d else out)
        for f, s in zip(finals, final):
            f.append(op.Unsqueeze(s, [0]))
    return [op.Concat(*outs, axis=2), *(op.Concat(*f, axis=0) for f in finals)]


def _loop(like, body, trip_count, state: list, lengths):
    """An ONNX Loop of `trip_count` steps over the carried `state` (h first): body(op, t, *state) -> new state.
    Past a row's length its state stays and its output (h) is zero. Returns out (T, B, P), then the final state."""
    onnxscript, op, ir = _onnxscript()

    def step(o, t, cond, *carried):
        new = body(o, t, *carried)
        if lengths is None:
            return (o.Identity(cond), *new, o.Identity(new[0]))
        valid = o.Unsqueeze(o.Less(t, lengths), [1])  # (B, 1)
        kept = [o.Where(valid, n, s) for n, s in zip(new, carried)]
        return (o.Identity(cond), *kept, o.Where(valid, new[0], o.CastLike(0.0, new[0])))

    scalar = lambda name, dtype: ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape([]))  # noqa: E731
    tensor = lambda name: ir.Value(name=name, type=ir.TensorType(like.dtype))  # noqa: E731
    names = [f"state_{k}" for k in range(len(state))]
    graph = onnxscript.build_graph(step, [scalar("t", ir.DataType.INT64), scalar("cond", ir.DataType.BOOL),
                                          *map(tensor, names)],
                                   [ir.Value(name="cond_out"), *(ir.Value(name=f"{n}_out") for n in names),
                                    ir.Value(name="output")], opset_imports={"": OPSET}, name="time_step")
    *final, out = _record("Loop", [trip_count, None, *state], len(state) + 1, body=graph)
    return (out, *final)


def _linear_recurrence_onnx(a, b, h0, lengths):
    _, op, _ = _onnxscript()
    T = op.Squeeze(op.Shape(a, start=0, end=1), [0])
    lengths = None if lengths is None else op.Cast(lengths, to=_INT64)
    body = lambda o, t, h: (o.Add(o.Mul(o.Gather(a, t, axis=0), h), o.Gather(b, t, axis=0)),)  # noqa: E731
    out, h_n = _loop(a, body, T, [h0], lengths)
    return out, h_n


def _translations() -> dict:
    return {torch.ops.rnnkit_onnx.layer.default: _layer_onnx,
            torch.ops.rnnkit_onnx.linear_recurrence.default: _linear_recurrence_onnx}


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


def _dynamic_shapes(module: nn.Module, example_inputs: tuple, input_names, dynamic_axes: dict) -> dict:
    """torch.export's dynamic_shapes, by forward's parameter names, from dynamic_axes ({input name: {axis: name}} or
    {input name: [axis, ...]}), the names given to the example inputs' tensors in order (nested tuples and *args
    flattened, as the graph's inputs are)."""
    names, seen = iter(input_names), set()

    def spec(value):
        if isinstance(value, (tuple, list)):
            return type(value)(spec(v) for v in value)
        if not isinstance(value, Tensor):
            return None
        name = next(names, None)
        axes = dynamic_axes.get(name) or {}
        axes = axes if isinstance(axes, dict) else {a: f"{name}_{a}" for a in axes}
        # an axis name met before is the same dimension: the exporter names it once (and warns at a second name)
        result = {a: torch.export.Dim.DYNAMIC if label in seen else label for a, label in axes.items()}
        seen.update(axes.values())
        return result or None

    bound = inspect.signature(module.forward).bind(*example_inputs)
    return {name: spec(value) for name, value in bound.arguments.items()}


@contextlib.contextmanager
def export_forms(module: nn.Module):
    """`module` in eval mode, each rnnkit layer's forward and step (minGRU/minLSTM: forward and step loop) this
    module's, for the duration of the block; every module's mode and attributes are restored after."""
    from ..nn.layers import _Recurrent
    from ..nn.minimal import _MinimalRNN

    forms = {}
    for m in module.modules():
        if isinstance(m, _MinimalRNN):
            forms[m] = {"forward": functools.partial(_minimal_forward, m), "_loop": functools.partial(_minimal_loop, m)}
        elif isinstance(m, _Recurrent):
            forms[m] = {"forward": functools.partial(onnx_forward, m), "step": functools.partial(_onnx_step, m)}
    modes = {m: m.training for m in module.modules()}
    saved = {m: {name: vars(m)[name] for name in names if name in vars(m)} for m, names in forms.items()}
    module.eval()
    try:
        for m, attributes in forms.items():
            vars(m).update(attributes)  # instance attributes over the class's methods
        yield module
    finally:
        for m, attributes in forms.items():
            for name in attributes:
                vars(m).pop(name, None)
            vars(m).update(saved[m])
        for m, training in modes.items():
            m.training = training


class _TorchvisionNote(logging.Filter):
    """torch's exporter logs a warning per torchvision op it finds no torchvision for; rnnkit uses none."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("torchvision is not installed")


@contextlib.contextmanager
def _without_torchvision_notes():
    logger, note = logging.getLogger("torch.onnx._internal.exporter._registration"), _TorchvisionNote()
    logger.addFilter(note)
    try:
        yield
    finally:
        logger.removeFilter(note)


def export_onnx(module: nn.Module, example_inputs, path, input_names, output_names, dynamic_axes=None,
                opset: int = OPSET, overwrite: bool = False) -> Path:
    """Export `module` in eval mode to an ONNX file at `path` and return the path.

    example_inputs: a tuple of tensors for module.forward (a bare rnnkit layer takes
    (input,) or (input, lengths)); dynamic_axes as torch.onnx.export's, e.g.
    {"input": {0: "batch", 1: "time"}} (an output's axes follow from the inputs'). Raises ValueError
    when the file exists (unless overwrite) or when the module holds something that cannot export.
    Gradients may be on; the module is left as it was (modes, methods).
    """
    from ..nn.layers import _Recurrent
    from ..nn.minimal import _MinimalRNN

    path = Path(path)
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists; refusing to overwrite it")
    if isinstance(module, (_Recurrent, _MinimalRNN)):
        module = LayerForExport(module)
    example_inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    try:
        with export_forms(module), _without_torchvision_notes(), warnings.catch_warnings():
            # torch 2.13's run_decompositions deep-copies torch's own pytree LeafSpec singleton, and the copy warns
            # that LeafSpec is deprecated, at every export: nothing the caller can change (torch.utils._pytree
            # silences the same warning where it makes the singleton)
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                    category=FutureWarning)
            program = torch.onnx.export(module, example_inputs, dynamo=True, input_names=list(input_names),
                                        output_names=list(output_names), opset_version=opset,
                                        dynamic_shapes=_dynamic_shapes(module, example_inputs, input_names,
                                                                       dynamic_axes or {}),
                                        custom_translation_table=_translations(), optimize=False, verbose=False)
        import onnxscript.optimizer

        # the exporter's own optimisation, with no size limit on folding: the weights reordered for ONNX's
        # operators become initializers, however large
        onnxscript.optimizer.optimize(program.model, input_size_limit=_FOLD_LIMIT, output_size_limit=_FOLD_LIMIT)
        program.save(path, external_data=False)
    except torch.onnx.errors.OnnxExporterError as error:
        raise ValueError(f"cannot export {type(module).__name__} to ONNX: {error}") from error
    return path
