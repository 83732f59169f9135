"""rnnkit.data.store: the data root's precedence and the verified, atomic, mirror-by-mirror download."""
import hashlib
import os
import socket
from pathlib import Path

import pytest
from httpserver import serve

from rnnkit.data import store
from rnnkit.data.store import DataError, data_root, download, sha256_of

GOOD = b"the verified bytes\n" * 1000
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()


def corrupt(data: bytes) -> bytes:
    """`data` with one byte flipped."""
    return data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]


def mirror(directory: Path, data: bytes | None, name: str = "file.bin") -> Path:
    """A directory to serve holding `name` with `data` (or nothing, so requests for it get 404)."""
    directory.mkdir()
    if data is not None:
        (directory / name).write_bytes(data)
    return directory


@pytest.fixture
def mirrors(tmp_path):
    """Three servers: one with the good file, one with a corrupt copy, one without it (404)."""
    with serve(mirror(tmp_path / "good", GOOD)) as good, serve(mirror(tmp_path / "bad", corrupt(GOOD))) as bad, \
            serve(mirror(tmp_path / "empty", None)) as empty:
        yield {"good": good, "bad": bad, "empty": empty}


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/file.bin"


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# data_root -----------------------------------------------------------------------------------------------------

def test_data_root_prefers_explicit_then_env_then_xdg_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert data_root(str(tmp_path / "explicit")) == tmp_path / "explicit"
    assert data_root() == tmp_path / "env"
    assert data_root("") == tmp_path / "env"  # an empty --data-dir means "not given"
    monkeypatch.delenv("RNNKIT_DATA")
    assert data_root() == tmp_path / "xdg" / "rnnkit"
    monkeypatch.setenv("RNNKIT_DATA", "")
    assert data_root() == tmp_path / "xdg" / "rnnkit"
    assert not (tmp_path / "xdg").exists()  # data_root never creates anything


def test_data_root_falls_back_to_home_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("RNNKIT_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(store.sys, "platform", "linux")
    assert data_root() == tmp_path / ".cache" / "rnnkit"
    assert data_root("~/d") == tmp_path / "d"


def test_data_root_on_windows_uses_localappdata(tmp_path, monkeypatch):
    monkeypatch.delenv("RNNKIT_DATA", raising=False)
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    monkeypatch.setattr(store.sys, "platform", "win32")
    assert data_root() == tmp_path / "local" / "rnnkit"


def test_sha256_of_matches_hashlib(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(os.urandom(3 * store.CHUNK + 7))  # several chunks and a partial one
    assert sha256_of(path) == hashlib.sha256(path.read_bytes()).hexdigest()


# download ------------------------------------------------------------------------------------------------------

def test_download_verifies_and_creates_the_directory(tmp_path, mirrors):
    base, requests = mirrors["good"]
    dest = tmp_path / "out" / "deeper" / "file.bin"
    assert download([base + "file.bin"], dest, GOOD_SHA, log=lambda m: None) == dest
    assert dest.read_bytes() == GOOD
    assert requests == ["/file.bin"]
    assert leftovers(dest.parent) == ["file.bin"]


def test_download_skips_a_corrupt_mirror_and_logs_it(tmp_path, mirrors):
    logged = []
    dest = tmp_path / "out" / "file.bin"
    bad_url, good_url = mirrors["bad"][0] + "file.bin", mirrors["good"][0] + "file.bin"
    download([bad_url, good_url], dest, GOOD_SHA, log=logged.append)
    assert dest.read_bytes() == GOOD
    assert leftovers(dest.parent) == ["file.bin"]
    bad_sha = hashlib.sha256(corrupt(GOOD)).hexdigest()
    assert any(bad_url in m and "sha256 mismatch" in m and bad_sha in m for m in logged), logged


def test_download_skips_a_404_mirror(tmp_path, mirrors):
    logged = []
    dest = tmp_path / "file.bin"
    missing_url = mirrors["empty"][0] + "file.bin"
    download([missing_url, mirrors["good"][0] + "file.bin"], dest, GOOD_SHA, log=logged.append)
    assert dest.read_bytes() == GOOD
    assert any(missing_url in m and "404" in m for m in logged), logged


def test_download_from_only_corrupt_mirrors_raises_and_leaves_nothing(tmp_path, mirrors):
    out = tmp_path / "out"
    dest = out / "file.bin"
    urls = [mirrors["bad"][0] + "file.bin", mirrors["bad"][0] + "file.bin?again"]
    with pytest.raises(DataError) as info:
        download(urls, dest, GOOD_SHA, log=lambda m: None)
    message = str(info.value)
    assert str(dest) in message and GOOD_SHA in message
    assert hashlib.sha256(corrupt(GOOD)).hexdigest() in message
    assert all(url in message for url in urls)
    assert leftovers(out) == []  # neither the file nor a temporary file


def test_download_with_no_reachable_mirror_raises_oserror_naming_each_url(tmp_path, mirrors):
    dest = tmp_path / "file.bin"
    urls = [mirrors["empty"][0] + "file.bin", closed_port_url()]
    with pytest.raises(OSError) as info:
        download(urls, dest, GOOD_SHA, log=lambda m: None)
    assert not isinstance(info.value, DataError)
    message = str(info.value)
    assert str(dest) in message and all(url in message for url in urls)
    assert "HTTP 404" in message and "refused" in message.lower()
    assert leftovers(tmp_path) == ["bad", "empty", "good"]


def test_download_keeps_a_verified_file_without_any_request(tmp_path, mirrors):
    base, requests = mirrors["good"]
    dest = tmp_path / "file.bin"
    dest.write_bytes(GOOD)
    before = dest.stat().st_mtime_ns
    download([base + "file.bin"], dest, GOOD_SHA, log=lambda m: None)
    assert requests == [] and dest.stat().st_mtime_ns == before


def test_download_replaces_a_corrupt_file_once_a_verified_copy_is_in_hand(tmp_path, mirrors):
    logged = []
    dest = tmp_path / "out" / "file.bin"
    dest.parent.mkdir()
    dest.write_bytes(corrupt(GOOD))
    download([mirrors["bad"][0] + "file.bin", mirrors["good"][0] + "file.bin"], dest, GOOD_SHA, log=logged.append)
    assert dest.read_bytes() == GOOD
    assert leftovers(dest.parent) == ["file.bin"]
    assert any(str(dest) in m and "expected" in m for m in logged), logged


def test_download_failure_says_an_existing_corrupt_file_is_invalid(tmp_path, mirrors):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"stale")
    with pytest.raises(OSError, match="not valid"):
        download([mirrors["empty"][0] + "file.bin"], dest, GOOD_SHA, log=lambda m: None)
    assert dest.read_bytes() == b"stale"  # left for the user to inspect, and reported as invalid


def test_download_removes_its_temporary_file_when_the_move_fails(tmp_path, mirrors, monkeypatch):
    def refuse(src, dst):
        raise PermissionError(f"cannot replace {dst}")

    monkeypatch.setattr(store.os, "replace", refuse)
    with pytest.raises(OSError, match="cannot replace"):
        download([mirrors["good"][0] + "file.bin"], tmp_path / "out" / "file.bin", GOOD_SHA, log=lambda m: None)
    assert leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("urls, sha, match", [
    ([], GOOD_SHA, "urls must be a non-empty list"),
    ("http://example.invalid/file.bin", GOOD_SHA, "urls must be a non-empty list.*'http://example.invalid"),
    (["http://example.invalid/file.bin"], "abc", "sha256 must be 64 hex digits, got 'abc'"),
])
def test_download_rejects_bad_arguments(tmp_path, urls, sha, match):
    with pytest.raises(ValueError, match=match):
        download(urls, tmp_path / "file.bin", sha, log=lambda m: None)
