"""Dataset loaders for the examples, benchmarks and command line (never used by the algorithms).

Every loader returns ``(X, y)`` with ``X`` a float64 array or a CSR matrix (sparse sets stay
sparse). Real sets come from their usual downloaders (scikit-learn for 20news, ``libsvmdata`` for
LIBSVM sets); when a file is missing and the network is not there, the error says where the loader
looked and which environment variable points it at an offline copy. :func:`make_splits` draws
train / validation / test indices exactly as the published SHINE code does.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

__all__ = [
    "EMBEDDED_DATASETS",
    "SMALL_DATASET",
    "load_20news",
    "load_dataset",
    "load_embedded",
    "load_fashion_mnist",
    "load_file",
    "load_libsvm",
    "make_splits",
    "split_dataset",
]

#: Sets with fewer samples get a 60/20/20 split instead of the published 90/5/5 one.
SMALL_DATASET = 5000
#: Datasets shipped with scikit-learn, usable without network.
EMBEDDED_DATASETS = ("breast_cancer", "digits")
LIBSVMDATA_ENV = "LIBSVMDATA_HOME"
SKLEARN_DATA_ENV = "SCIKIT_LEARN_DATA"


def load_embedded(name: str = "breast_cancer") -> tuple[np.ndarray, np.ndarray]:
    """Load a dataset shipped with scikit-learn (no network needed).

    Parameters
    ----------
    name : {"breast_cancer", "digits"}
        ``breast_cancer``: 569 x 30, two classes (the command line's default);
        ``digits``: 1797 x 64, ten classes.

    Returns
    -------
    X : ndarray of float64, shape (n_samples, n_features)
    y : ndarray of int64, shape (n_samples,)
    """
    from sklearn import datasets

    loaders = {"breast_cancer": datasets.load_breast_cancer, "digits": datasets.load_digits}
    if name not in loaders:
        raise ValueError(f"Unknown embedded dataset {name!r}; choose one of {EMBEDDED_DATASETS}.")
    X, y = loaders[name](return_X_y=True)
    return np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.int64)


def load_20news(
    data_home: str | os.PathLike | None = None, *, download_if_missing: bool = True
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Load 20 Newsgroups as the SHINE experiments use it: train and test stacked, binary label.

    Parameters
    ----------
    data_home : str or path-like, optional
        scikit-learn's data folder; it must be writable, since the first call writes the
        vectorized cache (about 25 s) beside the raw archive. Default: ``SCIKIT_LEARN_DATA`` or
        ``~/scikit_learn_data``.
    download_if_missing : bool, default=True
        Download the archive (14 MB) when it is not in ``data_home``.

    Returns
    -------
    X : csr_matrix of float64, shape (18846, 130107)
        TF-IDF features of :func:`sklearn.datasets.fetch_20newsgroups_vectorized`, the 11314
        training documents followed by the 7532 test documents.
    y : ndarray of int64, shape (18846,)
        1 for newsgroups 10 to 19 (``target >= 10``), else 0.

    Raises
    ------
    FileNotFoundError
        When the data is not in ``data_home`` and cannot be downloaded.
    """
    from sklearn.datasets import fetch_20newsgroups_vectorized

    parts = []
    for subset in ("train", "test"):
        try:
            parts.append(
                fetch_20newsgroups_vectorized(
                    subset=subset, data_home=data_home, download_if_missing=download_if_missing
                )
            )
        except (OSError, ValueError) as exc:  # no network, or no cache and no download
            where = data_home or os.environ.get(SKLEARN_DATA_ENV, "~/scikit_learn_data")
            raise FileNotFoundError(
                f"20news is not in {where} and could not be downloaded ({exc}). With network, "
                "call load_20news() once; offline, copy the folder holding "
                "20news-bydate_py3.pkz to a writable place and pass data_home=... or set "
                f"{SKLEARN_DATA_ENV} to it."
            ) from exc
    X = sp.vstack([part.data for part in parts], format="csr", dtype=np.float64)
    y = (np.concatenate([part.target for part in parts]) >= 10).astype(np.int64)
    return X, y


def load_libsvm(
    name: str, data_home: str | os.PathLike | None = None, *, download_if_missing: bool = True
) -> tuple[sp.csr_matrix | np.ndarray, np.ndarray]:
    """Load a LIBSVM dataset (``real-sim``, ``news20.binary``, ``a9a``, ...) with ``libsvmdata``.

    Parameters
    ----------
    name : str
        A name known to ``libsvmdata`` (see ``libsvmdata.print_supported_datasets()``); test
        files have the suffix ``_test`` (``a9a_test``).
    data_home : str or path-like, optional
        Folder holding ``libsvm/<name>_X.npz`` and ``libsvm/<name>_y.npy`` (libsvmdata's cache
        format). Default: ``LIBSVMDATA_HOME``, else ``XDG_DATA_HOME``, else ``~/data``.
    download_if_missing : bool, default=True
        Let libsvmdata download and convert the set when its cache is missing.

    Returns
    -------
    X : csr_matrix or ndarray of float64, shape (n_samples, n_features)
        CSR for the sparse sets (libsvmdata returns CSC; rows are what the solvers read).
    y : ndarray, shape (n_samples,)
        Labels as stored (``-1``/``1`` for the binary sets).

    Raises
    ------
    FileNotFoundError
        When the cache is missing and downloading is off or fails.
    ValueError
        For a name libsvmdata does not know.
    """
    try:
        from libsvmdata.core import ALL_DATASETS
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError("load_libsvm needs libsvmdata: pip install libsvmdata") from exc
    if name not in ALL_DATASETS:
        raise ValueError(
            f"libsvmdata does not know the dataset {name!r}; see "
            "libsvmdata.print_supported_datasets()."
        )
    dataset = ALL_DATASETS[name]
    # libsvmdata resolves its folder when it is imported; point this one dataset elsewhere.
    folder = Path(data_home) / "libsvm" if data_home is not None else Path(dataset.dataset_dir)
    cached = [folder / f"{name}_X.{ext}" for ext in ("npz", "npy")]
    have_cache = any(path.is_file() for path in cached) and (
        (folder / f"{name}_y.npy").is_file() or (folder / f"{name}_y.npz").is_file()
    )
    help_text = (
        f"With network, call load_libsvm({name!r}) once; offline, place {name}_X.npz and "
        f"{name}_y.npy (libsvmdata's cache format; datasets/convert_libsvm.py writes them from a "
        f"LIBSVM text file) in <folder>/libsvm and pass data_home=<folder> or set "
        f"{LIBSVMDATA_ENV}=<folder> before starting Python."
    )
    if not have_cache and not download_if_missing:
        raise FileNotFoundError(f"{name} is not cached in {folder}. {help_text}")
    previous = dataset.dataset_dir
    dataset.dataset_dir = folder
    try:
        X, y = dataset.get_X_y()
    except Exception as exc:  # the download failed: libsvmdata raises several types
        if have_cache:
            raise
        raise FileNotFoundError(
            f"{name} is not cached in {folder} and could not be downloaded ({exc}). {help_text}"
        ) from exc
    finally:
        dataset.dataset_dir = previous
    X = X.tocsr().astype(np.float64) if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    return X, np.asarray(y)


def load_file(path: str | os.PathLike) -> tuple[sp.csr_matrix | np.ndarray, np.ndarray]:
    """Load a user's data file: LIBSVM/svmlight text, or CSV with the label in the last column.

    Parameters
    ----------
    path : str or path-like
        ``.csv`` files are read with :func:`numpy.loadtxt` (comma-separated, numeric; a first
        line that is not numeric is taken as a header); any other file is read as LIBSVM
        (svmlight) text with :func:`sklearn.datasets.load_svmlight_file`.

    Returns
    -------
    X : csr_matrix (LIBSVM) or ndarray (CSV) of float64
    y : ndarray of shape (n_samples,)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No data file at {path}.")
    if path.suffix.lower() == ".csv":
        with open(path) as handle:
            first = handle.readline()
        try:
            [float(field) for field in first.strip().split(",")]
            skip = 0
        except ValueError:
            skip = 1
        data = np.loadtxt(path, delimiter=",", skiprows=skip, dtype=np.float64, ndmin=2)
        if data.shape[1] < 2:
            raise ValueError(f"{path}: a CSV needs feature columns and a last label column.")
        return data[:, :-1], data[:, -1]
    from sklearn.datasets import load_svmlight_file

    X, y = load_svmlight_file(str(path), dtype=np.float64)
    return X.tocsr(), y


def load_dataset(
    name: str, data_home: str | os.PathLike | None = None, *, download_if_missing: bool = True
) -> tuple[sp.csr_matrix | np.ndarray, np.ndarray]:
    """Load a dataset by name or path: what the command line's ``--data`` accepts.

    Parameters
    ----------
    name : str
        ``"breast_cancer"`` or ``"digits"`` (embedded), ``"20news"``, a LIBSVM name known to
        libsvmdata (``"a9a"``, ``"real-sim"``, ...), or the path of a LIBSVM or CSV file.
    data_home : str or path-like, optional
        Passed to :func:`load_20news` or :func:`load_libsvm`.
    download_if_missing : bool, default=True
        Passed to :func:`load_20news` or :func:`load_libsvm`.

    Returns
    -------
    X : ndarray or csr_matrix of float64
    y : ndarray of shape (n_samples,)
    """
    if name in EMBEDDED_DATASETS:
        return load_embedded(name)
    if name == "20news":
        return load_20news(data_home, download_if_missing=download_if_missing)
    if Path(name).is_file():
        return load_file(name)
    from libsvmdata.core import ALL_DATASETS

    if name in ALL_DATASETS:
        return load_libsvm(name, data_home, download_if_missing=download_if_missing)
    raise ValueError(
        f"Unknown dataset {name!r}: not embedded {EMBEDDED_DATASETS}, not '20news', not a "
        "libsvmdata name and not an existing file."
    )


def make_splits(
    n_samples: int, seed: int | None = 0, *, test_size: float = 0.1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / validation / test indices, drawn as the published SHINE code draws them.

    ``train_test_split(test_size=test_size, random_state=seed)`` separates the training part;
    the rest is halved by a second ``train_test_split(test_size=0.5, random_state=seed)``: its
    first half is the reported **test** set, its second half the **validation** set of the outer
    problem. With the default, 90% / 5% / 5%.

    Parameters
    ----------
    n_samples : int
        Number of samples to split.
    seed : int or None, default=0
        ``random_state`` of both splits.
    test_size : float, default=0.1
        Fraction held out from training, shared equally by validation and test.

    Returns
    -------
    train, validation, test : ndarray of int64
        Indices into the samples (``X[train]`` works for arrays and CSR matrices).
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}.")
    indices = np.arange(int(n_samples))
    train, rest = train_test_split(indices, test_size=test_size, random_state=seed)
    test, validation = train_test_split(rest, test_size=0.5, random_state=seed)
    return train, validation, test


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


def split_dataset(
    name: str,
    seed: int | None = 0,
    *,
    data_home: str | os.PathLike | None = None,
    download_if_missing: bool = True,
    test_size: float | None = None,
) -> dict[str, np.ndarray | sp.csr_matrix]:
    """Load a dataset and split it into train / validation / test, ready for tuning.

    What the command line and the comparison of tuning methods use: :func:`load_dataset`, then
    :func:`make_splits`. Dense features are standardized with the training part's statistics;
    sparse ones are used as they are.

    Parameters
    ----------
    name : str
        Any name or path :func:`load_dataset` accepts.
    seed : int or None, default=0
        Seed of the split.
    data_home : str or path-like, optional
        Passed to the loader.
    download_if_missing : bool, default=True
        Passed to the loader.
    test_size : float, optional
        Fraction held out for validation and test together. Default: the published 0.1 for
        sets of at least 5000 samples, 0.4 (60/20/20) for smaller ones, whose held-out parts
        would otherwise be tiny.

    Returns
    -------
    dict
        ``X_train, y_train, X_val, y_val, X_test, y_test``.
    """
    from sklearn.preprocessing import StandardScaler

    X, y = load_dataset(name, data_home, download_if_missing=download_if_missing)
    if test_size is None:
        test_size = 0.1 if X.shape[0] >= SMALL_DATASET else 0.4
    train, validation, test = make_splits(X.shape[0], seed, test_size=test_size)
    if not sp.issparse(X):
        X = StandardScaler().fit(X[train]).transform(X)
    return {
        "X_train": X[train],
        "y_train": y[train],
        "X_val": X[validation],
        "y_val": y[validation],
        "X_test": X[test],
        "y_test": y[test],
    }
