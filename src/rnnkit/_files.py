"""Files and directories rnnkit writes for the user get the mode an ordinary open() or mkdir() would give them
(0o666 or 0o777, less the umask), also when they were made through a private temporary (tempfile's mkstemp and
mkdtemp, and safetensors' writer, make them 0600 or 0700, and a rename keeps that mode)."""
from __future__ import annotations

import os
import stat
from pathlib import Path


def umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_mode(directory: bool = False) -> int:
    """The mode open() (0o666) or mkdir() (0o777) gives a new file or directory under the current umask."""
    return (0o777 if directory else 0o666) & ~umask()


def make_ordinary(path: str | os.PathLike) -> None:
    """Give `path` (a file or directory rnnkit created) the mode an ordinary open() or mkdir() would have."""
    path = Path(path)
    mode = ordinary_mode(directory=path.is_dir())
    if stat.S_IMODE(path.stat().st_mode) != mode:
        os.chmod(path, mode)
