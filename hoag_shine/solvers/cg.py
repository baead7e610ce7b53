"""Conjugate gradient for symmetric positive-definite systems given by a matrix-vector product."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._array import dot, norm

__all__ = ["CGResult", "conjugate_gradient"]


@dataclass
class CGResult:
    """Solution of ``A x = b`` by :func:`conjugate_gradient`.

    Attributes
    ----------
    x : array
        Approximate solution.
    n_iter : int
        Iterations (one matrix-vector product each, plus one for a nonzero start).
    residual_norm : float
        ``||b - A x||`` (the recursively updated residual), in the norm of the stopping test.
    converged : bool
        True when ``residual_norm <= max(rtol * ||b||, atol)``.
    """

    x: Any
    n_iter: int
    residual_norm: float
    converged: bool


def conjugate_gradient(
    matvec: Callable[[Any], Any],
    b,
    x0=None,
    *,
    rtol: float = 1e-6,
    atol: float = 0.0,
    max_iter: int | None = None,
    vector_norm: Callable[[Any], float] | None = None,
) -> CGResult:
    """Solve ``A x = b`` for symmetric positive-definite ``A`` given as ``matvec``.

    Parameters
    ----------
    matvec : callable
        ``v -> A v``.
    b : array
        Right-hand side.
    x0 : array, optional
        Starting point (warm start); zero when omitted.
    rtol, atol : float
        Stop when ``||r|| <= max(rtol * ||b||, atol)``.
    max_iter : int, optional
        Maximum iterations; defaults to the dimension of ``b``.
    vector_norm : callable, optional
        ``v -> float``: the norm ``||.||`` of the stopping test, e.g. a problem's
        ``relative_gradient_norm`` when ``b`` is a gradient whose blocks have different
        scales. Default: the Euclidean norm.

    Returns
    -------
    CGResult
    """
    if max_iter is None:
        max_iter = b.shape[0]
    measure = norm if vector_norm is None else vector_norm
    threshold = max(rtol * measure(b), atol)
    if x0 is None:
        x = b * 0.0
        r = b * 1.0
    else:
        x = x0 * 1.0
        r = b - matvec(x)
    rr = dot(r, r)

    def residual_norm() -> float:
        return math.sqrt(rr) if vector_norm is None else vector_norm(r)

    p = r * 1.0
    n_iter = 0
    while residual_norm() > threshold and n_iter < max_iter:
        ap = matvec(p)
        curvature = dot(p, ap)
        if not (math.isfinite(curvature) and curvature > 0):
            break
        step = rr / curvature
        x += step * p
        r -= step * ap
        rr_new = dot(r, r)
        p = r + (rr_new / rr) * p
        rr = rr_new
        n_iter += 1
    residual = residual_norm()
    return CGResult(x=x, n_iter=n_iter, residual_norm=residual, converged=residual <= threshold)
