"""The engine: one step of each cell and its explicit backward (cells.py), the time loop with backpropagation
through time over any cell (loop.py), autocast's compute dtype per cell family (precision.py), the choice of
which implementation runs a call (dispatch.py), and the cell whose whole-sequence call runs the Triton kernels
(triton.py). It imports the kernels below it and nothing above it (rnnkit.nn, rnnkit.export, the recipes)."""
