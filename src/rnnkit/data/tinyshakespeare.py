"""Tiny Shakespeare: char-rnn's one-file corpus, its checksum and mirrors, `download`, and `path` to find it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from . import store
from .store import DataNotFoundError, data_root


class FileSpec(NamedTuple):
    sha256: str
    size: int  # bytes


NAME = "input.txt"
FILES = {NAME: FileSpec("86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", 1115394)}
COMMIT = "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e"  # karpathy/char-rnn; pinned so the bytes cannot drift
# Base URLs, tried in order, to which NAME is appended: GitHub's raw files, then jsDelivr's CDN copy of them.
MIRRORS = [
    f"https://raw.githubusercontent.com/karpathy/char-rnn/{COMMIT}/data/tinyshakespeare/",
    f"https://cdn.jsdelivr.net/gh/karpathy/char-rnn@{COMMIT}/data/tinyshakespeare/",
]


def download(root: str | os.PathLike | None = None, mirrors: list[str] | None = None, log=print) -> Path:
    """Download input.txt into `data_root(root) / "tinyshakespeare"`, sha256-verified; returns that directory."""
    directory = data_root(root) / "tinyshakespeare"
    urls = store.mirror_urls(MIRRORS if mirrors is None else mirrors, NAME)
    store.download(urls, directory / NAME, FILES[NAME].sha256, log=log)
    return directory


def path(root: str | os.PathLike | None = None) -> Path:
    """input.txt in `data_root(root) / "tinyshakespeare"`, else in `data_root(root)`; else DataNotFoundError."""
    base = data_root(root)
    searched = [base / "tinyshakespeare" / NAME, base / NAME]  # --data-dir may name the data dir or its folder
    for candidate in searched:
        if candidate.is_file():
            return candidate
    raise DataNotFoundError(
        f"Tiny Shakespeare ({NAME}) not found. Looked for: {', '.join(map(str, searched))}. Get it with "
        f"`rnnkit data download tinyshakespeare [--data-dir DIR]`, or pass --data-dir / set RNNKIT_DATA "
        f"to a directory that holds it.")
