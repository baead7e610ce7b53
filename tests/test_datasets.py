"""Dataset loaders and splits, against the offline copies in ``../shared/data``.

The real loaders run on those copies (20news through scikit-learn's own fetcher, a9a through
libsvmdata); the paths that would need the network are checked for their error messages.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import dump_svmlight_file, load_breast_cancer
from sklearn.model_selection import train_test_split

from hoag_shine import datasets
from hoag_shine.datasets import (
    load_20news,
    load_dataset,
    load_embedded,
    load_fashion_mnist,
    load_file,
    load_libsvm,
    make_splits,
    split_dataset,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"offline data copies not found at {SHARED_DATA}"
)


# -- splits ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_make_splits_matches_the_published_procedure(seed):
    n = 1000
    X = np.arange(n)[:, None].astype(float)
    y = np.arange(n) % 2
    # The published code: split X and y, then halve the rest; first half test, second validation.
    X_train, X_rest, _, y_rest = train_test_split(X, y, test_size=0.1, random_state=seed)
    X_test, X_val, _, _ = train_test_split(X_rest, y_rest, test_size=0.5, random_state=seed)
    train, validation, test = make_splits(n, seed)
    np.testing.assert_array_equal(X[train], X_train)
    np.testing.assert_array_equal(X[validation], X_val)
    np.testing.assert_array_equal(X[test], X_test)


def test_make_splits_partition_sizes_and_determinism():
    train, validation, test = make_splits(18846, 3)
    assert (len(train), len(validation), len(test)) == (16961, 943, 942)
    joined = np.concatenate([train, validation, test])
    np.testing.assert_array_equal(np.sort(joined), np.arange(18846))
    again = make_splits(18846, 3)
    for first, second in zip((train, validation, test), again, strict=True):
        np.testing.assert_array_equal(first, second)
    assert not np.array_equal(make_splits(18846, 4)[1], validation)
    train, validation, test = make_splits(500, 0, test_size=0.4)
    assert (len(train), len(validation), len(test)) == (300, 100, 100)
    with pytest.raises(ValueError, match="test_size"):
        make_splits(100, 0, test_size=1.5)


def test_split_dataset_standardizes_dense_on_the_training_part():
    X, y = load_embedded()
    data = split_dataset("breast_cancer", 2)
    train, validation, test = make_splits(len(y), 2, test_size=0.4)  # small set: 60/20/20
    assert data["X_train"].shape == (len(train), 30)
    np.testing.assert_allclose(data["X_train"].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(data["X_train"].std(axis=0), 1.0, rtol=1e-12)
    mean, std = X[train].mean(axis=0), X[train].std(axis=0)
    np.testing.assert_allclose(data["X_test"], (X[test] - mean) / std, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(data["y_val"], y[validation])
    assert len(split_dataset("breast_cancer", 2, test_size=0.1)["y_test"]) == len(
        make_splits(len(y), 2)[2]
    )


# -- embedded and files ------------------------------------------------------------------------
def test_load_embedded():
    X, y = load_embedded()
    assert X.shape == (569, 30) and X.dtype == np.float64 and set(np.unique(y)) == {0, 1}
    X, y = load_embedded("digits")
    assert X.shape == (1797, 64) and len(np.unique(y)) == 10
    with pytest.raises(ValueError, match="breast_cancer"):
        load_embedded("iris")


def test_load_file_csv_with_and_without_header(tmp_path):
    X, y = load_breast_cancer(return_X_y=True)
    data = np.column_stack([X[:50], y[:50]])
    plain = tmp_path / "plain.csv"
    np.savetxt(plain, data, delimiter=",")
    headed = tmp_path / "headed.csv"
    np.savetxt(headed, data, delimiter=",", header=",".join(f"f{i}" for i in range(31)))
    for path in (plain, headed):
        X_read, y_read = load_file(path)
        np.testing.assert_allclose(X_read, X[:50], rtol=1e-15)
        np.testing.assert_array_equal(y_read, y[:50])
    one_column = tmp_path / "one.csv"
    np.savetxt(one_column, y[:10], delimiter=",")
    with pytest.raises(ValueError, match="label column"):
        load_file(one_column)
    with pytest.raises(FileNotFoundError, match="No data file"):
        load_file(tmp_path / "absent.csv")


def test_load_file_libsvm_stays_sparse(tmp_path):
    X = sp.random(40, 25, density=0.1, format="csr", random_state=0)
    y = np.where(np.arange(40) % 3 == 0, 1.0, -1.0)
    path = tmp_path / "data.svm"
    dump_svmlight_file(X, y, str(path))
    X_read, y_read = load_file(path)
    assert sp.issparse(X_read) and X_read.format == "csr"
    assert X_read.shape[0] == 40
    np.testing.assert_allclose(X_read.toarray(), X.toarray()[:, : X_read.shape[1]])
    np.testing.assert_array_equal(y_read, y)
    X_again, _ = load_dataset(str(path))
    assert (X_again != X_read).nnz == 0


def test_load_dataset_dispatch_and_unknown_name():
    X, _ = load_dataset("breast_cancer")
    assert X.shape == (569, 30)
    with pytest.raises(ValueError, match="Unknown dataset 'no-such-set'"):
        load_dataset("no-such-set")


# -- LIBSVM through libsvmdata -----------------------------------------------------------------
@needs_shared
def test_load_libsvm_a9a_offline():
    X, y = load_libsvm("a9a", SHARED_DATA, download_if_missing=False)
    assert X.shape == (32561, 123) and sp.issparse(X) and X.format == "csr"
    assert X.dtype == np.float64
    assert set(np.unique(y)) == {-1.0, 1.0}
    # libsvmdata's cache is CSC; the loader gives the same matrix in CSR.
    stored = sp.load_npz(SHARED_DATA / "libsvm" / "a9a_X.npz")
    assert (X != stored.tocsr()).nnz == 0
    X_test, _ = load_dataset("a9a_test", SHARED_DATA)
    assert X_test.shape == (16281, 123)


def test_load_libsvm_missing_cache_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"real-sim.*LIBSVMDATA_HOME"):
        load_libsvm("real-sim", tmp_path, download_if_missing=False)
    with pytest.raises(ValueError, match="does not know"):
        load_libsvm("no-such-set", tmp_path)


def test_load_libsvm_failed_download_is_explained(tmp_path, monkeypatch):
    from libsvmdata.core import ALL_DATASETS

    dataset = ALL_DATASETS["real-sim"]
    before = dataset.dataset_dir

    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(dataset, "get_X_y", offline)
    with pytest.raises(FileNotFoundError, match=r"could not be downloaded.*name resolution"):
        load_libsvm("real-sim", tmp_path)
    assert dataset.dataset_dir == before  # the loader puts libsvmdata's folder back


# -- 20news through scikit-learn's fetcher ------------------------------------------------------
@pytest.fixture(scope="module")
def news_home(tmp_path_factory):
    archive = SHARED_DATA / "scikit_learn_data" / "20news-bydate_py3.pkz"
    if not archive.is_file():
        pytest.skip(f"no offline 20news archive at {archive}")
    home = tmp_path_factory.mktemp("scikit_learn_data")
    shutil.copy(archive, home / archive.name)  # the fetcher writes its cache beside it
    return home


@needs_shared
def test_load_20news_offline(news_home):
    X, y = load_20news(news_home, download_if_missing=False)
    assert X.shape == (18846, 130107) and X.format == "csr" and X.dtype == np.float64
    assert set(np.unique(y)) == {0, 1}
    from sklearn.datasets import fetch_20newsgroups_vectorized

    test = fetch_20newsgroups_vectorized(
        subset="test", data_home=news_home, download_if_missing=False
    )
    # train first, then test; label target >= 10
    np.testing.assert_array_equal(y[-7532:], (test.target >= 10).astype(int))
    assert (X[-7532:] != test.data).nnz == 0


def test_load_20news_missing_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="SCIKIT_LEARN_DATA"):
        load_20news(tmp_path, download_if_missing=False)


@needs_shared
def test_fashion_mnist_offline_copy():
    images, labels = load_fashion_mnist(SHARED_DATA / "fashion-mnist", kind="test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10


def test_public_names_are_documented():
    for name in datasets.__all__:
        assert getattr(datasets, name).__doc__ or name.isupper()
