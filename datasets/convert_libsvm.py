"""Convert a LIBSVM text file into libsvmdata's cache format, for machines without network.

``libsvmdata.fetch_dataset(name)`` (and :func:`hoag_shine.datasets.load_libsvm`) read
``<home>/libsvm/<name>_X.npz`` and ``<home>/libsvm/<name>_y.npy``; this script writes those two
files from a LIBSVM file downloaded elsewhere (``.bz2`` is read directly). Never leave the raw
text file in ``<home>/libsvm``: libsvmdata deletes files it does not recognise and downloads.

Usage::

    python datasets/convert_libsvm.py real-sim.bz2 real-sim --home ~/data --n-features 20958
"""

from __future__ import annotations

import argparse
import bz2
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.datasets import load_svmlight_file


def convert(source: Path, name: str, home: Path, n_features: int | None = None) -> Path:
    """Write ``home/libsvm/name_X.npz`` (CSC, as libsvmdata stores it) and ``name_y.npy``."""
    opener = bz2.open if source.suffix == ".bz2" else open
    with opener(source, "rb") as handle:
        X, y = load_svmlight_file(handle, n_features=n_features, dtype=np.float64)
    folder = home / "libsvm"
    folder.mkdir(parents=True, exist_ok=True)
    sp.save_npz(folder / f"{name}_X.npz", X.tocsc())
    np.save(folder / f"{name}_y.npy", y)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="LIBSVM text file (optionally .bz2)")
    parser.add_argument("name", help="libsvmdata's name for it (real-sim, a9a, a9a_test, ...)")
    parser.add_argument("--home", type=Path, default=Path.home() / "data", help="LIBSVMDATA_HOME")
    parser.add_argument("--n-features", type=int, default=None, help="pad to this many columns")
    args = parser.parse_args()
    folder = convert(args.source, args.name, args.home, args.n_features)
    print(
        f"wrote {args.name}_X.npz and {args.name}_y.npy in {folder}; "
        f"set LIBSVMDATA_HOME={args.home}"
    )


if __name__ == "__main__":
    main()
