"""Truncated Newton (Newton-CG) with a line search, for problems with Hessian-vector products.

Each iteration solves the Newton system ``H p = -g`` approximately by conjugate gradient, to a
relative residual ``min(0.5, sqrt(m(g) / m(g0)))`` (a forcing term in the manner of Eisenstat
and Walker: loose far from the solution, superlinear near it; relative to the solve's first
gradient ``g0``, so that it does not depend on the gradient's scale and a warm start does not
begin with an accurate, costly solve along low-curvature directions), stopping early at a
direction of non-positive curvature, and then takes a strong-Wolfe step along ``p`` from
``t = 1``. On ill-conditioned problems (a small L2 penalty on sparse text features) it needs a
few Newton iterations where L-BFGS needs hundreds: the CG iterations inside follow the
Hessian's spectrum at the current point, while a limited memory cannot hold its low-curvature
directions.

The solver keeps no inverse estimate: SHINE needs a quasi-Newton solver. It serves the ``cg``
hypergradient (whose adjoint solve uses the same Hessian products) and refits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._array import dot, eps, norm
from .cg import conjugate_gradient
from .lbfgs import _VALUE_NOISE, _clone, _evaluate, gradient_test, search_along

__all__ = ["NewtonCG", "NewtonCGState"]

ValueAndGrad = Callable[[Any], tuple[float, Any]]
#: ``x -> (v -> H(x) v)``: the Hessian at ``x`` as a product, built once per iteration.
HessianAt = Callable[[Any], Callable[[Any], Any]]


@dataclass
class NewtonCGState:
    """Result of :meth:`NewtonCG.run`.

    Attributes
    ----------
    x : array
        Final iterate.
    value : float
        Objective at ``x``.
    grad : array
        Gradient at ``x``.
    grad_norm : float
        Norm of ``grad`` in the solver's stopping measure.
    n_iter : int
        Newton iterations.
    n_fun_evals : int
        Evaluations of the objective and its gradient.
    n_hvp : int
        Hessian-vector products (inside the CG solves).
    converged : bool
        True when the stopping test holds at ``x``.
    message : str
        Why the solver stopped.
    n_opa_evals : int
        Always 0: OPA is an L-BFGS feature (the field keeps the records of both solvers
        alike).
    """

    x: Any
    value: float
    grad: Any
    grad_norm: float
    n_iter: int
    n_fun_evals: int
    n_hvp: int
    converged: bool
    message: str
    n_opa_evals: int = 0


@dataclass
class NewtonCG:
    """Truncated Newton with a strong-Wolfe line search.

    Parameters
    ----------
    tol : float
        The solver stops when the gradient's norm (``gradient_norm``) is at most ``tol``.
    max_iter : int
        Maximum Newton iterations.
    max_cg_iter : int
        Maximum CG iterations per Newton iteration.
    c1, c2 : float
        Strong-Wolfe constants.
    max_line_search : int
        Maximum evaluations per line search.
    gradient_norm : callable, optional
        ``grad -> float``: the norm of the stopping test and of CG's residuals (``tol`` is in
        its units), e.g. a problem's ``relative_gradient_norm``. Default: the Euclidean norm.
    step_tol : float, optional
        Also require the Newton step, an estimate of the distance to the solution, to be at
        most ``step_tol * ||x||``: once the gradient test holds, each iteration's CG solve
        checks the length of its first iterate with a residual of at most half the gradient
        on its way to the forcing term, and ends the run there when it is short enough.
    """

    tol: float = 1e-6
    max_iter: int = 100
    max_cg_iter: int = 500
    c1: float = 1e-4
    c2: float = 0.9
    max_line_search: int = 25
    gradient_norm: Callable[[Any], float] | None = None
    step_tol: float | None = None

    def run(self, value_and_grad: ValueAndGrad, x0, *, hessian: HessianAt) -> NewtonCGState:
        """Minimize from ``x0``.

        Parameters
        ----------
        value_and_grad : callable
            ``x -> (value, gradient)``.
        x0 : array
            Starting point (not modified).
        hessian : callable
            ``x -> (v -> H(x) v)``: the Hessian at ``x`` as a product (positive definite for
            the convex problems this solver is for; a direction of non-positive curvature
            ends that CG solve).

        Returns
        -------
        NewtonCGState
        """
        x = _clone(x0)
        value, grad = _evaluate(value_and_grad, x)
        first_measure = None
        value_noise = max(_VALUE_NOISE, 100.0 * eps(x))
        n_evals, n_hvp, n_iter = 1, 0, 0
        converged, message = False, "maximum number of iterations reached"
        while True:
            measure = self._measure(grad)
            small_gradient, stop = gradient_test(measure, self.tol, self.step_tol)
            if stop is not None:
                converged, message = small_gradient, stop
                break
            if n_iter >= self.max_iter:
                break
            hvp = hessian(x)
            if first_measure is None:
                first_measure = max(measure, 1e-300)
            forcing = min(0.5, math.sqrt(measure / first_measure))
            # The step test needs the step's length, not its direction: CG's iterates grow in
            # norm from zero, and once the residual is down to half the gradient the iterate's
            # length tells the step's. One CG solve serves both: it stops there when the step
            # is short enough, and otherwise goes on to the forcing term without a restart.
            settled = self._step_settled(x, measure) if small_gradient else None
            direction, products, step_is_short = self._newton_direction(hvp, grad, forcing, settled)
            n_hvp += products
            if step_is_short:
                converged, message = True, "gradient norm and Newton step below tolerance"
                break
            slope = dot(grad, direction)
            if not (math.isfinite(slope) and slope < 0):
                direction, slope = -grad, -(norm(grad) ** 2)

            ls = search_along(
                value_and_grad,
                x,
                direction,
                value,
                slope,
                1.0,
                c1=self.c1,
                c2=self.c2,
                max_evals=self.max_line_search,
                value_noise=value_noise,
            )
            n_evals += ls.n_evals
            if ls.step == 0.0:
                if small_gradient:
                    # The gradient test holds and no step along the Newton direction lowers
                    # the objective in floating point: the solution to round-off (the step's
                    # length can stay above step_tol when the curvature vanishes, e.g. on
                    # separable data at a tiny penalty).
                    converged = True
                    message = "gradient norm below tolerance; no decrease along the Newton step"
                else:
                    message = "line search failed"
                break
            (x, grad), value = ls.payload, ls.value
            n_iter += 1
        return NewtonCGState(
            x=x,
            value=value,
            grad=grad,
            grad_norm=self._measure(grad),
            n_iter=n_iter,
            n_fun_evals=n_evals,
            n_hvp=n_hvp,
            converged=converged,
            message=message,
        )

    def _newton_direction(self, hvp, grad, rtol: float, stop_when=None) -> tuple[Any, int, bool]:
        """CG on ``H p = -g`` to relative residual ``rtol``: ``p``, the products spent, and
        whether ``stop_when`` ended it."""
        result = conjugate_gradient(
            hvp,
            -grad,
            rtol=rtol,
            max_iter=self.max_cg_iter,
            vector_norm=self.gradient_norm,
            stop_when=stop_when,
        )
        return result.x, result.n_iter, result.stopped_early

    def _step_settled(self, x, measure: float) -> Callable[[Any, Any], bool]:
        """CG's ``stop_when`` for the step test at ``x``: true at the first iterate whose
        residual is at most half the gradient (``measure``) when that iterate is at most
        ``step_tol * ||x||`` long; never true after that first such iterate."""
        limit = self.step_tol * norm(x)
        checked = False

        def settled(p, residual) -> bool:
            nonlocal checked
            if checked or self._measure(residual) > 0.5 * measure:
                return False
            checked = True
            return norm(p) <= limit

        return settled

    def _measure(self, grad) -> float:
        """The norm of the stopping test."""
        return norm(grad) if self.gradient_norm is None else float(self.gradient_norm(grad))
