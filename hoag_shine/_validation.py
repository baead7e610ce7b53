"""Input validation shared by problems and criteria."""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_array, check_consistent_length
from sklearn.utils.multiclass import type_of_target

__all__ = ["binary_labels", "check_data", "check_sample_weight"]


def check_data(X, y, *, dtype=(np.float64, np.float32)):
    """Validate a design matrix and targets; sparse X becomes CSR and stays sparse.

    Raises ``ValueError`` for NaN/inf, empty input, non-2-D X and mismatched lengths.
    The inputs are never modified: a copy is made only where a conversion is needed.
    """
    X = check_array(X, accept_sparse="csr", dtype=dtype, ensure_all_finite=True)
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D, got an array of shape {y.shape}.")
    check_consistent_length(X, y)
    return X, y


def check_sample_weight(sample_weight, n_samples: int, dtype) -> np.ndarray | None:
    """Validate sample weights (non-negative, finite, not all zero); None stays None."""
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=dtype)
    if w.ndim == 0:
        w = np.full(n_samples, float(w), dtype=dtype)
    if w.shape != (n_samples,):
        raise ValueError(f"sample_weight must have shape ({n_samples},), got {w.shape}.")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
        raise ValueError("sample_weight must be finite, non-negative and not all zero.")
    return w


def binary_labels(y, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """Map two labels to {-1, +1} as scikit-learn does (``classes[1]`` is the positive class).

    Parameters
    ----------
    y : array-like
        Labels.
    classes : array-like of length 2, optional
        The two classes, in order. Needed when ``y`` holds only one of them (a small
        validation fold); inferred from ``y`` otherwise.

    Returns
    -------
    signs : ndarray of float64 in {-1, +1}
    classes : ndarray of the two classes
    """
    y = np.asarray(y)
    if y.dtype.kind in "fc" and not np.all(np.isfinite(y)):
        raise ValueError("y contains NaN or infinity; labels must be finite.")
    if classes is None:
        target = type_of_target(y)
        if target not in ("binary", "multiclass"):
            raise ValueError(f"Classification needs discrete labels, got target type {target!r}.")
        classes = np.unique(y)
        if classes.shape[0] < 2:
            raise ValueError(
                f"Binary classification needs two classes in y, got only {classes.tolist()}."
            )
    else:
        classes = np.asarray(classes)
        unknown = np.setdiff1d(np.unique(y), classes)
        if unknown.size:
            raise ValueError(f"y contains labels {unknown.tolist()} not in classes.")
    if classes.shape[0] != 2:
        raise ValueError(
            f"Binary classification needs exactly two classes, got {classes.shape[0]}: "
            f"{classes.tolist()}."
        )
    signs = np.where(y == classes[1], 1.0, -1.0)
    return signs, classes
