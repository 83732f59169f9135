"""rnnkit.data.mnist: the real files downloaded from a local mirror and checked, and the strict IDX reader's errors."""
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from httpserver import serve

from rnnkit.data import DataError, DataNotFoundError, download_dataset, mnist
from rnnkit.data.store import sha256_of

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
# From shared/data/mnist/README.md: label counts of digits 0..9 and mean pixel value.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
quiet = {"log": lambda m: None}

needs_mnist = pytest.mark.skipif(not all((SHARED_MNIST / name).is_file() for name in mnist.FILES),
                                 reason=f"the MNIST files are not in {SHARED_MNIST}")


def idx_gz(array: np.ndarray, magic: int | None = None, extra: int = 0) -> bytes:
    """`array` as gzip'd IDX bytes; `magic` overrides the header's, `extra` adds (>0) or drops (<0) payload bytes."""
    magic = magic if magic is not None else {1: 2049, 3: 2051}[array.ndim]
    payload = array.astype(np.uint8).tobytes()
    payload = payload + bytes(extra) if extra >= 0 else payload[:extra]
    return gzip.compress(struct.pack(f">I{array.ndim}I", magic, *array.shape) + payload)


def write_split(directory: Path, images: np.ndarray, labels: np.ndarray, split: str = "train") -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = tuple(directory / name for name in mnist.SPLITS[split])
    paths[0].write_bytes(idx_gz(images))
    paths[1].write_bytes(idx_gz(labels))
    return paths


def digits(n: int, side: int = 28) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, side, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10


# the real files, through a local mirror ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def downloaded(tmp_path_factory):
    """The four files downloaded from a local server (404 first, then the shared copy) into a fresh data root."""
    if not all((SHARED_MNIST / name).is_file() for name in mnist.FILES):
        pytest.skip(f"the MNIST files are not in {SHARED_MNIST}")
    root = tmp_path_factory.mktemp("root")
    empty = tmp_path_factory.mktemp("empty")
    with serve(empty) as (missing, _), serve(SHARED_MNIST) as (good, requests):
        directory = mnist.download(root, mirrors=[missing, good], **quiet)
        assert sorted(requests) == sorted("/" + name for name in mnist.FILES)
    return root, directory


@pytest.fixture(scope="module")
def train(downloaded):
    return mnist.load("train", downloaded[0])


def test_download_fetches_the_four_verified_files(downloaded):
    root, directory = downloaded
    assert directory == root / "mnist"
    assert sorted(p.name for p in directory.iterdir()) == sorted(mnist.FILES)
    for name, spec in mnist.FILES.items():
        assert sha256_of(directory / name) == spec.sha256
        assert (directory / name).stat().st_size == spec.size


def test_train_split(train):
    images, labels = train
    assert images.shape == (60000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (60000,) and labels.dtype == torch.int64
    assert torch.bincount(labels, minlength=10).tolist() == TRAIN_COUNTS
    assert images.double().mean().item() == pytest.approx(33.3184, abs=1e-4)


def test_test_split_from_the_data_dir_or_its_mnist_folder(downloaded):
    root, directory = downloaded
    for where in (root, directory):
        images, labels = mnist.load("test", where)
        assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
        assert torch.bincount(labels, minlength=10).tolist() == TEST_COUNTS
        assert images.double().mean().item() == pytest.approx(33.7912, abs=1e-4)


def test_download_dataset_keeps_verified_files_without_requests(downloaded):
    root, directory = downloaded
    with serve(directory) as (base, requests):
        assert download_dataset("mnist", root, mirrors=[base], **quiet) == directory
    assert requests == []


def test_download_dataset_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"unknown data set 'cifar'; known: glove-6b-100d, mnist, tinyshakespeare"):
        download_dataset("cifar")


@needs_mnist
def test_file_table_matches_the_shared_copy():
    for name, spec in mnist.FILES.items():
        assert (SHARED_MNIST / name).stat().st_size == spec.size
    assert all(url.startswith(("https://", "http://")) and url.endswith("/") for url in mnist.MIRRORS)


# read_idx ------------------------------------------------------------------------------------------------------

def test_read_idx_round_trips_images_and_labels(tmp_path):
    images, labels = digits(5)
    for array in (images, labels):
        path = tmp_path / f"{array.ndim}.gz"
        path.write_bytes(idx_gz(array))
        got = mnist.read_idx(path)
        assert got.dtype == np.uint8 and got.flags.writeable
        np.testing.assert_array_equal(got, array)


def read_error(tmp_path, data: bytes) -> str:
    path = tmp_path / "bad-idx.gz"
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        mnist.read_idx(path)
    message = str(info.value)
    assert str(path) in message
    return message


def test_read_idx_rejects_truncated_gzip(tmp_path):
    data = idx_gz(digits(5)[0])
    assert "truncated" in read_error(tmp_path, data[:len(data) // 2])


def test_read_idx_rejects_corrupt_gzip(tmp_path):
    data = idx_gz(digits(5)[0])
    crc_flipped = data[:-8] + bytes([data[-8] ^ 0xFF]) + data[-7:]  # the trailer's CRC32
    assert "corrupt" in read_error(tmp_path, crc_flipped)


def test_read_idx_rejects_bytes_that_are_not_gzip(tmp_path):
    assert "not a valid gzip" in read_error(tmp_path, b"\x00\x00\x08\x01 plain, uncompressed bytes")


@pytest.mark.parametrize("magic", [2050, 0x0D03, 0x12345678])  # unknown; 3 dims of float; garbage
def test_read_idx_rejects_a_wrong_magic_number(tmp_path, magic):
    message = read_error(tmp_path, idx_gz(digits(5)[0], magic=magic))
    assert "magic" in message and str(magic) in message and "2051" in message


def test_read_idx_rejects_a_short_header(tmp_path):
    assert "header" in read_error(tmp_path, gzip.compress(struct.pack(">II", 2051, 5)))
    assert "header" in read_error(tmp_path, gzip.compress(b"\x00\x08"))


@pytest.mark.parametrize("extra, problem", [(-1, "too short"), (3, "3 trailing bytes")])
def test_read_idx_rejects_a_payload_of_the_wrong_size(tmp_path, extra, problem):
    message = read_error(tmp_path, idx_gz(digits(5)[0], extra=extra))
    expected = 5 * 28 * 28
    assert problem in message and str(expected) in message and str(expected + extra) in message


# load ----------------------------------------------------------------------------------------------------------

def test_load_reads_files_from_root_or_root_mnist_and_rnnkit_data(tmp_path, monkeypatch):
    images, labels = digits(7)
    write_split(tmp_path / "a" / "mnist", images, labels, "test")
    write_split(tmp_path / "b", images, labels, "test")
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path / "a"))
    for root in (tmp_path / "a", tmp_path / "b", None):
        got_images, got_labels = mnist.load("test", root)
        assert torch.equal(got_images, torch.from_numpy(images))
        assert torch.equal(got_labels, torch.from_numpy(labels).long())


def load_error(tmp_path, images, labels) -> str:
    paths = write_split(tmp_path, images, labels)
    with pytest.raises(DataError) as info:
        mnist.load("train", tmp_path)
    return str(info.value), paths


def test_load_rejects_mismatched_counts(tmp_path):
    images, labels = digits(5)
    message, (images_path, labels_path) = load_error(tmp_path, images, labels[:4])
    assert str(images_path) in message and str(labels_path) in message and "5 images" in message
    assert "4 labels" in message


def test_load_rejects_labels_out_of_range(tmp_path):
    images, labels = digits(5)
    labels[2] = 10
    message, (_, labels_path) = load_error(tmp_path, images, labels)
    assert str(labels_path) in message and "label 10" in message and "0..9" in message


def test_load_rejects_images_that_are_not_28x28(tmp_path):
    message, (images_path, _) = load_error(tmp_path, *digits(5, side=27))
    assert str(images_path) in message and "27x28" in message and "28x28" in message


def test_load_rejects_swapped_files(tmp_path):
    images, labels = digits(5)
    message, (images_path, labels_path) = load_error(tmp_path, labels, images)
    assert str(images_path) in message and "2051" in message


def test_load_missing_files_says_where_it_looked_and_how_to_get_them(tmp_path):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataNotFoundError) as info:
        mnist.load("train", tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert f"{tmp_path / 'mnist'} (missing train-labels-idx1-ubyte.gz)" in message
    assert f"{tmp_path} (missing train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz)" in message
    assert "rnnkit data download mnist" in message and "RNNKIT_DATA" in message


def test_load_rejects_an_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="split must be one of.*got 'val'"):
        mnist.load("val", tmp_path)


def test_download_rejects_a_string_of_mirrors(tmp_path):
    with pytest.raises(ValueError, match="mirrors must be a list.*'http://x/'"):
        mnist.download(tmp_path, mirrors="http://x/", **quiet)


@needs_mnist
def test_download_copes_with_a_corrupt_mirror(tmp_path):
    """The corrupt mirror is tried first and logged; the good copy ends up in place."""
    name = "t10k-labels-idx1-ubyte.gz"
    bad = tmp_path / "bad"
    bad.mkdir()
    data = (SHARED_MNIST / name).read_bytes()
    (bad / name).write_bytes(data[:200] + bytes([data[200] ^ 1]) + data[201:])
    logged = []
    dest = tmp_path / "root" / "mnist" / name
    with serve(bad) as (bad_url, _), serve(SHARED_MNIST) as (good_url, _):
        mnist.store.download([bad_url + name, good_url + name], dest, mnist.FILES[name].sha256, log=logged.append)
    assert sha256_of(dest) == mnist.FILES[name].sha256
    assert any(bad_url + name in m and "sha256 mismatch" in m for m in logged), logged
    assert sorted(p.name for p in dest.parent.iterdir()) == [name]
