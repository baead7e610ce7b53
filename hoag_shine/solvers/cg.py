"""Conjugate gradient for symmetric positive-definite systems given by a matrix-vector product."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._array import axpy, dot, norm

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
        True when ``residual_norm <= max(rtol * ||b||, atol)``, or when ``stop_when`` ended
        the iterations.
    stopped_early : bool
        True when ``stop_when`` ended the iterations.
    """

    x: Any
    n_iter: int
    residual_norm: float
    converged: bool
    stopped_early: bool = False


def conjugate_gradient(
    matvec: Callable[[Any], Any],
    b,
    x0=None,
    *,
    rtol: float = 1e-6,
    atol: float = 0.0,
    max_iter: int | None = None,
    vector_norm: Callable[[Any], float] | None = None,
    stop_when: Callable[[Any, Any], bool] | None = None,
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
    stop_when : callable, optional
        ``(x, r) -> bool``, an extra stopping test after each iteration on the iterate and its
        residual ``r = b - A x``, e.g. a goal-oriented test on the one quantity computed from
        ``x`` (see :func:`~hoag_shine.hypergradient`). Default: none.

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
    stopped_early = False
    while residual_norm() > threshold and n_iter < max_iter and not stopped_early:
        ap = matvec(p)
        curvature = dot(p, ap)
        if not (math.isfinite(curvature) and curvature > 0):
            break
        step = rr / curvature
        axpy(step, p, x)
        axpy(-step, ap, r)
        rr_new = dot(r, r)
        # p = r + beta p, in place (no new vector per iteration)
        p *= rr_new / rr
        p += r
        rr = rr_new
        n_iter += 1
        stopped_early = stop_when is not None and bool(stop_when(x, r))
    residual = residual_norm()
    return CGResult(
        x=x,
        n_iter=n_iter,
        residual_norm=residual,
        converged=residual <= threshold or stopped_early,
        stopped_early=stopped_early,
    )
