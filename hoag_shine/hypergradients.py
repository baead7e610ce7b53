"""Hypergradients of a held-out criterion with respect to ``log_alpha``.

By the implicit function theorem, with ``w*`` the inner solution and ``H`` the inner Hessian,

    d outer / d log_alpha = - (d^2 r / d log_alpha d w)^T q,    q = H^{-1} grad_w outer(w*).

The strategies differ in how they obtain ``q`` (the adjoint):

``"cg"``
    conjugate gradient on Hessian-vector products (HOAG), warm-started from ``q0``.
``"shine"``
    ``q = H_qN v`` with the inverse estimate the inner L-BFGS built anyway: no extra product.
``"shine-opa"``
    SHINE with outer-problem awareness: the inner solve adds secant pairs along ``H_k v``, so
    the estimate is accurate in the direction that matters (a few extra gradients).
``"shine-refine"``
    SHINE's ``q`` as the starting point of a few CG iterations.
``"jacobian-free"``
    ``q = v`` (``H^{-1} ~ I``): a cheap baseline.

The SHINE variants are checked by a safeguard that costs one Hessian-vector product. With
``beta = v^T H q / ||H q||^2``, the scale that minimizes ``||beta H q - v||``, and
``beta_E = q^T v / q^T H q``, the scale that minimizes the error in the ``H`` norm:

- when ``q`` is not finite, ``q^T H q <= 0`` or ``beta <= 0``, or when the residual of the best
  multiple of ``q``, ``||beta H q - v|| / ||v||`` (the sine of the angle between ``H q`` and
  ``v``), exceeds ``safeguard_threshold``, a CG solve replaces ``q`` (``"+fallback-cg"``);
- otherwise, when both ``beta`` and ``beta_E`` lie outside ``[1/2, 2]`` on the same side (the
  norm of ``q`` is off), ``q`` is rescaled to ``beta_E q`` (``"+rescaled"``);
- with a tangent ``t ~ dw*/dlog_alpha`` of the solution path (scalar ``log_alpha``; the outer
  searches pass the secant of two solutions), the hypergradient's error, ``t . (H q - v)`` to
  first order, must also be at most ``safeguard_threshold`` times the hypergradient, or CG
  replaces ``q``: near the minimizer the hypergradient vanishes, and a residual small in norm
  can flip its sign (on 20news, SHINE-OPA gave +1.5e-2 where CG gave -1e-3, and the search
  ended 1% above its best test loss).

``info["backward"]`` says which happened.

Backends: the strategies only use vector operations (:mod:`hoag_shine._array`) and the
problem's and criterion's methods, so they run unchanged on numpy arrays and on torch tensors
(:mod:`hoag_shine.backends`); ``w``, ``v`` and ``q`` stay in the problem's backend and on its
device, ``log_alpha`` and the hypergradient live on the host as numpy arrays.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from ._array import all_finite, as_like, copy, dot, limit_blas_threads, norm, to_numpy
from .solvers import LBFGS, LBFGSMemory, LBFGSState, NewtonCG, conjugate_gradient

__all__ = [
    "METHODS",
    "HypergradientResult",
    "check_hypergradient",
    "finite_difference_hypergradient",
    "hypergradient",
]

#: Names accepted by ``method``.
METHODS = ("cg", "shine", "shine-opa", "shine-refine", "jacobian-free")

_SHINE_METHODS = ("shine", "shine-opa", "shine-refine")


@dataclass
class HypergradientResult:
    """Result of :func:`hypergradient`.

    Attributes
    ----------
    value : float
        Outer criterion at the inner solution.
    grad : ndarray
        ``d outer / d log_alpha``, of the shape of ``log_alpha``: a float64 numpy array on the
        host, whatever the problem's backend (like ``log_alpha``).
    coef : array
        Inner solution ``w*(log_alpha)``, in the problem's backend (a numpy array, or a torch
        tensor on the problem's device).
    q : array
        The adjoint ``~ H^{-1} grad_w outer`` that was used (a warm start for the next CG), in
        the problem's backend.
    inner_state : LBFGSState
        The inner solver's state, with its memory (a warm start for the next solve).
    info : dict
        Diagnostics: ``method``, ``backward`` (what produced ``q``, fallbacks included),
        ``inner_iter``, ``inner_converged``, ``n_fun_evals``, ``n_opa_evals``, ``n_hvp``,
        ``cg_iter``, ``adjoint_residual`` (relative, when computed), ``adjoint_scale``
        and ``adjoint_scale_residual`` (the safeguard's ``beta_E`` and ``beta``, when
        computed), ``value_error`` (the first-order error of ``value`` left by the inexact
        inner solution, ``|q . grad r(w)|``; see :func:`hypergradient`), ``time_inner``,
        ``time_backward`` (seconds), ``warnings`` (``(category, message)`` pairs).
    """

    value: float
    grad: np.ndarray
    coef: Any
    q: Any
    inner_state: LBFGSState = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict)


class _CountingOperator:
    """Hessian-vector products, built lazily and counted."""

    def __init__(self, factory: Callable[[], Callable[[Any], Any]]):
        self._factory = factory
        self._matvec = None
        self.count = 0

    def __call__(self, v):
        if self._matvec is None:
            self._matvec = self._factory()
        self.count += 1
        return self._matvec(v)


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"Unknown hypergradient method {method!r}; choose one of {METHODS}.")
    return method


def _check_compatible(inner, outer) -> None:
    """The criterion must see the same features (and classes) as the inner problem."""
    n_inner, n_outer = getattr(inner, "n_features", None), getattr(outer, "n_features", None)
    if n_inner is not None and n_outer is not None and n_inner != n_outer:
        raise ValueError(
            f"The inner problem has {n_inner} features but the outer criterion {n_outer}."
        )
    classes_inner = getattr(inner, "classes_", None)
    classes_outer = getattr(outer, "classes_", None)
    if classes_inner is not None and classes_outer is not None:
        if not np.array_equal(classes_inner, classes_outer):
            raise ValueError(
                f"The inner problem's classes {classes_inner.tolist()} differ from the "
                f"criterion's {classes_outer.tolist()}; pass classes=inner.classes_ to the "
                "criterion."
            )


#: Bytes the default OPA memory may take (its pairs are read twice per iteration and copied
#: at each warm start; see ``docs/decisions.rst``).
_OPA_MEMORY_BYTES = 32 * 2**20


def default_solver(method: str, n_params: int | None = None) -> LBFGS:
    """The inner L-BFGS used by :func:`hypergradient` for ``method`` when none is given.

    OPA gets a larger memory (its extra pairs would otherwise push out the solver's own) and an
    extra pair every 3 iterations plus two at the solution: 30 pairs, or as many as fit in
    32 MiB for ``n_params`` coefficients (at least 10; 16 on 20news), since on large problems
    each iteration reads the memory twice.

    Parameters
    ----------
    method : str
        Hypergradient method.
    n_params : int, optional
        Number of coefficients of the inner problem.

    Returns
    -------
    LBFGS
    """
    if method == "shine-opa":
        size = 30
        if n_params is not None:
            size = max(10, min(size, _OPA_MEMORY_BYTES // (16 * int(n_params))))
        return LBFGS(memory_size=size, opa_freq=3, opa_final=2)
    return LBFGS(memory_size=10)


def _problem_blas_threads(inner):
    """A context with the BLAS thread limit that solves of ``inner`` ask for,
    ``inner.blas_threads`` (no limit when the problem has no such attribute, e.g. the torch
    problems)."""
    return limit_blas_threads(getattr(inner, "blas_threads", None))


def _with_problem_blas_threads(function):
    """Run ``function(inner, ...)`` under ``_problem_blas_threads`` of ``inner``."""

    @functools.wraps(function)
    def wrapper(inner, *args, **kwargs):
        with _problem_blas_threads(inner):
            return function(inner, *args, **kwargs)

    return wrapper


@_with_problem_blas_threads
def hypergradient(
    inner,
    outer,
    log_alpha,
    *,
    method: str = "shine-opa",
    tol: float = 1e-6,
    coef0=None,
    memory: LBFGSMemory | None = None,
    memory_log_alpha=None,
    q0=None,
    solver: LBFGS | None = None,
    cg_tol: float | None = None,
    cg_max_iter: int = 1000,
    refine_iter: int = 5,
    safeguard: bool = True,
    safeguard_threshold: float = 0.5,
    tangent=None,
    grad_rtol: float = 0.1,
    emit_warnings: bool = True,
) -> HypergradientResult:
    """Solve the inner problem and return the hypergradient of the outer criterion.

    Parameters
    ----------
    inner : problem
        Inner problem, e.g. :class:`~hoag_shine.problems.LogisticRegressionProblem`.
    outer : criterion
        Outer criterion, e.g. :class:`~hoag_shine.criteria.HeldOutLogLoss`.
    log_alpha : float or ndarray
        Log of the penalty (scalar, or one per feature for a per-feature problem).
    method : {"cg", "shine", "shine-opa", "shine-refine", "jacobian-free"}
        How the adjoint ``q = H^{-1} grad_w outer`` is obtained (see the module docstring).
    tol : float
        Relative inner tolerance: L-BFGS stops when ``inner.relative_gradient_norm(g) <= tol``
        for its gradient ``g`` (for the built-in problems, each block of coefficients, the
        features' and the intercepts', relative to its own scale at ``w = 0``), or, for a
        problem without that method, when ``||g|| <= tol * inner.gradient_scale``; and when
        its quasi-Newton step, its estimate of the distance to the solution, is at most
        ``tol * ||w||`` (a warm start at a much smaller penalty can have a small gradient far
        from the solution, along directions of small curvature).
    coef0 : array, optional
        Warm start of the inner solution (not modified); converted to the backend, dtype and
        device of ``inner.init_coef()`` when it differs (numpy or torch).
    memory : LBFGSMemory, optional
        Warm start of the L-BFGS memory (copied, not modified).
    memory_log_alpha : float or ndarray, optional
        The ``log_alpha`` at which ``memory`` was built. When given (and the problem has
        ``penalty_weights``), the pairs are corrected exactly for the change of the quadratic
        penalty: ``y += (alpha - alpha_memory) * s``.
    q0 : array, optional
        Warm start of the CG adjoint solve (converted like ``coef0``).
    solver : LBFGS or NewtonCG, optional
        Inner solver configuration; its ``tol`` and ``gradient_norm`` are replaced as
        described above. Defaults to :func:`default_solver` of ``method``. A
        :class:`~hoag_shine.solvers.NewtonCG` (truncated Newton on the problem's Hessian
        products, several times faster than L-BFGS at small penalties) builds no inverse
        estimate: it serves ``method="cg"`` only, and ignores ``memory``.
    cg_tol : float, optional
        Relative residual tolerance of CG (``cg``, ``shine-refine`` and the safeguard's
        fallback), with the residual measured like the inner gradient:
        ``m(v - H q) <= cg_tol * m(v)`` for the stopping measure ``m`` described under
        ``tol``; defaults to ``tol``.
    cg_max_iter : int
        Maximum CG iterations (in floating point, CG may need more than the dimension).
    refine_iter : int
        CG iterations of ``shine-refine``.
    safeguard : bool
        Check SHINE's adjoint and fall back to CG when it is unusable.
    safeguard_threshold : float
        Largest accepted residual ``m(beta H q - v) / m(v)`` of the best multiple of SHINE's
        adjoint, in the stopping measure ``m`` described under ``tol`` (see the module
        docstring).
    tangent : array, optional
        For a scalar ``log_alpha``: an estimate of the tangent ``dw*/dlog_alpha`` of the
        solution path, e.g. the secant of two solutions a search has found (the searches of
        :func:`~hoag_shine.solve_bilevel` pass it). The hypergradient's error from the
        adjoint's residual is ``tangent . (H q - v)`` to first order (exact with the exact
        tangent, ``-H^{-1} d(grad_w inner)/dlog_alpha``). With a tangent, the safeguard also
        falls back to CG when that estimate exceeds ``safeguard_threshold`` times the
        hypergradient: a residual small in norm can still flip the sign of a hypergradient
        that nearly vanishes. The estimate is in ``info["grad_error_estimate"]``. CG (of
        ``cg`` and of the fallback) then also stops as soon as the same estimate, for its
        iterate, stays below ``grad_rtol`` times the hypergradient on
        ``GOAL_STREAK`` consecutive iterations: the search needs the hypergradient, not the
        adjoint, to that accuracy (``info["cg_stop"]`` says which test stopped it).
    grad_rtol : float
        Relative accuracy of the hypergradient at which CG stops, with a ``tangent``.
    emit_warnings : bool
        Emit the warnings below. When False they are only collected in
        ``info["warnings"]`` as ``(category, message)`` pairs, for callers running in worker
        threads (``warnings.catch_warnings`` is not thread-safe).

    Returns
    -------
    HypergradientResult

    Warns
    -----
    ConvergenceWarning
        When the inner solver stops before reaching its tolerance (the best iterate is used),
        or when CG stops at ``cg_max_iter`` before its tolerance (its last iterate is used).
    """
    method = _check_method(method)
    _check_compatible(inner, outer)
    la = inner.check_log_alpha(log_alpha)
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a positive number, got {tol!r}.")
    base = (
        solver if solver is not None else default_solver(method, getattr(inner, "n_params", None))
    )
    measure = stopping_measure(inner)
    newton = isinstance(base, NewtonCG)
    if newton and method != "cg":
        raise ValueError(
            f"method={method!r} needs the inverse estimate of a quasi-Newton inner solver "
            "(LBFGS); a NewtonCG inner solver builds none and serves method='cg' only."
        )
    settings = {"tol": tol, "step_tol": tol, "gradient_norm": measure}
    if not newton:
        settings["opa_freq"] = base.opa_freq if method == "shine-opa" else None
    solver = replace(base, **settings)
    # The problem's zero vector fixes the backend, dtype and device; warm starts are brought
    # to them (a numpy warm start for a torch problem, say).
    zero = inner.init_coef()
    coef0 = zero if coef0 is None else as_like(coef0, zero)
    if q0 is not None:
        q0 = as_like(q0, zero)

    owned = False  # a memory of our own, that the solver may update in place
    if memory is not None and memory_log_alpha is not None and hasattr(inner, "penalty_weights"):
        memory = memory.shifted(inner.penalty_weights(la) - inner.penalty_weights(memory_log_alpha))
        owned = True

    start = time.perf_counter()
    if newton:
        state = solver.run(
            lambda w: inner.value_and_grad(w, la),
            coef0,
            hessian=lambda w: inner.hessian_operator(w, la),
        )
    else:
        state = solver.run(
            lambda w: inner.value_and_grad(w, la),
            coef0,
            memory=memory,
            opa_direction=outer.grad if method == "shine-opa" else None,
            take_memory=owned,
        )
    notes: list[tuple[type[Warning], str]] = []
    if not state.converged:
        if state.grad_norm <= tol:  # the step test failed: small gradient, long step
            detail = (
                f"relative gradient norm {state.grad_norm:.3g} <= {tol:.3g}, but the step, "
                "the estimate of the distance to the solution, is longer than tol * ||w||"
            )
        else:
            detail = f"relative gradient norm {state.grad_norm:.3g} > {tol:.3g}"
        notes.append(
            (
                ConvergenceWarning,
                f"Inner solver stopped before convergence ({state.message}; {detail} after "
                f"{state.n_iter} iterations). "
                "The hypergradient uses the last iterate; raise max_iter or loosen tol.",
            )
        )
    w = state.x
    time_inner = time.perf_counter() - start
    opa_incomplete = method == "shine-opa" and not state.converged and solver.opa_final > 0

    start = time.perf_counter()
    value, v = outer.value_and_grad(w)
    v_norm = max(measure(v), np.finfo(float).tiny)
    hessian = _CountingOperator(lambda: inner.hessian_operator(w, la))
    cg_tol = tol if cg_tol is None else cg_tol
    # Without convergence the solver adds no final OPA pairs: the estimate lacks them.
    backward_name = f"{method}+no-final-opa" if opa_incomplete else method
    info: dict[str, Any] = {"method": method, "backward": backward_name, "cg_iter": 0}

    goal = None
    if tangent is not None and np.ndim(la) == 0:
        goal = _HypergradientGoal(inner, w, la, as_like(tangent, w), grad_rtol)

    def run_cg(start_point, max_iter, warn=True, goal=None):
        # The residual has the units of a gradient: measured like the inner solver's.
        result = conjugate_gradient(
            hessian,
            v,
            start_point,
            rtol=cg_tol,
            max_iter=max_iter,
            vector_norm=measure,
            stop_when=goal,
        )
        info["cg_iter"] += result.n_iter
        info["cg_stop"] = "hypergradient estimate" if result.stopped_early else "residual"
        if warn and not result.converged:
            notes.append(
                (
                    ConvergenceWarning,
                    f"CG stopped at relative residual {result.residual_norm / v_norm:.3g} > "
                    f"{cg_tol:.3g} after {result.n_iter} iterations; raise cg_max_iter.",
                )
            )
        info["adjoint_residual"] = result.residual_norm / v_norm
        return result.x

    if method == "cg":
        q = run_cg(q0, cg_max_iter, goal=goal)
    elif method == "jacobian-free":
        q = copy(v)
    else:
        q = state.inverse_hessian.matvec(v)
        if method == "shine-refine":
            q = run_cg(q, refine_iter, warn=False)
        if safeguard:
            verdict, scale, hq = _check_adjoint(q, v, hessian, safeguard_threshold, info, measure)
            if verdict != "fallback" and goal is not None:
                used = scale if verdict == "rescale" else 1.0
                error, grad = goal.estimate(used * q, used * hq - v)
                info["grad_error_estimate"] = error
                if error > safeguard_threshold * grad:
                    verdict = "fallback"
            if verdict == "fallback":
                info["backward"] = f"{backward_name}+fallback-cg"
                h_start = None if hq is None else scale * hq
                start_point = _better_start(hessian, v, q0, scale * q, h_start, measure)
                q = run_cg(start_point, cg_max_iter, goal=goal)
            elif verdict == "rescale":
                info["backward"] = f"{backward_name}+rescaled"
                q = scale * q

    # The value is measured at the inexact w: f(w) - f(w*) = v . (w - w*) + O(|w - w*|^2), and
    # w - w* ~ H^{-1} grad r(w), so the first-order error is q . grad r(w) (with H^{-1} ~ gamma I
    # for the Jacobian-free adjoint, which is no inverse).
    adjoint = state.memory.gamma * v if method == "jacobian-free" else q
    info["value_error"] = abs(dot(adjoint, state.grad))
    # The hypergradient has the size of log_alpha and lives on the host, like log_alpha.
    cross = np.asarray(to_numpy(inner.cross_vjp(w, la, q)), dtype=np.float64)
    grad = np.asarray(-cross).reshape(np.shape(log_alpha))
    info.update(
        inner_iter=state.n_iter,
        inner_converged=state.converged,
        n_fun_evals=state.n_fun_evals,
        n_opa_evals=state.n_opa_evals,
        n_hvp=hessian.count + getattr(state, "n_hvp", 0),
        time_inner=time_inner,
        time_backward=time.perf_counter() - start,
        warnings=notes,
    )
    if emit_warnings:
        for category, message in notes:
            warnings.warn(message, category, stacklevel=2)
    return HypergradientResult(value=value, grad=grad, coef=w, q=q, inner_state=state, info=info)


#: Consecutive CG iterations on which the hypergradient's error estimate must stay below
#: ``grad_rtol``: with a secant tangent, a single small value can be a transient cancellation.
GOAL_STREAK = 3


class _HypergradientGoal:
    """CG's goal-oriented test for a scalar ``log_alpha``: ``(q, r) -> bool``.

    The hypergradient ``g(q) = -cross_vjp(w, q)`` is linear in ``q``, so its error is
    ``g(q) - g(q*) = tangent . r`` exactly for the exact tangent ``-H^{-1} alpha w`` and the
    residual ``r = v - H q``; with an estimated tangent it is a first-order estimate.
    """

    def __init__(self, inner, w, log_alpha, tangent, rtol: float):
        self.inner, self.w, self.log_alpha = inner, w, log_alpha
        self.tangent, self.rtol = tangent, rtol
        self.streak = 0

    def estimate(self, q, residual) -> tuple[float, float]:
        """``(|tangent . residual|, |g(q)|)``: the hypergradient's estimated error and size."""
        error = abs(dot(self.tangent, residual))
        grad = abs(float(np.sum(to_numpy(self.inner.cross_vjp(self.w, self.log_alpha, q)))))
        return error, grad

    def __call__(self, q, residual) -> bool:
        error, grad = self.estimate(q, residual)
        self.streak = self.streak + 1 if error <= self.rtol * grad else 0
        return self.streak >= GOAL_STREAK


def stopping_measure(inner) -> Callable[[Any], float]:
    """The inner solver's stopping measure for ``inner``: ``g -> float``, relative.

    The problem's own ``relative_gradient_norm`` when it has one (the built-in problems measure
    the features' and the intercepts' blocks separately), else ``||g|| / inner.gradient_scale``.

    Parameters
    ----------
    inner : problem
        An inner problem.

    Returns
    -------
    callable
    """
    measure = getattr(inner, "relative_gradient_norm", None)
    if measure is not None:
        return measure
    scale = inner.gradient_scale
    return lambda g: norm(g) / scale


def _better_start(hessian, v, q0, estimate, h_estimate, measure):
    """The start of the fallback CG: the warm start ``q0`` or SHINE's estimate (at its energy
    scale, CG's own first step along it; ``h_estimate`` is its product with the Hessian),
    whichever has the smaller residual (one more product, for ``q0``)."""
    if h_estimate is None or not all_finite(h_estimate):
        return q0
    if q0 is not None and measure(v - hessian(q0)) <= measure(v - h_estimate):
        return q0
    return estimate


#: The safeguard rescales SHINE's adjoint when its minimal-residual scale is outside this band.
_RESCALE_BAND = (0.5, 2.0)


def _check_adjoint(
    q, v, hessian, threshold: float, info: dict, measure: Callable[[Any], float] | None = None
) -> tuple[str, float, Any]:
    """The safeguard's verdict on ``q ~ H^{-1} v``: "keep", "rescale" or "fallback" (one HVP).

    Two scales of ``q`` are compared: ``beta_residual = v.Hq / Hq.Hq`` minimizes the residual
    ``||beta H q - v||`` (it weighs errors by ``H^2``, so high-curvature directions dominate) and
    ``beta_energy = q.v / q.Hq`` minimizes the error in the ``H`` norm (one CG step along
    ``q``; 1 for the exact adjoint). ``q`` is rescaled, by ``beta_energy``, only when both say
    that its norm is off by more than the band, in the same direction. The residual of the best
    multiple is measured with ``measure`` (the inner problem's stopping measure, per block with
    an intercept; Euclidean when None), like the inner gradient and CG's residual.

    Returns the verdict, the scale to apply and ``H q`` (None when not computed).
    """
    if not all_finite(q) or dot(q, v) <= 0:
        return "fallback", 1.0, None
    hq = hessian(q)
    curvature, hq_norm2 = dot(q, hq), dot(hq, hq)
    if not (math.isfinite(curvature) and curvature > 0 and hq_norm2 > 0):
        return "fallback", 1.0, None
    beta_residual = dot(v, hq) / hq_norm2
    beta_energy = dot(q, v) / curvature
    measure = norm if measure is None else measure
    residual = measure(beta_residual * hq - v) / max(measure(v), np.finfo(float).tiny)
    info["adjoint_scale"], info["adjoint_residual"] = beta_energy, residual
    info["adjoint_scale_residual"] = beta_residual
    if not (beta_residual > 0 and residual <= threshold):
        return "fallback", beta_energy, hq
    low, high = _RESCALE_BAND
    if (beta_residual < low and beta_energy < low) or (beta_residual > high and beta_energy > high):
        return "rescale", beta_energy, hq
    return "keep", beta_energy, hq


def finite_difference_hypergradient(
    inner,
    outer,
    log_alpha,
    *,
    step: float = 1e-4,
    tol: float = 1e-12,
    direction=None,
) -> np.ndarray | float:
    """Central finite differences of the outer criterion at the inner solution.

    Parameters
    ----------
    inner, outer, log_alpha
        As in :func:`hypergradient`.
    step : float
        Finite-difference step in ``log_alpha``.
    tol : float
        Relative inner tolerance of each solve (tight, so the difference is not noise).
    direction : ndarray, optional
        When given, return the directional derivative along it (two solves) instead of the
        full gradient (two solves per coordinate).

    Returns
    -------
    ndarray or float
        The gradient, of the shape of ``log_alpha``, or the directional derivative.
    """
    la = inner.check_log_alpha(log_alpha)
    center = hypergradient(inner, outer, la, method="jacobian-free", tol=tol)

    def outer_value(point):
        res = hypergradient(inner, outer, point, method="jacobian-free", tol=tol, coef0=center.coef)
        return res.value

    if direction is not None:
        d = np.asarray(direction, dtype=np.float64).reshape(la.shape)
        return (outer_value(la + step * d) - outer_value(la - step * d)) / (2 * step)
    flat = la.reshape(-1)
    grad = np.empty(flat.shape)
    for j in range(flat.size):
        e = np.zeros_like(flat)
        e[j] = step
        grad[j] = (
            outer_value((flat + e).reshape(la.shape)) - outer_value((flat - e).reshape(la.shape))
        ) / (2 * step)
    return grad.reshape(np.shape(log_alpha))


def check_hypergradient(
    inner,
    outer,
    log_alpha,
    *,
    method: str = "cg",
    tol: float = 1e-10,
    step: float = 1e-4,
    direction=None,
    **kwargs,
) -> dict[str, Any]:
    """Compare a hypergradient with central finite differences.

    Parameters
    ----------
    inner, outer, log_alpha, method, tol
        As in :func:`hypergradient`.
    step : float
        Finite-difference step.
    direction : ndarray, optional
        Compare directional derivatives along ``direction`` (cheap for many hyperparameters).
    **kwargs
        Passed to :func:`hypergradient`.

    Returns
    -------
    dict
        ``grad`` and ``finite_difference`` (full or directional), ``relative_error``
        (``||grad - fd|| / ||fd||``) and ``cosine`` (for full gradients).
    """
    result = hypergradient(inner, outer, log_alpha, method=method, tol=tol, **kwargs)
    fd = finite_difference_hypergradient(
        inner, outer, log_alpha, step=step, tol=min(tol, 1e-12), direction=direction
    )
    grad = result.grad
    if direction is not None:
        grad = float(np.sum(grad * np.asarray(direction).reshape(np.shape(grad))))
    g, f = np.atleast_1d(grad), np.atleast_1d(fd)
    denom = max(np.linalg.norm(f), np.finfo(float).tiny)
    report = {
        "grad": grad,
        "finite_difference": fd,
        "relative_error": float(np.linalg.norm(g - f) / denom),
    }
    if direction is None:
        report["cosine"] = float(
            np.dot(g, f) / max(np.linalg.norm(g) * np.linalg.norm(f), np.finfo(float).tiny)
        )
    return report
