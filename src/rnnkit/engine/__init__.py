"""The engine: one step of each cell and its explicit backward (cells.py), the time loop with backpropagation
through time over any cell (loop.py), autocast's compute dtype per cell family (precision.py), the plan of
which implementation runs a call (dispatch.py), and the whole-sequence kernels as custom ops: the C++ ones (ops.py)
and the Triton ones (triton.py). It imports the kernels below it and nothing above it (rnnkit.nn, rnnkit.export, the recipes)."""
