"""Thin array layer shared by the numpy and torch backends.

The algorithms (L-BFGS, Broyden, CG, the hypergradient strategies, the outer loop) only need
vector operations. They are written once against the Python array API: ``namespace(x)``
returns a module with the same functions for numpy arrays and torch tensors. The few helpers
below exist because the array API has no BLAS dot product, no in-place ``axpy``, no scalar
conversion and no conversion between backends; each has a fast path for numpy and for torch
(one fused kernel, no host transfer beyond the Python float it returns). Only numpy's own BLAS
is called on the hot paths (see :func:`axpy`).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_numpy_namespace, is_torch_array

__all__ = [
    "all_finite",
    "as_like",
    "axpy",
    "copy",
    "dot",
    "eps",
    "is_numpy",
    "limit_blas_threads",
    "namespace",
    "norm",
    "solve_triangular",
    "to_float",
    "to_numpy",
]


def limit_blas_threads(limit: int | None):
    """A context in which the BLAS libraries run at most ``limit`` threads (no limit for None).

    The solves of a problem whose products with ``X`` are scipy.sparse kernels (single-threaded)
    use BLAS only for vector operations (dot products, the L-BFGS memory's matrix-vector
    products), where threads add synchronization and gain nothing. With the default threads and
    another process on the other core, the text pipeline's fit took 10.9-11.4 s against 4.5 s
    under one thread (see ``docs/decisions.rst``).
    """
    if limit is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=limit, user_api="blas")


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
    if is_torch_array(a) and a.ndim == 1 and b.ndim == 1 and a.dtype == b.dtype:
        return float(a.dot(b))  # one BLAS call, no temporary
    xp = array_namespace(a, b)
    return float(xp.sum(a * b))


def norm(a) -> float:
    """Euclidean norm of a vector, as a Python float."""
    if isinstance(a, np.ndarray):
        return float(np.sqrt(np.dot(a, a)))
    xp = array_namespace(a)
    return float(xp.linalg.vector_norm(a))


def axpy(a: float, x, y):
    """``y += a * x`` in place; returns ``y``.

    numpy: elementwise, not scipy's BLAS ``daxpy``. scipy and numpy ship separate OpenBLAS
    libraries with separate thread pools; alternating calls into both make each wait for the
    other's spinning threads (a two-loop recursion of 10 pairs took 164 ms instead of 2 ms on
    two cores with the default threads), while the elementwise update costs twice a daxpy's
    microseconds and no synchronization.
    """
    if isinstance(y, np.ndarray):
        y += a * x
        return y
    if hasattr(y, "add_"):  # torch
        return y.add_(x, alpha=a)
    y += a * x
    return y


def solve_triangular(a, b, *, lower: bool = False, transpose: bool = False):
    """Solve ``a x = b`` (or ``a^T x = b``) for a small triangular matrix ``a`` and a vector ``b``.

    LAPACK's ``trtrs`` for numpy, ``torch.linalg.solve_triangular`` on the tensors' device for
    torch (no transfer to the host).
    """
    if isinstance(a, np.ndarray):
        from scipy.linalg import solve_triangular as _solve

        return _solve(a, b, lower=lower, trans=1 if transpose else 0, check_finite=False)
    if is_torch_array(a):
        import torch

        matrix = a.T if transpose else a
        upper = lower if transpose else not lower
        return torch.linalg.solve_triangular(matrix, b[:, None], upper=upper)[:, 0]
    xp = array_namespace(a, b)
    return xp.linalg.solve(a.T if transpose else a, b)


def to_float(x) -> float:
    """Convert a 0-d array or tensor (or a Python number) to a Python float."""
    return float(x)


def all_finite(a) -> bool:
    """True when every entry of ``a`` is finite."""
    if isinstance(a, np.ndarray):
        return bool(np.isfinite(a).all())
    if is_torch_array(a):
        # 0 * x is 0 for a finite x and NaN for an infinite or NaN one, so the sum is finite
        # exactly when every entry is; on a CPU this is several times faster than
        # isfinite().all() (no boolean temporary), and it is one scalar on a GPU too.
        return math.isfinite(float((a * 0).sum()))
    xp = array_namespace(a)
    return bool(xp.all(xp.isfinite(a)))


def copy(a):
    """An independent copy of an array or tensor (same backend, dtype and device)."""
    if isinstance(a, np.ndarray):
        return a.copy()
    if is_torch_array(a):
        return a.detach().clone()
    xp = array_namespace(a)
    return xp.asarray(a, copy=True)


def eps(a) -> float:
    """Machine epsilon of the floating dtype of ``a`` (float64's for other dtypes)."""
    if is_torch_array(a):
        import torch

        return float(torch.finfo(a.dtype).eps) if a.dtype.is_floating_point else _EPS64
    dtype = np.asarray(a).dtype if not hasattr(a, "dtype") else a.dtype
    try:
        return float(np.finfo(dtype).eps) if np.issubdtype(dtype, np.floating) else _EPS64
    except TypeError:
        return _EPS64


_EPS64 = float(np.finfo(np.float64).eps)


def as_like(x, like):
    """``x`` as an array of the backend, dtype and device of ``like`` (no copy when it is one).

    Converts between numpy arrays and torch tensors (a tensor is detached and moved to the
    host for a numpy ``like``), so a user may pass numpy warm starts to a torch problem.
    """
    if isinstance(like, np.ndarray):
        if isinstance(x, np.ndarray) and x.dtype == like.dtype:
            return x
        return np.asarray(to_numpy(x), dtype=like.dtype)
    if is_torch_array(like):
        import torch

        if is_torch_array(x):
            return x.detach().to(device=like.device, dtype=like.dtype)
        return torch.as_tensor(np.asarray(x), dtype=like.dtype, device=like.device)
    xp = array_namespace(like)
    return xp.asarray(x, dtype=like.dtype, device=_device(like))


def to_numpy(a) -> np.ndarray:
    """A numpy array on the host with the values of ``a`` (a tensor is detached and copied)."""
    if isinstance(a, np.ndarray):
        return a
    if is_torch_array(a):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _device(a):
    from array_api_compat import device

    return device(a)
