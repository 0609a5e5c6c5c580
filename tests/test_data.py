"""Tests of lemmse.data: loaders of FashionMNIST (IDX gz), CIFAR-10 (pickle batches) and FFHQ-32 (PNGs).

Tiny files in the real formats are written to tmp_path; the real copies (when present at
$LEMMSE_DATA or ../shared/data) are checked against the counts and pixel means of their README.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lemmse import data
from lemmse.data import (
    data_root,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_ffhq32,
    load_labels,
)

# ----------------------------------------------------------------------------------------
# writers of tiny files in the real formats
# ----------------------------------------------------------------------------------------


def idx_bytes(magic: int, arr: np.ndarray, dims=None) -> bytes:
    """IDX: big-endian int32 magic, the sizes, then the uint8 payload row by row."""
    dims = arr.shape if dims is None else dims
    return struct.pack(f">{1 + len(dims)}i", magic, *dims) + arr.astype(np.uint8).tobytes()


def write_gz(path: Path, raw: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw))
    return path


def cifar_batch_bytes(images: np.ndarray, labels, bytes_keys: bool = True) -> bytes:
    """A batch dict like the official cPickle files: data uint8 [N, 3072] (R, G, B planes)."""
    k = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    batch = {
        k("batch_label"): b"training batch 1 of 5",
        k("labels"): list(labels),
        k("data"): images.reshape(len(images), 3072).astype(np.uint8),
    }
    return pickle.dumps(batch, protocol=2)


def write_pngs(folder: Path, images: np.ndarray, manifest: bool = True) -> list[Path]:
    """images uint8 [N, 3, 32, 32] -> folder/00000.png ... (+ MANIFEST.sha256 in sha256sum format)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        path = folder / f"{i:05d}.png"
        Image.fromarray(img.transpose(1, 2, 0), mode="RGB").save(path)
        paths.append(path)
    if manifest:
        lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in paths]
        (folder / "MANIFEST.sha256").write_text("\n".join(lines) + "\n")
    return paths


@pytest.fixture
def fake(tmp_path):
    """A data root with a few images of each data set; returns (root, the uint8 arrays written)."""
    rng = np.random.default_rng(0)
    arrays = {
        "fmnist_train": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "fmnist_test": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "fmnist_train_labels": rng.integers(0, 10, 5, dtype=np.uint8),
        "fmnist_test_labels": rng.integers(0, 10, 3, dtype=np.uint8),
        "cifar_b1": rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8),
        "cifar_b2": rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8),
        "cifar_test": rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8),
        "ffhq": rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8),
    }
    arrays["fmnist_train"][0, 0, 0], arrays["fmnist_train"][0, 0, 1] = 0, 255  # both ends of the range
    fm = tmp_path / "fashion-mnist"
    write_gz(fm / "train-images-idx3-ubyte.gz", idx_bytes(2051, arrays["fmnist_train"]))
    write_gz(fm / "t10k-images-idx3-ubyte.gz", idx_bytes(2051, arrays["fmnist_test"]))
    write_gz(fm / "train-labels-idx1-ubyte.gz", idx_bytes(2049, arrays["fmnist_train_labels"]))
    write_gz(fm / "t10k-labels-idx1-ubyte.gz", idx_bytes(2049, arrays["fmnist_test_labels"]))
    cf = tmp_path / "cifar-10-batches-py"
    cf.mkdir()
    (cf / "data_batch_1").write_bytes(cifar_batch_bytes(arrays["cifar_b1"], [1, 2, 3, 4]))
    (cf / "data_batch_2").write_bytes(cifar_batch_bytes(arrays["cifar_b2"], [5, 6, 7]))
    (cf / "test_batch").write_bytes(cifar_batch_bytes(arrays["cifar_test"], [8, 9]))
    write_pngs(tmp_path / "ffhq-32", arrays["ffhq"])
    return tmp_path, arrays


def as_float(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr.astype(np.float32)) / 255


# ----------------------------------------------------------------------------------------
# round trips, shapes, n, split
# ----------------------------------------------------------------------------------------


def test_fashion_mnist_round_trip(fake):
    root, a = fake
    x = load_fashion_mnist("train", root=root)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], as_float(a["fmnist_train"]))
    assert torch.equal((x * 255).round().to(torch.uint8)[:, 0], torch.from_numpy(a["fmnist_train"]))
    assert x.min() == 0 and x.max() == 1
    xt = load_dataset("fashion-mnist", "test", root=root)
    assert torch.equal(xt[:, 0], as_float(a["fmnist_test"]))
    assert torch.equal(load_fashion_mnist(n=2, root=root), x[:2])


def test_cifar10_round_trip_and_channel_layout(fake):
    root, a = fake
    x = load_cifar10("train", root=root)
    assert x.shape == (7, 3, 32, 32) and x.dtype == torch.float32
    expected = np.concatenate([a["cifar_b1"], a["cifar_b2"]])
    assert torch.equal(x, as_float(expected))
    # row layout: the first 1024 values of a row are the red plane, row-major
    row = a["cifar_b1"][0].reshape(3072)
    assert x[0, 0, 0, 1] == row[1] / np.float32(255) and x[0, 1, 0, 0] == row[1024] / np.float32(255)
    assert x[0, 2, 31, 31] == row[3071] / np.float32(255)
    assert torch.equal(load_cifar10("test", root=root), as_float(a["cifar_test"]))
    assert torch.equal(load_dataset("cifar10", n=6, root=root), x[:6])  # spans two batches
    assert torch.equal(load_cifar10(n=3, root=root), x[:3])


def test_cifar10_str_keys(tmp_path):
    imgs = np.arange(2 * 3072, dtype=np.int64).reshape(2, 3, 32, 32) % 256
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(cifar_batch_bytes(imgs.astype(np.uint8), [0, 1], bytes_keys=False))
    assert torch.equal(load_cifar10("test", root=tmp_path), as_float(imgs.astype(np.uint8)))
    assert load_labels("cifar10", "test", root=tmp_path).tolist() == [0, 1]


def test_cifar10_missing_middle_batch_reads_present_ones_in_order(fake):
    root, a = fake
    (root / "cifar-10-batches-py" / "data_batch_2").rename(root / "cifar-10-batches-py" / "data_batch_4")
    x = load_cifar10(root=root)
    assert torch.equal(x, as_float(np.concatenate([a["cifar_b1"], a["cifar_b2"]])))


def test_ffhq32_round_trip(fake):
    root, a = fake
    x = load_ffhq32(root=root)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x, as_float(a["ffhq"]))
    assert torch.equal(load_dataset("ffhq32", "train", n=2, root=root), x[:2])


def test_ffhq32_without_manifest_and_sorted_by_name(fake):
    root, a = fake
    folder = root / "ffhq-32"
    (folder / "MANIFEST.sha256").unlink()
    (folder / "notes.txt").write_text("not an image")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "preview.png")  # not NNNNN.png: ignored
    assert torch.equal(load_ffhq32(root=root), as_float(a["ffhq"]))


def test_ffhq32_split_convention(fake, monkeypatch):
    root, a = fake
    with pytest.raises(ValueError, match=r"no FFHQ-32 test images .*first 50,000 sorted files.*only 4 files"):
        load_ffhq32("test", root=root)
    monkeypatch.setattr(data.ffhq32, "FFHQ_TRAIN_SIZE", 3)
    assert torch.equal(load_ffhq32("train", root=root), as_float(a["ffhq"][:3]))
    assert torch.equal(load_ffhq32("test", root=root), as_float(a["ffhq"][3:]))


def test_ffhq32_grey_png_is_converted_to_rgb(tmp_path):
    folder = tmp_path / "ffhq-32"
    folder.mkdir()
    grey = np.arange(1024, dtype=np.int64).reshape(32, 32) % 256
    Image.fromarray(grey.astype(np.uint8), mode="L").save(folder / "00000.png")
    x = load_ffhq32(root=tmp_path)
    assert x.shape == (1, 3, 32, 32)
    for c in range(3):
        assert torch.equal(x[0, c], as_float(grey.astype(np.uint8)))


def test_labels(fake):
    root, a = fake
    lab = load_labels("fashion-mnist", root=root)
    assert lab.dtype == torch.int64 and lab.tolist() == a["fmnist_train_labels"].tolist()
    assert load_labels("fashion-mnist", "test", n=2, root=root).tolist() == a["fmnist_test_labels"][:2].tolist()
    assert load_labels("cifar10", root=root).tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert load_labels("cifar10", n=5, root=root).tolist() == [1, 2, 3, 4, 5]
    assert load_labels("cifar10", "test", root=root).tolist() == [8, 9]
    with pytest.raises(ValueError, match="ffhq32.*no labels"):
        load_labels("ffhq32", root=root)


# ----------------------------------------------------------------------------------------
# data root
# ----------------------------------------------------------------------------------------


def test_data_root_env_var(fake, monkeypatch):
    root, a = fake
    monkeypatch.setenv("LEMMSE_DATA", str(root))
    assert data_root() == root
    assert data_root("/somewhere/else") == Path("/somewhere/else")
    assert torch.equal(load_cifar10("test"), as_float(a["cifar_test"]))
    assert load_dataset("fashion-mnist").shape == (5, 1, 28, 28)


def test_data_root_default(monkeypatch, tmp_path):
    monkeypatch.delenv("LEMMSE_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data_root() == tmp_path / ".cache" / "lemmse" / "data"
    with pytest.raises(FileNotFoundError, match="from the default"):
        load_cifar10()


# ----------------------------------------------------------------------------------------
# missing and bad files
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, split, relpath, url",
    [
        ("fashion-mnist", "train", "fashion-mnist/train-images-idx3-ubyte.gz", data.FASHION_MNIST_URL),
        ("fashion-mnist", "test", "fashion-mnist/t10k-images-idx3-ubyte.gz", data.FASHION_MNIST_URL),
        ("cifar10", "train", "cifar-10-batches-py/data_batch_1", data.CIFAR10_URL),
        ("cifar10", "test", "cifar-10-batches-py/test_batch", data.CIFAR10_URL),
        ("ffhq32", "train", "ffhq-32/00000.png", data.FFHQ_URL),
    ],
)
def test_missing_files_message(tmp_path, monkeypatch, name, split, relpath, url):
    monkeypatch.setenv("LEMMSE_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        load_dataset(name, split)
    msg = str(info.value)
    assert str(tmp_path / relpath) in msg
    assert f"Data root in use: {tmp_path} (from the environment variable LEMMSE_DATA)" in msg
    assert "root=" in msg and "LEMMSE_DATA" in msg and url in msg


def test_ffhq_download_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="no automatic download"):
        load_ffhq32(root=tmp_path, download=True)


def test_truncated_gz(fake):
    root, _ = fake
    path = root / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=f"{path}.*truncated or corrupt"):
        load_fashion_mnist(root=root)
    path.write_bytes(b"this is not gzip at all" * 10)
    with pytest.raises(ValueError, match=f"{path}.*truncated or corrupt"):
        load_fashion_mnist(root=root)
    path.write_bytes(raw[:-4] + b"\x00\x00\x00\x00")  # damaged gzip trailer (length)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_fashion_mnist(root=root)


def test_idx_header_payload_mismatch(fake):
    root, a = fake
    path = root / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    write_gz(path, idx_bytes(2051, a["fmnist_train"], dims=(6, 28, 28)))  # header says 6, payload has 5
    with pytest.raises(ValueError, match=r"truncated or corrupt: the header announces 6 items"):
        load_fashion_mnist(root=root)
    assert load_fashion_mnist(n=5, root=root).shape == (5, 1, 28, 28)  # the first 5 are readable
    write_gz(path, idx_bytes(2051, a["fmnist_train"], dims=(4, 28, 28)))  # header says 4, payload has 5
    with pytest.raises(ValueError, match="longer than the header"):
        load_fashion_mnist(root=root)
    write_gz(path, idx_bytes(2049, a["fmnist_train"]))  # wrong magic
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
        load_fashion_mnist(root=root)
    write_gz(path, b"\x00\x00")
    with pytest.raises(ValueError, match="header is incomplete"):
        load_fashion_mnist(root=root)


def test_corrupt_pickle(fake):
    root, a = fake
    path = root / "cifar-10-batches-py" / "data_batch_1"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=f"{path} is not a valid CIFAR-10 batch"):
        load_cifar10(root=root)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a valid CIFAR-10 batch"):
        load_cifar10(root=root)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(ValueError, match=r"'data' must be a uint8 array \[N, 3072\]"):
        load_cifar10(root=root)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(ValueError, match="'data' must be a uint8 array"):
        load_cifar10(root=root)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        load_cifar10(root=root)
    path.write_bytes(pickle.dumps({b"labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match="no 'data' key"):
        load_cifar10(root=root)
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(ValueError, match="expected a dict"):
        load_cifar10(root=root)


class _Evil:
    def __reduce__(self):
        return (os.remove, ("/nonexistent-lemmse-test-file",))


def test_pickle_cannot_call_arbitrary_functions(fake):
    root, _ = fake
    path = root / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Evil()}, protocol=2))
    with pytest.raises(ValueError, match="is not allowed in a CIFAR-10 batch"):
        load_cifar10(root=root)


def test_too_large_n(fake):
    root, _ = fake
    with pytest.raises(ValueError, match=r"n=8 .* only 7 images .*data_batch_1, data_batch_2"):
        load_cifar10(n=8, root=root)
    with pytest.raises(ValueError, match=r"n=6 but .*train-images-idx3-ubyte.gz holds only 5"):
        load_fashion_mnist(n=6, root=root)
    with pytest.raises(ValueError, match=r"n=5 but the FFHQ-32 train split .* only 4 images"):
        load_ffhq32(n=5, root=root)
    with pytest.raises(ValueError, match=r"n=3 .*test.*only 2 images.*test_batch"):
        load_cifar10("test", n=3, root=root)


def test_manifest_mismatch(fake):
    root, _ = fake
    folder = root / "ffhq-32"
    img = np.full((32, 32, 3), 7, np.uint8)
    Image.fromarray(img).save(folder / "00002.png")  # changed after the manifest was written
    assert load_ffhq32(n=2, root=root).shape == (2, 3, 32, 32)  # only the files read are checked
    with pytest.raises(ValueError, match=r"sha256 mismatch for .*00002.png"):
        load_ffhq32(root=root)
    Image.fromarray(img).save(folder / "00004.png")
    (folder / "00002.png").unlink()
    (folder / "00003.png").unlink()
    with pytest.raises(ValueError, match="00004.png is not listed in"):
        load_ffhq32(root=root)
    (folder / "MANIFEST.sha256").write_text("nonsense\n")
    with pytest.raises(ValueError, match=r"MANIFEST.sha256, line 1"):
        load_ffhq32(root=root)


def test_bad_png(fake):
    root, _ = fake
    folder = root / "ffhq-32"
    (folder / "MANIFEST.sha256").unlink()
    Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(folder / "00001.png")
    with pytest.raises(ValueError, match=r"00001.png is 32x16, expected a 32x32 image"):
        load_ffhq32(root=root)
    (folder / "00001.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="00001.png is not a readable PNG"):
        load_ffhq32(root=root)


def test_bad_arguments(fake):
    root, _ = fake
    with pytest.raises(ValueError, match="name must be one of"):
        load_dataset("mnist", root=root)
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("cifar10", "val", root=root)
    with pytest.raises(ValueError, match="n must be a positive int"):
        load_dataset("cifar10", n=0, root=root)
    with pytest.raises(TypeError, match="n must be a positive int"):
        load_dataset("cifar10", n=2.5, root=root)
    assert load_dataset("cifar10", n=np.int64(2), root=root).shape == (2, 3, 32, 32)


# ----------------------------------------------------------------------------------------
# downloads (urlopen replaced by a local server of bytes)
# ----------------------------------------------------------------------------------------


def serve(monkeypatch, payloads: dict[str, bytes]) -> list[str]:
    """Replace urllib.request.urlopen: known URLs get their bytes, others fail like an offline machine."""
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        if url not in payloads:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        return io.BytesIO(payloads[url])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return calls


def md5(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


def fashion_payloads(monkeypatch, a) -> dict[str, bytes]:
    files = {
        "train-images-idx3-ubyte.gz": gzip.compress(idx_bytes(2051, a["fmnist_train"])),
        "train-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(2049, a["fmnist_train_labels"])),
        "t10k-images-idx3-ubyte.gz": gzip.compress(idx_bytes(2051, a["fmnist_test"])),
        "t10k-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(2049, a["fmnist_test_labels"])),
    }
    for name, raw in files.items():
        monkeypatch.setitem(data.FASHION_MNIST_MD5, name, md5(raw))
    return {data.FASHION_MNIST_URL + name: raw for name, raw in files.items()}


def test_download_fashion_mnist(fake, tmp_path_factory, monkeypatch):
    _, a = fake
    root = tmp_path_factory.mktemp("dl")
    calls = serve(monkeypatch, fashion_payloads(monkeypatch, a))
    x = load_fashion_mnist("test", root=root, download=True)
    assert torch.equal(x[:, 0], as_float(a["fmnist_test"]))
    assert sorted(calls) == sorted(data.FASHION_MNIST_URL + f for f in data.FASHION_MNIST_MD5)
    assert sorted(os.listdir(root / "fashion-mnist")) == sorted(data.FASHION_MNIST_MD5)  # no .part left
    calls.clear()
    assert torch.equal(load_fashion_mnist(root=root, download=True)[:, 0], as_float(a["fmnist_train"]))
    assert calls == []  # present files are not downloaded again


def test_download_bad_checksum_leaves_nothing(fake, tmp_path_factory, monkeypatch):
    _, a = fake
    root = tmp_path_factory.mktemp("dl")
    payloads = fashion_payloads(monkeypatch, a)
    first = data.FASHION_MNIST_URL + "train-images-idx3-ubyte.gz"
    payloads[first] = payloads[first][:-1] + bytes([payloads[first][-1] ^ 0xFF])  # one byte changed
    serve(monkeypatch, payloads)
    with pytest.raises(ValueError, match="checksum mismatch for .*train-images-idx3-ubyte.gz"):
        load_fashion_mnist(root=root, download=True)
    assert os.listdir(root / "fashion-mnist") == []
    with pytest.raises(FileNotFoundError):
        load_fashion_mnist(root=root)


def test_download_without_network(tmp_path, monkeypatch):
    serve(monkeypatch, {})
    with pytest.raises(ConnectionError, match=r"could not download http://fashion-mnist.*name resolution"):
        load_fashion_mnist(root=tmp_path, download=True)
    assert os.listdir(tmp_path / "fashion-mnist") == []
    with pytest.raises(ConnectionError, match=r"could not download https://www.cs.toronto.edu/~kriz/cifar-10"):
        load_cifar10(root=tmp_path, download=True)
    assert os.listdir(tmp_path / "cifar-10-batches-py") == []


def cifar_archive(a) -> bytes:
    buf = io.BytesIO()
    members = {f"data_batch_{i}": cifar_batch_bytes(a["cifar_b1"], [0, 1, 2, 3]) for i in range(1, 6)}
    members["data_batch_2"] = cifar_batch_bytes(a["cifar_b2"], [4, 5, 6])
    members["test_batch"] = cifar_batch_bytes(a["cifar_test"], [7, 8])
    members["batches.meta"] = pickle.dumps({b"label_names": [b"airplane"]}, protocol=2)
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


def test_download_cifar10(fake, tmp_path_factory, monkeypatch):
    _, a = fake
    root = tmp_path_factory.mktemp("dl")
    archive = cifar_archive(a)
    monkeypatch.setattr(data.cifar10, "CIFAR10_MD5", md5(archive))
    calls = serve(monkeypatch, {data.CIFAR10_URL: archive})
    x = load_cifar10("test", root=root, download=True)
    assert calls == [data.CIFAR10_URL]
    assert torch.equal(x, as_float(a["cifar_test"]))
    expected = sorted([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])
    assert sorted(os.listdir(root / "cifar-10-batches-py")) == expected  # archive and .part files removed
    assert load_cifar10(n=7, root=root).shape == (7, 3, 32, 32)
    assert torch.equal(load_cifar10(n=7, root=root)[4:], as_float(a["cifar_b2"]))


def test_download_cifar10_bad_checksum(fake, tmp_path_factory, monkeypatch):
    _, a = fake
    root = tmp_path_factory.mktemp("dl")
    serve(monkeypatch, {data.CIFAR10_URL: cifar_archive(a)})  # real md5 constant: mismatch
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_cifar10(root=root, download=True)
    assert os.listdir(root / "cifar-10-batches-py") == []


def test_checksum_constants():
    assert data.CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"
    assert data.FASHION_MNIST_MD5["train-images-idx3-ubyte.gz"] == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"


# ----------------------------------------------------------------------------------------
# the real data (shared copy), when present
# ----------------------------------------------------------------------------------------


def need(root: Path, relpath: str) -> None:
    if not (root / relpath).exists():
        pytest.skip(f"real data not present: {root / relpath}")


def test_real_fashion_mnist(real_data_root):
    need(real_data_root, "fashion-mnist/train-images-idx3-ubyte.gz")
    x = load_dataset("fashion-mnist", "train", root=real_data_root)
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32
    assert abs(x.mean().item() - 0.2860) < 5e-4
    xt = load_dataset("fashion-mnist", "test", root=real_data_root)
    assert xt.shape == (10000, 1, 28, 28)
    assert abs(xt.mean().item() - 0.2868) < 5e-4
    assert torch.bincount(load_labels("fashion-mnist", "train", root=real_data_root)).tolist() == [6000] * 10
    assert torch.bincount(load_labels("fashion-mnist", "test", root=real_data_root)).tolist() == [1000] * 10
    assert torch.equal(load_fashion_mnist(n=3, root=real_data_root), x[:3])
    for name, want in data.FASHION_MNIST_MD5.items():  # the download checksums match the official files
        assert md5((real_data_root / "fashion-mnist" / name).read_bytes()) == want


def test_real_cifar10(real_data_root):
    need(real_data_root, "cifar-10-batches-py/data_batch_1")
    x = load_dataset("cifar10", "train", root=real_data_root)
    assert x.shape == (4000, 3, 32, 32)
    means = x.mean(dim=(0, 2, 3)).tolist()
    for got, want in zip(means, [0.4916, 0.4818, 0.4447]):
        assert abs(got - want) < 5e-4
    u8 = (x[0] * 255).round().to(torch.int64).reshape(3072)
    assert u8[:3].tolist() == [59, 43, 50] and u8[-3:].tolist() == [140, 84, 72]
    assert load_labels("cifar10", n=10, root=real_data_root).tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    xt = load_dataset("cifar10", "test", root=real_data_root)
    assert xt.shape == (1000, 3, 32, 32)
    for got, want in zip(xt.mean(dim=(0, 2, 3)).tolist(), [0.4967, 0.4867, 0.4510]):
        assert abs(got - want) < 5e-4
    assert load_labels("cifar10", "test", n=10, root=real_data_root).tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    with pytest.raises(ValueError, match=r"only 4000 images .*data_batch_1"):
        load_cifar10(n=4001, root=real_data_root)


def test_real_ffhq32(real_data_root):
    need(real_data_root, "ffhq-32/00000.png")
    x = load_dataset("ffhq32", "train", root=real_data_root)
    assert x.shape == (10, 3, 32, 32)
    for got, want in zip(x.mean(dim=(0, 2, 3)).tolist(), [0.5122, 0.4323, 0.3897]):
        assert abs(got - want) < 5e-4
    with pytest.raises(ValueError, match="no FFHQ-32 test images"):
        load_dataset("ffhq32", "test", root=real_data_root)
