"""Where data sets live (`data_root`) and a download that tries mirrors in order and keeps only sha256-verified bytes."""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import secrets
import sys
import urllib.error
import urllib.request
from pathlib import Path

CHUNK = 1 << 20
USER_AGENT = "rnnkit-data/1 (python urllib)"  # some mirrors refuse urllib's default agent


class DataError(ValueError):
    """A data file is present but corrupt or invalid; the message names the file and the problem."""


class DataNotFoundError(FileNotFoundError):
    """Data files are missing; the message says where they were looked for and how to get them."""


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The data directory: `explicit`, else $RNNKIT_DATA, else the user cache directory (not created).

    The cache directory is $XDG_CACHE_HOME/rnnkit or ~/.cache/rnnkit; on Windows %LOCALAPPDATA%\\rnnkit.
    An empty `explicit` or environment variable counts as unset, as shells and configs often pass "".
    """
    if explicit is not None and os.fspath(explicit):
        return Path(explicit).expanduser()
    if os.environ.get("RNNKIT_DATA"):
        return Path(os.environ["RNNKIT_DATA"]).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local"
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rnnkit"


def sha256_of(path: str | os.PathLike) -> str:
    """The hex sha256 of a file, read in chunks so large files need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def mirror_urls(mirrors: list[str], name: str) -> list[str]:
    """The URL of the file `name` under each base URL in `mirrors`, in order; ValueError for a bare string."""
    if isinstance(mirrors, str):
        raise ValueError(f"mirrors must be a list of base URLs, got the string {mirrors!r}")
    return [base.rstrip("/") + "/" + name for base in mirrors]


def download(urls: list[str], dest: str | os.PathLike, sha256: str, log=print, timeout: float = 60) -> Path:
    """Make `dest` a verified copy of the file with hash `sha256`, fetching it from the first of `urls` that works.

    A file already at `dest` with the right hash is kept as it is. Otherwise each URL is streamed to a
    temporary file beside `dest`, hashed, and moved into place with `os.replace` only if the hash
    matches, so `dest` never holds partial or unverified bytes; a wrong file already at `dest` is
    replaced only once a verified copy is in hand. Failures are logged and the next URL is tried.
    If every URL fails, raises DataError when any of them served bytes with the wrong hash, else
    OSError; either names the file and each URL with why it failed. No temporary file is left behind.
    """
    if isinstance(urls, (str, bytes)) or not urls:
        raise ValueError(f"urls must be a non-empty list of URLs, got {urls!r}")
    sha256 = sha256.lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    dest = Path(dest)
    stale = ""
    if dest.is_file():
        got = sha256_of(dest)
        if got == sha256:
            log(f"{dest}: present, sha256 verified")
            return dest
        stale = f"; the existing {dest} (sha256 {got}) was left as it is and is not valid"
        log(f"{dest}: sha256 {got} is not the expected {sha256}; fetching a verified copy")
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures, bad_hash = [], False
    for url in urls:
        log(f"{dest.name}: downloading {url}")
        try:
            got = _fetch(url, dest, sha256, timeout)
        except (OSError, http.client.HTTPException, ValueError) as e:  # ValueError: a malformed URL
            failures.append(f"{url}: {_reason(e)}")
        else:
            if got == sha256:
                log(f"{dest}: downloaded and sha256 verified")
                return dest
            bad_hash = True
            failures.append(f"{url}: sha256 mismatch, expected {sha256}, got {got}")
        log(f"{dest.name}: {failures[-1]}")
    tried = "\n  ".join(failures)
    message = f"could not download a verified {dest} from any of {len(urls)} URL(s){stale}:\n  {tried}"
    raise DataError(message) if bad_hash else OSError(message)


def _fetch(url: str, dest: Path, sha256: str, timeout: float) -> str:
    """Stream `url` to a temporary file beside `dest`; move it onto `dest` if its hash is `sha256`. Returns the hash."""
    # Same directory as dest, so os.replace is an atomic rename; opened with "xb" so the umask sets its mode.
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    digest = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "xb") as out:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        got = digest.hexdigest()
        if got == sha256:
            os.replace(tmp, dest)
        return got
    finally:
        tmp.unlink(missing_ok=True)  # also on Ctrl-C: never a partial file left behind


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"{e.reason}"
    return f"{type(e).__name__}: {e}"


def read_utf8(path: Path, what: str) -> str:
    """The text of a UTF-8 file (a leading byte-order mark dropped; a .gz file is decompressed first).
    FileNotFoundError names `what` the file is; DataError names the line of the first byte that is not UTF-8."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{what} {path} is a directory, not a file") from None
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: not a readable gzip file ({e})") from None
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: line {line} is not valid UTF-8 (byte 0x{raw[e.start]:02x})") from None
