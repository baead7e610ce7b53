"""Input validation shared by problems and criteria."""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_array, check_consistent_length
from sklearn.utils.multiclass import type_of_target

__all__ = ["check_data", "check_sample_weight", "class_labels"]


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


def class_labels(y, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """Encode class labels as scikit-learn's logistic regression does.

    Two classes map to {-1, +1} (``classes[1]`` is the positive class); three or more map to
    their index in ``classes`` (for the multinomial model).

    Parameters
    ----------
    y : array-like
        Labels.
    classes : array-like, optional
        The classes, in order. Needed when ``y`` lacks some of them (a small cross-validation
        fold); ``np.unique(y)`` otherwise.

    Returns
    -------
    targets : ndarray
        float64 signs in {-1, +1} for two classes, int64 indices otherwise.
    classes : ndarray
        The classes.
    """
    y = np.asarray(y)
    if y.dtype.kind in "fc" and not np.all(np.isfinite(y)):
        raise ValueError("y contains NaN or infinity; labels must be finite.")
    if classes is None:
        target = type_of_target(y)
        if target not in ("binary", "multiclass"):
            raise ValueError(f"Classification needs discrete labels, got target type {target!r}.")
        classes = np.unique(y)
    else:
        classes = np.asarray(classes)
        unknown = np.setdiff1d(np.unique(y), classes)
        if unknown.size:
            raise ValueError(f"y contains labels {unknown.tolist()} not in classes.")
    if classes.shape[0] < 2:
        raise ValueError(
            f"Classification needs at least two classes, got only {classes.tolist()}; pass "
            "classes= when a subset of the data lacks some of them."
        )
    if classes.shape[0] == 2:
        return np.where(y == classes[1], 1.0, -1.0), classes
    order = np.argsort(classes)
    return order[np.searchsorted(classes, y, sorter=order)].astype(np.int64), classes
