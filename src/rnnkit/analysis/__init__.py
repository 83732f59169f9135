"""Plots of training runs: learning curves, gradient clipping, confusion matrices, image grids."""
