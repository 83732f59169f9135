"""A from-scratch NumPy reference for recurrent networks: the forward pass and hand-derived BPTT.

NumPy only: no module here imports torch or rnnkit's torch code, only numpy, the standard
library and each other. Read it top to bottom, in this order:

    cells.py      one time step of RNN, LSTM and GRU (and their variants): forward and backward
    recurrent.py  the time loop and backpropagation through time; stacking, bidirection
    losses.py     a linear softmax head: many-to-one and many-to-many cross-entropy
    training.py   truncated BPTT, clipping by global norm, Adagrad and Adam
    chardemo.py   a character-level language model trained with all of the above

    net = Recurrent(LSTMCell(H, peephole=True), I, num_layers=2, bidirectional=True)
    params = net.init_params(np.random.default_rng(0))
    out, final, cache = net.forward(params, x)             # x (T, B, I) -> out (T, B, D*H)
    loss, d_out, d_head = many_to_many(head, out, targets)
    grads, d_x, d_state0 = net.backward(params, cache, d_out)

Parameters are a dict name -> ndarray with rnnkit's (and torch.nn's) names, shapes and gate
orders, so a layer's weights convert both ways:

    params = {k: v.detach().numpy() for k, v in layer.state_dict().items()}
    layer.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})

`import rnnkit.reference` runs rnnkit's own __init__, which imports torch; on a machine without
torch, put src/rnnkit on sys.path and `import reference`. docs/bptt.md walks through the
equations beside this code.

Shapes: B batch, T time, I input, H hidden, G gates, L layers, D directions, V vocabulary.
"""
from .cells import ACTIVATIONS, GRUCell, LSTMCell, RNNCell, sigmoid, softsign
from .losses import cross_entropy, init_head, many_to_many, many_to_one, softmax
from .recurrent import Recurrent, run_backward, run_forward
from .training import Adagrad, Adam, Window, clip_grad_norm, global_norm, truncated_bptt

__all__ = [
    "ACTIVATIONS", "GRUCell", "LSTMCell", "RNNCell", "sigmoid", "softsign",
    "cross_entropy", "init_head", "many_to_many", "many_to_one", "softmax",
    "Recurrent", "run_backward", "run_forward",
    "Adagrad", "Adam", "Window", "clip_grad_norm", "global_norm", "truncated_bptt",
]
