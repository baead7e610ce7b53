"""Thin array layer shared by the numpy and torch backends.

The algorithms (L-BFGS, Broyden, CG, the hypergradient strategies, the outer loop) only need
vector operations. They are written once against the Python array API: ``namespace(x)``
returns a module with the same functions for numpy arrays and torch tensors. The few helpers
below exist because the array API has no BLAS dot product and no scalar conversion.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_numpy_namespace
from scipy.linalg.blas import daxpy as _daxpy

__all__ = ["all_finite", "axpy", "dot", "is_numpy", "namespace", "norm", "to_float"]


def namespace(*arrays: Any):
    """Array-API namespace of ``arrays`` (numpy arrays and torch tensors)."""
    return array_namespace(*arrays)


def is_numpy(xp) -> bool:
    """True when ``xp`` is the numpy namespace (the scipy/LinearOperator world)."""
    return is_numpy_namespace(xp)


def dot(a, b) -> float:
    """Inner product of two vectors, as a Python float."""
    if isinstance(a, np.ndarray):
        return float(np.dot(a, b))
    xp = array_namespace(a, b)
    return float(xp.sum(a * b))


def norm(a) -> float:
    """Euclidean norm of a vector, as a Python float."""
    if isinstance(a, np.ndarray):
        return float(np.sqrt(np.dot(a, a)))
    xp = array_namespace(a)
    return float(xp.linalg.vector_norm(a))


def axpy(a: float, x, y):
    """``y += a * x`` in place (BLAS for float64 numpy, no temporary); returns ``y``."""
    if isinstance(y, np.ndarray):
        if y.dtype == np.float64 and x.dtype == np.float64 and y.flags.c_contiguous:
            return _daxpy(x, y, a=a)
        y += a * x
        return y
    if hasattr(y, "add_"):  # torch
        return y.add_(x, alpha=a)
    y += a * x
    return y


def to_float(x) -> float:
    """Convert a 0-d array or tensor (or a Python number) to a Python float."""
    return float(x)


def all_finite(a) -> bool:
    """True when every entry of ``a`` is finite."""
    if isinstance(a, np.ndarray):
        return bool(np.isfinite(a).all())
    xp = array_namespace(a)
    return bool(xp.all(xp.isfinite(a)))
