"""The command line (`rnnkit ...`, main.py) and the speed benchmark behind `rnnkit bench` (bench.py)."""
from .main import main

__all__ = ["main"]
