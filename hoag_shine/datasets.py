"""Dataset loaders for the examples, benchmarks and command line (never used by the algorithms)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

__all__ = ["load_fashion_mnist"]

FASHION_MNIST_ENV = "HOAG_SHINE_FASHION_MNIST"
FASHION_MNIST_URL = "https://github.com/zalandoresearch/fashion-mnist#get-the-data"
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_fashion_mnist(
    path: str | os.PathLike | None = None, kind: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Load Fashion-MNIST from its IDX files.

    Parameters
    ----------
    path : str or path-like, optional
        Folder holding ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
        ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` (uncompressed files
        without ``.gz`` also work). Default: the environment variable
        ``HOAG_SHINE_FASHION_MNIST``.
    kind : {"train", "test"}
        The 60000 training images or the 10000 test images.

    Returns
    -------
    images : ndarray of uint8, shape (n_samples, 28, 28)
    labels : ndarray of int64, shape (n_samples,)
        Classes 0 to 9 (T-shirt/top, trouser, pullover, dress, coat, sandal, shirt, sneaker,
        bag, ankle boot).

    Raises
    ------
    FileNotFoundError
        When no folder is given or the files are missing; the message says where to download
        them and which environment variable to set.
    ValueError
        For an unknown ``kind`` or a corrupt file.
    """
    if kind not in _FASHION_MNIST_FILES:
        raise ValueError(f"kind must be 'train' or 'test', got {kind!r}.")
    folder = path if path is not None else os.environ.get(FASHION_MNIST_ENV)
    help_text = (
        f"Download the four IDX .gz files from {FASHION_MNIST_URL} into a folder, then pass "
        f"path=... or set the environment variable {FASHION_MNIST_ENV} to that folder."
    )
    if folder is None:
        raise FileNotFoundError(f"No Fashion-MNIST folder given. {help_text}")
    image_name, label_name = _FASHION_MNIST_FILES[kind]
    images = _read_idx(_find(Path(folder), image_name, help_text), magic=2051, ndim=3)
    labels = _read_idx(_find(Path(folder), label_name, help_text), magic=2049, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Fashion-MNIST {kind}: {images.shape[0]} images but {labels.shape[0]} labels."
        )
    return images, labels.astype(np.int64)


def _find(folder: Path, name: str, help_text: str) -> Path:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{folder / (name + '.gz')} not found. {help_text}")


def _read_idx(file: Path, *, magic: int, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes: big-endian int32 magic and sizes, then the data."""
    opener = gzip.open if file.suffix == ".gz" else open
    with opener(file, "rb") as handle:
        data = handle.read()
    header = 4 * (1 + ndim)
    if len(data) < header:
        raise ValueError(f"{file} is too short to be an IDX file.")
    values = np.frombuffer(data, dtype=">i4", count=1 + ndim)
    if int(values[0]) != magic:
        raise ValueError(f"{file}: IDX magic number {int(values[0])}, expected {magic}.")
    shape = tuple(int(s) for s in values[1:])
    body = np.frombuffer(data, dtype=np.uint8, offset=header)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{file}: {body.size} bytes of data for the shape {shape}.")
    return body.reshape(shape).copy()
