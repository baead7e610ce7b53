"""Outer optimization of ``log_alpha``: a secant search, HOAG, gradient descent and Adam.

:func:`solve_bilevel` minimizes the mean of the outer criteria over one or several (inner,
outer) pairs (the folds of a cross-validation), with hypergradients from
:func:`~hoag_shine.hypergradient`. The inner tolerance follows a decreasing schedule
(:class:`ToleranceSchedule`). Each inner solve starts from the secant prediction of the two
nearest evaluated points' solutions (second order along the path of solutions; the last
solution when only one point is known), with the last L-BFGS memory, shifted for the change of
penalty, and CG from the same prediction of the adjoint.

Every evaluation carries the first-order error that its inexact inner solution leaves in the
outer loss (``|q . grad r(w)|``, see :func:`~hoag_shine.hypergradient`); two losses are only
called different when they differ by more than both errors.

For a scalar ``log_alpha`` the default is a safeguarded secant search on the hypergradient
(``optimizer="secant"``): expand from the start against the sign of the hypergradient until the
minimizer is bracketed (by a change of sign, or a loss that rises by more than the errors
explain), then shrink the bracket with secant steps on the slopes, in the manner of Moré and
Thuente's line search. Every trial lies inside the bracket or one step beyond the best point, so
the search cannot wander off; it needs a few evaluations where HOAG's ``1/L`` steps need tens.
It stops when the bracket is narrower than ``xtol`` or when its secant model promises less than
``outer_tol`` of relative decrease. For a scalar ``log_alpha`` each evaluation also hands the
safeguard the secant's tangent of the solution path, with which it checks the hypergradient's
sign (see :func:`~hoag_shine.hypergradient`).

HOAG's step (any shape of ``log_alpha``) is ``1/L`` with ``L`` adapted (Pedregosa, 2016): a step
that decreases the outer loss at least as much as the quadratic model ``f - step/2 ||g||^2``
predicts is accepted and the step grows; a step that raises the loss by more than the inner
tolerances explain (plus ``reject_increase`` of it) is rejected, and the step and the tolerance
are halved; a step that raises the loss by less than that is accepted but halves the step; any
other step is accepted as it is. Unlike the published code, each accepted step is applied once,
the test compares the candidate with the current point (not with a lagged one), increases are
judged against the errors of the losses instead of a fixed 20%, and no candidate leaves the
trust region of half-width ``trust_radius`` around the best point found.

A search can write its state to a checkpoint file at every outer iteration (``checkpoint``)
and resume from it, on the same path as an uninterrupted search (see :mod:`hoag_shine._checkpoint`
for the file and the fingerprint that guards against resuming with other inputs).

The loop is backend-agnostic: ``log_alpha``, the hypergradients and the history are numpy arrays
and floats on the host, while each fold's inner solution, adjoint and L-BFGS memory stay in its
problem's backend and device (numpy, or torch on a CPU or GPU, see :mod:`hoag_shine.backends`)
and are carried there from one outer iteration to the next.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from joblib import Parallel, delayed

from . import _checkpoint
from .hypergradients import HypergradientResult, _check_method, hypergradient

__all__ = [
    "OPTIMIZERS",
    "BilevelResult",
    "SearchBoundWarning",
    "ToleranceSchedule",
    "solve_bilevel",
]

logger = logging.getLogger("hoag_shine")

#: Names accepted by ``optimizer``.
OPTIMIZERS = ("auto", "secant", "hoag", "gd", "adam")


class SearchBoundWarning(UserWarning):
    """The search ended on a bound of ``log_alpha`` with the hypergradient pointing beyond it.

    The held-out loss still decreases outside ``bounds`` (or is flat there): the bound, not the
    data, chose the value. Widen ``bounds`` to search further, or filter this warning when the
    bound is intended.
    """


@dataclass
class ToleranceSchedule:
    """Inner tolerance of outer iteration ``k`` (relative to the inner gradient scale).

    Parameters
    ----------
    kind : {"exponential", "quadratic", "cubic", "constant"}
        ``initial * rate**k``, ``initial / (k+1)**2``, ``initial / (k+1)**3`` or ``initial``.
    initial : float
        Tolerance of the first iteration.
    rate : float
        Decay of the exponential schedule.
    floor : float
        The tolerance never goes below this.
    """

    kind: str = "exponential"
    initial: float = 1e-3
    rate: float = 0.9
    floor: float = 1e-12

    def __post_init__(self):
        kinds = ("exponential", "quadratic", "cubic", "constant")
        if self.kind not in kinds:
            raise ValueError(f"Unknown schedule kind {self.kind!r}; choose one of {kinds}.")
        if not (self.initial > 0 and 0 < self.rate <= 1 and self.floor > 0):
            raise ValueError("initial and floor must be positive and rate in (0, 1].")

    def __call__(self, k: int) -> float:
        if self.kind == "exponential":
            tol = self.initial * self.rate**k
        elif self.kind == "quadratic":
            tol = self.initial / (k + 1) ** 2
        elif self.kind == "cubic":
            tol = self.initial / (k + 1) ** 3
        else:
            tol = self.initial
        return max(tol, self.floor)

    @classmethod
    def default_for(cls, method: str, inner_solver: str = "lbfgs") -> ToleranceSchedule:
        """Exponential decay at 0.9 for exact CG, 0.78 for the SHINE variants (as published),
        from 1e-3, or from 1e-2 for a Newton-CG inner solver.

        Newton-CG's stopping test on its Newton step, an accurate estimate of the distance to
        the solution, ends its solves far closer to the solution than L-BFGS's at the same
        tolerance: on 20news its outer losses at 1e-2 were as accurate (first-order error
        estimates 1e-6 to 3e-4) as L-BFGS's at 1e-3 (2e-6 to 6e-5), see
        ``docs/decisions.rst``.

        Parameters
        ----------
        method : str
            Hypergradient method (see :data:`~hoag_shine.hypergradients.METHODS`).
        inner_solver : {"lbfgs", "newton-cg"}
            The inner solver.

        Returns
        -------
        ToleranceSchedule
        """
        initial = 1e-2 if inner_solver == "newton-cg" else 1e-3
        return cls(initial=initial, rate=0.78 if method.startswith("shine") else 0.9)


@dataclass
class BilevelResult:
    """Result of :func:`solve_bilevel`.

    Attributes
    ----------
    log_alpha : ndarray
        Best hyperparameter found: of the lowest-loss evaluated point and the last accepted
        iterate, the one with the lower loss when both are evaluated again at the final inner
        tolerance (losses measured at looser tolerances early in the search are not
        comparable). After an interrupt, simply the lowest-loss evaluated point.
    value : float
        Outer loss (mean over folds) at ``log_alpha``.
    grad : ndarray
        Hypergradient at ``log_alpha``.
    coef : list of ndarray
        Inner solution of each fold at ``log_alpha``.
    history : list of dict
        One record per outer iteration (one evaluation of the outer loss): ``iteration``,
        ``time`` (seconds since the start), ``log_alpha``, ``outer_loss``, ``grad_norm``,
        ``inner_iter``, ``inner_tol``, ``n_fun_evals``, ``n_opa_evals`` (extra gradient
        evaluations), ``n_hvp``, ``cg_iter``, ``backward``, ``n_fallbacks``, ``time_inner``
        and ``time_backward`` (seconds in the folds' inner solves and in their backward passes,
        summed over folds), ``step_size`` (HOAG's, gd's or Adam's step parameter; for the
        secant search, the length moved: 0 for the best point evaluated again before a stop),
        ``accepted`` (the point became the current one; for the secant search, the best one)
        and ``outer_loss_error`` (the first-order error of ``outer_loss``).
    n_iter : int
        Number of outer iterations (records in ``history``).
    message : str
        Why the search stopped.
    interrupted : bool
        True when a ``KeyboardInterrupt`` ended the search (the best point is kept).
    n_final_evaluations : int
        Evaluations spent after the search to choose ``log_alpha`` (0 or 2; not in
        ``history``).
    fold_results : list of HypergradientResult
        Per-fold results at ``log_alpha``.
    """

    log_alpha: np.ndarray
    value: float
    grad: np.ndarray
    coef: list[np.ndarray]
    history: list[dict[str, Any]]
    n_iter: int
    message: str
    interrupted: bool = False
    n_final_evaluations: int = 0
    fold_results: list[HypergradientResult] = field(default_factory=list, repr=False)


@dataclass
class _Evaluation:
    """Mean outer loss and hypergradient over folds at one ``log_alpha``.

    ``error`` is the mean of the folds' first-order value errors (``info["value_error"]``):
    what the inexact inner solutions may add to or take from ``value``.
    """

    log_alpha: np.ndarray
    value: float
    grad: np.ndarray
    folds: list[HypergradientResult]
    inner_tol: float
    error: float = 0.0

    def worse_than(self, other: _Evaluation, slack: float = 0.0) -> bool:
        """True when this loss exceeds ``other``'s by more than both errors (plus ``slack``)."""
        return self.value > other.value + self.error + other.error + slack


@dataclass
class _GradientSteps:
    """HOAG's adaptive step, fixed-step gradient descent or Adam, inside a trust region.

    A candidate is the current point minus ``step`` times the hypergradient (Adam: its
    normalized moment), clipped to the bounds and to the box of half-width ``trust_radius``
    around the best point found, so that no step jumps far from it.
    """

    kind: str
    step: float
    trust_radius: float | None
    reject_increase: float
    adam: _AdamState | None = None
    message: str = ""

    def propose(self, current: _Evaluation, best: _Evaluation, low, high, xtol) -> np.ndarray:
        direction = self.adam.direction(current.grad) if self.adam is not None else current.grad
        candidate = np.clip(current.log_alpha - self.step * direction, low, high)
        if self.trust_radius is not None:
            radius = self.trust_radius
            candidate = np.clip(candidate, best.log_alpha - radius, best.log_alpha + radius)
        if float(np.linalg.norm(candidate - current.log_alpha)) < xtol:
            self.message = "step below xtol"
            return None
        return candidate

    def update(self, current: _Evaluation, trial: _Evaluation) -> tuple[bool, bool]:
        """``(accepted, tighten)``: whether ``trial`` becomes the current point, and whether
        the inner tolerance is to be halved (a rejected step)."""
        if self.kind != "hoag":
            return True, False
        if trial.worse_than(current, self.reject_increase * abs(current.value)):
            self.step *= 0.5
            return False, True
        predicted = current.value - 0.5 * self.step * float(np.sum(current.grad**2))
        if trial.value <= predicted:
            self.step *= 1.5
        elif trial.value > current.value:
            self.step *= 0.5
        return True, False


#: A decrease of the outer loss of this fraction of its first value is a real minimum ahead for
#: the expansion of the secant search (see ``_Bracketing.update``), whatever ``outer_tol``.
_REAL_DECREASE = 1e-4


@dataclass
class _Bracketing:
    """Safeguarded secant search for the minimizer of the outer loss over a scalar ``log_alpha``.

    A line search in the manner of Moré and Thuente's, on inexact values and slopes. ``best``
    is the lowest point; ``other`` (once known) the end of a bracket that holds a minimizer.

    - Expansion, before a bracket: step from the best point against the sign of its
      hypergradient, the step doubling (or set to 1.5 times the distance to the zero of the
      last two slopes' secant, within one and four times the last move) while the loss keeps
      decreasing.
    - A trial that raises the loss by more than the inner tolerances explain (both points'
      ``error``) closes the bracket ``[best, trial]``; one whose hypergradient points back
      toward the best point becomes the best point, the former one the other end.
    - Zoom: the zero of the slopes' secant between the ends when their signs differ (twice as
      far from the best point after a step that did not halve the bracket), else, or after two
      such steps in a row, the midpoint; kept in the middle 80% of the bracket. The trial
      replaces the end that keeps a minimizer inside. The search stops when the bracket is
      narrower than ``xtol``, or when the slopes' secant across it predicts a decrease below
      the best point of less than ``ftol`` times its loss (``g^2 / 2h``, with ``g`` the best
      point's slope and ``h`` the secant's curvature): the rest of the bracket cannot lower
      the loss by what counts as progress.
    - That last stop rests on the sign of the best point's slope. A point measured during the
      expansion was solved at the loose tolerance that the slope predicted there needs; when
      its slope turns out much smaller, that tolerance does not resolve its sign. So before
      the model stop is taken, a best point solved at more than ten times the tolerance that
      the search's rule now asks for at that point (:meth:`slope_scale`), and whose loss is
      not known to ``ftol`` (its first-order error is larger), is evaluated again at that
      tolerance (once per point; the rule itself has a wide margin, so a zoom trial whose
      tolerance followed the previous best point's slope is not evaluated twice). When
      its slope then leads away from the other end, the bracket rested on a wrong sign: it is
      dropped and the expansion resumes from the point. (On 20news, SHINE-OPA stopped at
      C = 148, measured at tolerance 6e-4 with a slope of the wrong sign and a loss 3% off;
      the minimizer lay at C = 255.)

    Every trial lies inside the bracket or one step beyond the best point, so the search
    cannot wander away from what it found.
    """

    step: float
    low: float
    high: float
    xtol: float
    ftol: float = 0.0
    # The shortest expansion step when the slopes head for a zero: the first step (the
    # search's unit of length). Infinite in checkpoints written before it.
    min_step: float = math.inf
    decay_rate: float | None = None  # of log |slope| per unit of log_alpha, last expansion
    loss_scale: float = 0.0  # |outer loss| at the start: the scale of what counts as progress
    other: _Evaluation | None = None
    message: str = ""
    last_width: float = math.inf
    slow_steps: int = 0  # zoom steps in a row that did not halve the bracket
    model_stop: bool = False  # the last proposal was the stop on the bracket's secant model
    remeasured_at: float = math.nan  # the last point evaluated again (once per point)

    def slope_scale(self, best: _Evaluation, point, history) -> float:
        """The magnitude of hypergradient whose sign the trial at ``point`` must get right.

        The best point's slope; in a bracket, at least the slope that a point ``xtol/2`` from
        the minimizer has (the bracket's secant curvature times ``xtol/2``: closer, a wrong
        sign moves the result by less than ``xtol``). While expanding (all slopes of one sign
        so far), at least half the trial's own slope as the secant of the last two records
        predicts it: a trial far beyond the minimizer has a large slope, and needs no tight
        solve to show it (on 20news, 254 inner iterations at a tolerance set by the best
        point's small slope, for a loss 20% above the best).
        """
        scale = abs(float(best.grad))
        if self.other is not None:
            width = abs(float(self.other.log_alpha) - float(best.log_alpha))
            curvature = abs(float(self.other.grad) - float(best.grad)) / width
            return max(scale, 0.5 * curvature * self.xtol)
        if len(history) >= 2:
            last, previous = history[-1], history[-2]
            moved = abs(float(last["log_alpha"]) - float(previous["log_alpha"]))
            if moved > 0:
                curvature = (previous["grad_norm"] - last["grad_norm"]) / moved
                distance = abs(float(point) - float(best.log_alpha))
                scale = max(scale, 0.5 * abs(last["grad_norm"] - curvature * distance))
        return scale

    def propose(self, best: _Evaluation) -> np.ndarray | None:
        a, g_a = float(best.log_alpha), float(best.grad)
        self.model_stop = False
        if self.other is not None:
            b, g_b = float(self.other.log_alpha), float(self.other.grad)
            width = abs(b - a)
            if width <= self.xtol:
                self.message = f"bracket narrower than xtol ({width:.3g})"
                return None
            curvature = (g_b - g_a) / (b - a)
            if g_a * g_b < 0 and curvature > 0:
                decrease = 0.5 * g_a**2 / curvature
                if decrease < self.ftol * abs(float(best.value)):
                    self.message = f"bracket's predicted decrease below outer_tol ({decrease:.3g})"
                    self.model_stop = True
                    return None
            # Secant steps can shrink a bracket from one side only (regula falsi): after a
            # step that did not halve it, step twice as far from the best point, to cross the
            # zero and move the other end (bisecting there cost two evaluations far from the
            # minimizer on 20news, when the first zoom step had landed next to it); after two
            # such steps in a row, bisect (a wrong slope can make every secant step slow).
            slow = width > 0.5 * self.last_width
            self.slow_steps, self.last_width = (self.slow_steps + 1 if slow else 0), width
            if g_a * g_b < 0 and self.slow_steps < 2:
                t = a - g_a * (b - a) / (g_b - g_a)
                if self.slow_steps == 1:
                    t = a + 2.0 * (t - a)
            else:
                t = 0.5 * (a + b)
            low, high = min(a, b) + 0.1 * width, max(a, b) - 0.1 * width
            return np.asarray(min(max(t, low), high))
        if g_a == 0.0:
            self.message = "zero hypergradient"
            return None
        t = float(np.clip(a - math.copysign(self.step, g_a), self.low, self.high))
        if t == a:
            self.message = "on a bound, the hypergradient pointing beyond it"
            return None
        return np.asarray(t)

    def needs_remeasure(self, best: _Evaluation, required_tol: float) -> bool:
        """Whether the model stop must first evaluate ``best`` again, at ``required_tol`` (the
        tolerance the search's rule asks for at ``best`` now): True when ``best`` was solved
        at more than ten times that tolerance, its loss is not known to the decrease the stop
        is about (its first-order error exceeds ``ftol`` times the loss), and it was not
        evaluated again already."""
        return (
            self.model_stop
            and best.inner_tol > 10.0 * required_tol
            and best.error > self.ftol * abs(float(best.value))
            and float(best.log_alpha) != self.remeasured_at
        )

    def remeasured(self, trial: _Evaluation) -> bool:
        """Adopt ``trial``, the best point evaluated again, as the best point (returns True).

        When its slope now leads away from the other end, the bracket rested on a wrong sign:
        it is dropped, and the expansion starts again from the point with the first step.
        """
        self.remeasured_at = a = float(trial.log_alpha)
        g = float(trial.grad)
        if self.other is not None and g != 0.0:
            toward_other = float(self.other.log_alpha) > a
            if (g < 0) != toward_other:
                self.other, self.decay_rate = None, None
                self.step = min(self.step, self.min_step)
                self.last_width, self.slow_steps = math.inf, 0
        return True

    def update(self, best: _Evaluation, trial: _Evaluation) -> bool:
        """Place ``trial``; return True when it becomes the best point."""
        a, t, g_t = float(best.log_alpha), float(trial.log_alpha), float(trial.grad)
        if trial.worse_than(best):
            self.other = trial  # a minimizer between the best point and the trial
            return False
        points_back = (g_t > 0) == (t > a)  # descent from the trial leads toward best
        if self.other is not None:
            if points_back:
                self.other = best
            return True
        if points_back:
            self.other = best
            return True
        # Same side, lower: step 1.5 times as far as the slopes' secant puts their zero (to
        # cross it and close a bracket), at most four times the last move and at least the
        # last move: a loss that decays to a flat tail, with no zero of its slope, is not
        # crawled. In a tail |slope| decays geometrically (log |slope| falls at a steady
        # rate); toward a zero log |slope| falls faster and faster. So when the rate has
        # grown (1.5 times the last expansion's) and the secant promises a decrease that
        # counts on the way to its zero (``ftol`` times the first loss, at most
        # ``_REAL_DECREASE`` of it: a stop's loose tolerance does not make a minimum ahead
        # less real), the floor is the shorter of the last move and the first step. (On
        # 20news a move of 4 that cut the slope 15-fold, at three times the rate before, was
        # followed by another of 4, far beyond the minimizer 0.75 away: a rejected trial that
        # cost 14% of the search. On separable data the loss falls to 1e-7 and beyond, where
        # nothing counts.)
        distance, g_a = abs(t - a), float(best.grad)
        if 0 < abs(g_t) < abs(g_a):
            to_zero = abs(g_t) * distance / (abs(g_a) - abs(g_t))
            rate = math.log(abs(g_a) / abs(g_t)) / distance
            promised = 0.5 * abs(g_t) * to_zero
            heading_for_zero = (
                self.decay_rate is not None
                and rate > 1.5 * self.decay_rate
                and promised >= min(self.ftol, _REAL_DECREASE) * self.loss_scale
            )
            floor = min(distance, self.min_step) if heading_for_zero else distance
            self.decay_rate = rate
            self.step = min(4 * distance, max(floor, 1.5 * to_zero))
        else:
            self.step, self.decay_rate = 2 * distance, None
        return True


@dataclass
class _SearchState:
    """Everything a search needs to go on: what a checkpoint holds.

    ``best`` may be ``current`` itself (pickling keeps the identity). ``warm`` holds each fold's
    warm start for the next evaluation (inner solution, adjoint, L-BFGS memory). ``optimizer``
    is the optimizer's own state (:class:`_GradientSteps` or :class:`_Bracketing`).
    """

    history: list[dict[str, Any]]
    warm: list[dict[str, Any]]
    current: _Evaluation | None = None
    best: _Evaluation | None = None
    optimizer: _GradientSteps | _Bracketing | None = None
    tol_factor: float = 1.0
    n_no_change: int = 0
    path: list[tuple[np.ndarray, list, list]] = field(default_factory=list)


#: Evaluated points kept for the path prediction of warm starts.
_PATH_LENGTH = 8


def _predicted_start(path, point) -> tuple[list, list, list | None] | None:
    """Each fold's inner solution and adjoint at ``point``, predicted along the search path,
    and (scalar ``log_alpha``) the secant's tangent of the solution path, ``dw/dlog_alpha``.

    The evaluated point nearest to ``point`` and the nearest one beyond ``point`` from it (or,
    when there is none, the second nearest) give the secant of the solution path
    ``w*(log_alpha)``: ``w_a + c (w_b - w_a)`` with ``c`` the coordinate of ``point`` along
    ``a -> b`` (interpolation between them, extrapolation beyond, ``c`` kept in [-1, 2]). Its
    error is second order in the distance, where a plain warm start from the nearest solution
    is first order: on 20news at C = 300, a point between two solutions 0.2 apart in
    ``log_alpha`` needed 1 L-BFGS iteration instead of 178, one 0.1 beyond them 21 instead of
    179. (The same prediction from the L-BFGS estimate of ``-H^{-1} alpha w``, the tangent of
    the path, needed 238: ten pairs do not hold the Hessian's low-curvature directions, along
    which the path moves most.) None when fewer than two distinct points are known.
    """
    if len(path) < 2:
        return None
    point = np.asarray(point, dtype=np.float64)
    ranked = sorted(path, key=lambda entry: float(np.linalg.norm(entry[0] - point)))
    a = ranked[0]
    others = [entry for entry in ranked[1:] if np.any(entry[0] != a[0])]
    if not others:
        return None

    def coordinate(b) -> float:
        direction = b[0] - a[0]
        return float(np.sum((point - a[0]) * direction) / np.sum(direction**2))

    # Interpolate when a known point lies beyond ``point`` as seen from ``a``: the solutions
    # of two close points differ mostly by their solve errors, and extrapolating that
    # difference far (measured: from two points 0.014 apart to one 0.065 beyond, 84 inner
    # iterations instead of a few) costs more than it saves.
    b = next((entry for entry in others if 0.0 <= coordinate(entry) <= 1.0), others[0])
    c = min(max(coordinate(b), -1.0), 2.0)
    coefs = [w_a + c * (w_b - w_a) for w_a, w_b in zip(a[1], b[1], strict=True)]
    adjoints = [q_a + c * (q_b - q_a) for q_a, q_b in zip(a[2], b[2], strict=True)]
    tangents = None
    if point.ndim == 0:
        delta = float(b[0] - a[0])
        tangents = [(w_b - w_a) * (1.0 / delta) for w_a, w_b in zip(a[1], b[1], strict=True)]
    return coefs, adjoints, tangents


def _evaluate_fold(inner, outer, log_alpha, warm, options) -> HypergradientResult:
    # Warnings travel back in info["warnings"] and are emitted by the caller in the main thread
    # (joblib workers do not forward them, and catch_warnings is not thread-safe).
    return hypergradient(inner, outer, log_alpha, emit_warnings=False, **warm, **options)


def solve_bilevel(
    inner,
    outer,
    log_alpha0,
    *,
    method: str = "shine-opa",
    optimizer: str = "auto",
    max_iter: int = 30,
    tol_schedule: ToleranceSchedule | None = None,
    bounds: tuple[float, float] = (-25.0, 25.0),
    step_size: float | None = None,
    initial_step: float = 1.0,
    reject_increase: float = 0.0,
    xtol: float | None = None,
    trust_radius: float | None = 2.0,
    time_budget: float | None = None,
    callback: Callable[[dict[str, Any]], bool | None] | None = None,
    warm_start_memory: bool = True,
    predict_path: bool = True,
    n_jobs: int | None = None,
    hypergradient_options: dict[str, Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
    n_iter_no_change: int | None = None,
    outer_tol: float = 1e-4,
) -> BilevelResult:
    """Minimize the held-out criterion over ``log_alpha``.

    Parameters
    ----------
    inner : problem or sequence of problems
        Inner problem(s), one per fold.
    outer : criterion or sequence of criteria
        Outer criterion of each fold; the objective is their mean.
    log_alpha0 : float or ndarray
        Starting hyperparameter (clipped to ``bounds``).
    method : str
        Hypergradient method (see :data:`~hoag_shine.hypergradients.METHODS`).
    optimizer : {"auto", "secant", "hoag", "gd", "adam"}
        ``"secant"``: for a scalar ``log_alpha``, a safeguarded secant search for the zero of
        the hypergradient (bracket the minimizer, then shrink the bracket; see the module
        docstring). ``"hoag"``: HOAG's adaptive step; ``"gd"``: fixed-step gradient descent;
        ``"adam"``: Adam; all three on ``log_alpha`` of any shape. ``"auto"`` (default):
        ``"secant"`` for a scalar hyperparameter, ``"hoag"`` otherwise.
    max_iter : int
        Maximum number of outer iterations (evaluations of the outer loss).
    tol_schedule : ToleranceSchedule, optional
        Inner tolerance per iteration; defaults to :meth:`ToleranceSchedule.default_for`.
    bounds : (float, float)
        ``log_alpha`` is clipped to this interval.
    step_size : float, optional
        Initial step (HOAG), fixed step (gd) or learning rate (adam). By default the first
        step moves ``log_alpha`` by ``initial_step`` in norm (HOAG and gd) and Adam uses
        ``0.1 * initial_step``.
    initial_step : float
        Length in ``log_alpha`` of the default first step.
    reject_increase : float
        HOAG rejects a step that raises the outer loss by more than the inner tolerances
        explain (the first-order value errors of both points, ``info["value_error"]``) plus
        this fraction of the loss.
    xtol : float, optional
        Stop when an accepted step moves ``log_alpha`` by less than this (in norm), or, for
        ``"secant"``, when the bracket is narrower than this. Default: 1e-6, and 0.1 for
        ``"secant"`` (``C`` known to 10%, where a held-out loss is flat to far below its
        noise: on 20news the test loss is the same to 5 digits across such a bracket).
    trust_radius : float, optional
        HOAG, gd and Adam never propose a point farther than this from the best point found,
        in any coordinate of ``log_alpha`` (``None``: no limit). The secant search stays
        within its bracket or one step beyond the best point.
    time_budget : float, optional
        Stop after this many seconds of this call (checked between iterations).
    callback : callable, optional
        Called with each history record; returning True stops the search.
    warm_start_memory : bool
        Also warm-start the L-BFGS memory across outer iterations, its pairs corrected exactly
        for the change of the penalty (see :func:`~hoag_shine.hypergradient`). On breast_cancer
        this halves the inner iterations of a search and gives SHINE a richer inverse.
    predict_path : bool
        Start each inner solve (and CG) from the secant prediction of the two evaluated points
        nearest to the new ``log_alpha`` instead of the last solution: second-order accurate
        along the path of solutions, it cuts the inner iterations of nearby points by up to
        two orders of magnitude (measured on 20news, see ``docs/decisions.rst``).
    n_jobs : int, optional
        Folds are solved in parallel with :class:`joblib.Parallel` (any joblib backend).
    hypergradient_options : dict, optional
        Extra keyword arguments for :func:`~hoag_shine.hypergradient` (e.g. ``solver``,
        ``safeguard``, ``refine_iter``).
    checkpoint : str or path-like, optional
        A file to which the state of the search is written after every outer iteration: the
        history, the current and best points, the optimizer's state (step, tolerance factor,
        Adam's moments) and each fold's warm start (inner solution, adjoint, L-BFGS memory);
        torch tensors are stored as numpy arrays. Each write replaces the file atomically, so
        an interruption leaves the previous or the new state. When the file exists, the search
        resumes from it and follows the path the uninterrupted search would have followed
        (bitwise, the records' times apart; ``time`` runs on from the checkpoint's). A
        checkpoint of other data, another start or other settings raises a ValueError that
        says what differs; ``max_iter``, ``xtol``, ``time_budget``, ``callback`` and
        ``n_jobs`` may change, so a finished search can be extended. The file is kept at the
        end. It is a pickle: load only checkpoints you wrote.
    n_iter_no_change : int, optional
        Early stopping: stop when this many outer iterations in a row have not lowered the
        best outer loss by more than ``outer_tol`` (relative). ``None`` (default) runs until
        ``max_iter``, ``xtol`` or the time budget.
    outer_tol : float
        Relative decrease of the best outer loss that counts as progress for
        ``n_iter_no_change``. The secant search also stops when its bracket's secant model
        predicts less than this relative decrease below the best point (0: never).

    Returns
    -------
    BilevelResult

    Warns
    -----
    SearchBoundWarning
        When the result lies on a bound and the hypergradient there points beyond it.

    Raises
    ------
    ValueError
        For invalid arguments, and for a checkpoint that cannot be read or belongs to another
        search.
    """
    method = _check_method(method)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}.")
    if trust_radius is not None and not trust_radius > 0:
        raise ValueError(f"trust_radius must be None or positive, got {trust_radius!r}.")
    inners = list(inner) if isinstance(inner, Sequence) else [inner]
    outers = list(outer) if isinstance(outer, Sequence) else [outer]
    if len(inners) != len(outers) or not inners:
        raise ValueError(
            f"inner and outer must pair up: got {len(inners)} problems and {len(outers)} criteria."
        )
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}.")
    if n_iter_no_change is not None and n_iter_no_change < 1:
        raise ValueError(f"n_iter_no_change must be None or at least 1, got {n_iter_no_change}.")
    if not outer_tol >= 0:
        raise ValueError(f"outer_tol must be non-negative, got {outer_tol}.")
    low, high = float(bounds[0]), float(bounds[1])
    if not low < high:
        raise ValueError(f"bounds must be (low, high) with low < high, got {bounds}.")
    schedule = tol_schedule if tol_schedule is not None else ToleranceSchedule.default_for(method)
    options = dict(hypergradient_options or {})
    options["method"] = method
    log_alpha = np.clip(inners[0].check_log_alpha(log_alpha0), low, high)
    if optimizer == "auto":
        optimizer = "secant" if log_alpha.ndim == 0 else "hoag"
    if optimizer == "secant" and log_alpha.ndim != 0:
        raise ValueError(
            "optimizer='secant' searches a scalar log_alpha; use 'hoag', 'gd' or 'adam' for "
            f"one of shape {log_alpha.shape}."
        )
    if xtol is None:
        xtol = 0.1 if optimizer == "secant" else 1e-6

    fingerprint = None
    state = None
    if checkpoint is not None:
        # What changes the path must match the checkpoint; stopping rules may differ.
        settings = {
            "method": method,
            "optimizer": optimizer,
            "tol_schedule": schedule,
            "bounds": (low, high),
            "step_size": step_size,
            "initial_step": initial_step,
            "reject_increase": reject_increase,
            "trust_radius": trust_radius,
            "warm_start_memory": warm_start_memory,
            "predict_path": predict_path,
            "hypergradient_options": options,
        }
        fingerprint = _checkpoint.fingerprint(inners, outers, log_alpha, settings)
        if os.path.exists(checkpoint):
            state = _checkpoint.load(checkpoint, fingerprint)
            logger.info("resuming the search after %d outer iterations", len(state.history))
    if state is None:
        state = _SearchState(history=[], warm=[{} for _ in inners])

    call_start = time.perf_counter()
    # The records' times run on from a resumed search's last record.
    start = call_start - (state.history[-1]["time"] if state.history else 0.0)

    with Parallel(n_jobs=n_jobs) as parallel:

        def inner_tol(point, k) -> float:
            tol = schedule(k) * state.tol_factor
            if optimizer == "secant" and state.history:
                # The sign of the hypergradient decides the secant search, and its error is
                # about proportional to the inner tolerance: as the search nears the minimizer,
                # where the hypergradient vanishes, the tolerance shrinks with the best point's
                # hypergradient (the scale of slope the trial must resolve, see slope_scale),
                # relative to the first one.
                scale = state.optimizer.slope_scale(state.best, point, state.history)
                ratio = scale / max(state.history[0]["grad_norm"], 1e-300)
                # (at most 1000 times tighter than the schedule's start: a hypergradient that
                # vanishes on a flat loss does not call for round-off-level solves)
                tol = min(tol, schedule.initial * max(ratio, 1e-3))
            return max(tol, schedule.floor)

        def evaluate(point, k) -> _Evaluation:
            tol = inner_tol(point, k)
            fold_options = {**options, "tol": tol}
            warm = [dict(fold_warm) for fold_warm in state.warm]
            predicted = _predicted_start(state.path, point) if predict_path else None
            if predicted is not None:
                coefs, adjoints, tangents = predicted
                for i, fold_warm in enumerate(warm):
                    fold_warm["coef0"], fold_warm["q0"] = coefs[i], adjoints[i]
                    if tangents is not None:
                        # for the safeguard's test of the hypergradient's sign
                        fold_warm["tangent"] = tangents[i]
            results = parallel(
                delayed(_evaluate_fold)(i, o, point, w, fold_options)
                for i, o, w in zip(inners, outers, warm, strict=True)
            )
            # (a point evaluated again replaces its earlier, less precise, solution)
            state.path[:] = [entry for entry in state.path if np.any(entry[0] != point)]
            state.path.append(
                (
                    np.array(point, dtype=np.float64),
                    [r.coef for r in results],
                    [r.q for r in results],
                )
            )
            del state.path[:-_PATH_LENGTH]
            for result in results:
                for category, message in result.info["warnings"]:
                    warnings.warn(message, category, stacklevel=3)
            value = float(np.mean([r.value for r in results]))
            grad = np.mean([r.grad for r in results], axis=0)
            error = float(np.mean([r.info["value_error"] for r in results]))
            return _Evaluation(point, value, grad, results, tol, error)

        def record(evaluation: _Evaluation, k, step, accepted) -> dict[str, Any]:
            folds = evaluation.folds
            backward = sorted({r.info["backward"] for r in folds})
            entry = {
                "iteration": k,
                "time": time.perf_counter() - start,
                "log_alpha": _export(evaluation.log_alpha),
                "outer_loss": evaluation.value,
                "outer_loss_error": evaluation.error,
                "grad_norm": float(np.linalg.norm(evaluation.grad)),
                "inner_iter": sum(r.info["inner_iter"] for r in folds),
                "inner_tol": evaluation.inner_tol,
                "n_fun_evals": sum(r.info["n_fun_evals"] for r in folds),
                "n_opa_evals": sum(r.info["n_opa_evals"] for r in folds),
                "n_hvp": sum(r.info["n_hvp"] for r in folds),
                "cg_iter": sum(r.info["cg_iter"] for r in folds),
                "backward": "|".join(backward),
                "n_fallbacks": sum("fallback" in r.info["backward"] for r in folds),
                "time_inner": sum(r.info["time_inner"] for r in folds),
                "time_backward": sum(r.info["time_backward"] for r in folds),
                "step_size": step,
                "accepted": accepted,
            }
            state.history.append(entry)
            logger.info(
                "outer iteration %d: outer loss %.6g, |grad| %.3g, inner iterations %d, %s",
                k,
                entry["outer_loss"],
                entry["grad_norm"],
                entry["inner_iter"],
                entry["backward"],
            )
            return entry

        def conclude(entry) -> bool:
            """Save the iteration's state, then call the callback: True stops the search."""
            if checkpoint is not None:
                _checkpoint.save(checkpoint, fingerprint, state)
            return bool(callback(entry)) if callback is not None else False

        def adopt_warm_start(evaluation: _Evaluation):
            for fold_warm, result in zip(state.warm, evaluation.folds, strict=True):
                fold_warm["coef0"] = result.coef
                fold_warm["q0"] = result.q
                memory = getattr(result.inner_state, "memory", None)  # NewtonCG keeps none
                if warm_start_memory and memory is not None:
                    fold_warm["memory"] = memory
                    fold_warm["memory_log_alpha"] = evaluation.log_alpha

        def final_choice(best, current, k) -> tuple[_Evaluation, int]:
            # Early losses are measured at loose inner tolerances and can be underestimated:
            # compare the best point with the last accepted iterate at the final tolerance
            # (unless the secant search left both in a bracket narrower than xtol).
            if best is current:
                return best, 0
            distance = float(np.linalg.norm(best.log_alpha - current.log_alpha))
            if optimizer == "secant" and distance <= xtol:
                return best, 0
            candidates = [evaluate(point.log_alpha, k) for point in (best, current)]
            return min(candidates, key=lambda evaluation: evaluation.value), len(candidates)

        message = "maximum number of iterations reached"
        interrupted = False
        n_final = 0
        stop = False
        try:
            if state.current is None:
                first = evaluate(log_alpha, 0)
                state.current = state.best = first
                adopt_warm_start(first)
                step = _initial_step(optimizer, step_size, initial_step, first.grad)
                if optimizer == "secant":
                    state.optimizer = _Bracketing(
                        step, low, high, xtol, min_step=step, loss_scale=abs(first.value)
                    )
                else:
                    adam = _AdamState(first.grad.shape) if optimizer == "adam" else None
                    state.optimizer = _GradientSteps(
                        optimizer, step, trust_radius, reject_increase, adam
                    )
                stop = conclude(record(first, 0, step, True))
            search = state.optimizer
            if optimizer == "secant":  # stopping rules may differ from a checkpoint's
                search.xtol, search.ftol = xtol, outer_tol
            for k in range(len(state.history), max_iter):
                if stop:
                    message = "stopped by callback"
                    break
                if n_iter_no_change is not None and state.n_no_change >= n_iter_no_change:
                    message = (
                        f"no relative decrease of the outer loss above {outer_tol:g} in "
                        f"{n_iter_no_change} iterations"
                    )
                    break
                if time_budget is not None and time.perf_counter() - call_start >= time_budget:
                    message = "time budget exhausted"
                    break
                current = state.current
                if optimizer == "secant":
                    candidate = search.propose(state.best)
                else:
                    candidate = search.propose(current, state.best, low, high, xtol)
                remeasure = False
                if candidate is None and optimizer == "secant" and search.model_stop:
                    point = state.best.log_alpha
                    remeasure = search.needs_remeasure(state.best, inner_tol(point, k))
                    candidate = point if remeasure else None
                if candidate is None:
                    message = search.message
                    break
                trial = evaluate(candidate, k)
                # The step parameter of the gradient steps, the length moved by the secant.
                if optimizer == "secant":
                    used_step = float(np.linalg.norm(candidate - current.log_alpha))
                else:
                    used_step = search.step
                if optimizer == "secant":
                    if remeasure:
                        accepted = search.remeasured(trial)
                    else:
                        accepted = search.update(state.best, trial)
                    # Every point is the nearest warm start for the next one (inside the
                    # bracket or beyond the best point), and the last is the final candidate.
                    state.current = trial
                    adopt_warm_start(trial)
                else:
                    accepted, tighten = search.update(current, trial)
                    if tighten:
                        state.tol_factor *= 0.5
                    if accepted:
                        state.current = trial
                        adopt_warm_start(trial)
                if trial.value < state.best.value - outer_tol * abs(state.best.value):
                    state.n_no_change = 0
                else:
                    state.n_no_change += 1
                if accepted if optimizer == "secant" else trial.value < state.best.value:
                    state.best = trial
                stop = conclude(record(trial, k, used_step, accepted))
            best, n_final = final_choice(state.best, state.current, len(state.history))
        except KeyboardInterrupt:
            if state.best is None:
                raise
            best = state.best
            interrupted = True
            message = "interrupted"
            warnings.warn(
                "Search interrupted: returning the best hyperparameter found so far.",
                RuntimeWarning,
                stacklevel=2,
            )

    if not interrupted:
        _warn_at_bound(best.log_alpha, best.grad, low, high)
    return BilevelResult(
        log_alpha=best.log_alpha,
        value=best.value,
        grad=best.grad,
        coef=[r.coef for r in best.folds],
        history=state.history,
        n_iter=len(state.history),
        message=message,
        interrupted=interrupted,
        n_final_evaluations=n_final,
        fold_results=best.folds,
    )


def _warn_at_bound(log_alpha, grad, low, high) -> None:
    """Warn when the result sits on a bound and its hypergradient points beyond it.

    Then the held-out loss still decreases outside ``bounds``: the best penalty may lie there
    (or the loss is flat, e.g. with many samples and few features, and any large ``C`` is as
    good). Either way the user should know that the bound, not the data, chose the value.
    """
    log_alpha, grad = np.atleast_1d(log_alpha), np.atleast_1d(grad)
    below = (log_alpha <= low) & (grad > 0)  # a step -grad would go below ``low``
    above = (log_alpha >= high) & (grad < 0)
    if not (below.any() or above.any()):
        return
    where = []
    if below.any():
        where.append(f"{int(below.sum())} at the lower bound {low:g} (weakest penalty)")
    if above.any():
        where.append(f"{int(above.sum())} at the upper bound {high:g} (strongest penalty)")
    warnings.warn(
        f"The search ended on the bounds of log_alpha ({'; '.join(where)} of "
        f"{log_alpha.size} coordinates) with the hypergradient pointing beyond them: the "
        "held-out loss still decreases outside the bounds, or is flat there. Widen bounds= "
        "to search further.",
        SearchBoundWarning,
        stacklevel=3,
    )


def _initial_step(optimizer, step_size, initial_step, grad) -> float:
    if step_size is not None:
        if not (step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"step_size must be a positive number, got {step_size!r}.")
        return float(step_size)
    if optimizer == "adam":
        return 0.1 * initial_step
    if optimizer == "secant":  # a length in log_alpha
        return initial_step
    grad_norm = float(np.linalg.norm(grad))
    return initial_step / grad_norm if grad_norm > 0 else initial_step


class _AdamState:
    """Adam's moment estimates (Kingma and Ba), bias-corrected."""

    def __init__(self, shape, beta1=0.9, beta2=0.999, eps=1e-8):
        self.m, self.v = np.zeros(shape), np.zeros(shape)
        self.beta1, self.beta2, self.eps, self.t = beta1, beta2, eps, 0

    def direction(self, grad):
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1 - self.beta2) * grad**2
        m_hat = self.m / (1 - self.beta1**self.t)
        v_hat = self.v / (1 - self.beta2**self.t)
        return m_hat / (np.sqrt(v_hat) + self.eps)


def _export(log_alpha: np.ndarray):
    """A history-friendly copy: a float for a scalar, an array copy otherwise."""
    return float(log_alpha) if log_alpha.ndim == 0 else log_alpha.copy()
