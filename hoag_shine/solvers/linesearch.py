"""Strong-Wolfe line search on a scalar function of the step length.

The search only sees ``phi(t) = f(x + t d)`` and its derivative, so it is independent of the
array backend. It brackets a step with sufficient decrease and then zooms in with safeguarded
cubic interpolation (the bracketing/zoom scheme of Nocedal and Wright, chapter 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["LineSearchResult", "strong_wolfe"]


@dataclass
class LineSearchResult:
    """Outcome of a line search.

    Attributes
    ----------
    step : float
        Accepted step length (the best one tried when ``success`` is False).
    value, slope : float
        ``phi(step)`` and ``phi'(step)``.
    payload : object
        Whatever the evaluation returned beside the value and slope at ``step`` (the gradient).
    n_evals : int
        Number of evaluations of ``phi``.
    success : bool
        True when both strong-Wolfe conditions hold at ``step``.
    """

    step: float
    value: float
    slope: float
    payload: Any
    n_evals: int
    success: bool


def _cubic_minimizer(a, fa, ga, b, fb, gb) -> float | None:
    """Minimizer of the cubic interpolating (a, fa, ga) and (b, fb, gb), or None."""
    d1 = ga + gb - 3.0 * (fa - fb) / (a - b)
    disc = d1 * d1 - ga * gb
    if disc < 0:
        return None
    d2 = math.copysign(math.sqrt(disc), b - a)
    denom = gb - ga + 2.0 * d2
    if denom == 0:
        return None
    t = b - (b - a) * (gb + d2 - d1) / denom
    return t if math.isfinite(t) else None


def strong_wolfe(
    phi: Callable[[float], tuple[float, float, Any]],
    value0: float,
    slope0: float,
    step0: float = 1.0,
    *,
    c1: float = 1e-4,
    c2: float = 0.9,
    max_evals: int = 25,
    max_step: float = 1e10,
    value_noise: float = 1e-10,
) -> LineSearchResult:
    """Find a step satisfying the strong Wolfe conditions.

    Parameters
    ----------
    phi : callable
        ``phi(t) -> (value, slope, payload)`` with ``slope = phi'(t)``.
    value0, slope0 : float
        ``phi(0)`` and ``phi'(0)``; ``slope0`` must be negative (a descent direction).
    step0 : float
        First trial step.
    c1, c2 : float
        Sufficient-decrease and curvature constants, ``0 < c1 < c2 < 1``.
    max_evals : int
        Maximum number of evaluations of ``phi``.
    max_step : float
        Largest step the bracketing phase may try.
    value_noise : float
        Relative round-off level of ``phi``. Near a minimizer the decrease is below round-off and
        cannot be seen in the values; a step whose value is within ``value_noise * |phi(0)|`` of
        ``phi(0)`` then counts as a decrease (the "approximate Wolfe" rule of Hager and Zhang),
        and the slope conditions decide.

    Returns
    -------
    LineSearchResult
        When no strong-Wolfe step is found, the step with the lowest value that satisfies
        sufficient decrease is returned with ``success=False`` (``step=0`` if there is none).
    """
    if not slope0 < 0:
        return LineSearchResult(0.0, value0, slope0, None, 0, False)

    noise = value_noise * abs(value0)

    def decrease_ok(t, value):
        return value <= value0 + c1 * t * slope0 or value <= value0 + noise

    n_evals = 0
    best = LineSearchResult(0.0, value0, slope0, None, 0, False)

    def evaluate(t):
        nonlocal n_evals, best
        n_evals += 1
        value, slope, payload = phi(t)
        if not (math.isfinite(value) and math.isfinite(slope)):
            value, slope = math.inf, math.inf
        if decrease_ok(t, value) and value < best.value:
            best = LineSearchResult(t, value, slope, payload, n_evals, False)
        return value, slope, payload

    def wolfe_ok(t, value, slope):
        return decrease_ok(t, value) and abs(slope) <= -c2 * slope0

    def zoom(lo, flo, glo, hi, fhi, ghi):
        # Invariant: lo satisfies sufficient decrease with the lowest value so far, and
        # glo * (hi - lo) < 0, so a minimizer lies between lo and hi.
        while n_evals < max_evals:
            width = hi - lo
            t = _cubic_minimizer(lo, flo, glo, hi, fhi, ghi)
            # Keep the trial away from ``hi`` (10% of the interval) so the bracket shrinks, but
            # not from ``lo``: a huge curvature needs a step many orders of magnitude below the
            # first trial, which bisection would take dozens of evaluations to reach.
            if t is None or not (0 < (t - lo) / width < 0.9):
                t = lo + 0.5 * width
            value, slope, payload = evaluate(t)
            if not decrease_ok(t, value) or value > flo + noise:
                hi, fhi, ghi = t, value, slope
            else:
                if abs(slope) <= -c2 * slope0:
                    return LineSearchResult(t, value, slope, payload, n_evals, True)
                if slope * (hi - lo) >= 0:
                    hi, fhi, ghi = lo, flo, glo
                lo, flo, glo = t, value, slope
            if abs(hi - lo) <= 1e-16 * max(1.0, abs(lo)):
                break
        return None

    prev_t, prev_f, prev_g = 0.0, value0, slope0
    t = min(step0, max_step)
    while n_evals < max_evals:
        value, slope, payload = evaluate(t)
        if not decrease_ok(t, value) or (n_evals > 1 and value > prev_f + noise):
            found = zoom(prev_t, prev_f, prev_g, t, value, slope)
            break
        if wolfe_ok(t, value, slope):
            return LineSearchResult(t, value, slope, payload, n_evals, True)
        if slope >= 0:
            found = zoom(t, value, slope, prev_t, prev_f, prev_g)
            break
        if t >= max_step:
            found = None
            break
        prev_t, prev_f, prev_g = t, value, slope
        t = min(2.0 * t, max_step)
    else:
        found = None

    if found is not None:
        return found
    best.n_evals = n_evals
    return best
