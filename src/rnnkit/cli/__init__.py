"""The command line (`rnnkit ...`, commands.py) and the speed benchmark behind `rnnkit bench` (bench.py)."""
from .commands import main

__all__ = ["main"]
