"""Dense references for small problems, and error bounds derived from them.

The tests compare iterative results (L-BFGS stopped at a gradient tolerance, CG at a residual
tolerance, SHINE's estimated adjoint) with exact ones. The tolerance of such a comparison follows
from the mathematics of the case, computed here from the dense Hessian:

- an inner solution ``w`` with gradient ``g`` is within ``||g|| / lambda_min(H)`` of the optimum
  (to first order; exactly for a quadratic), so a solver stopped at ``||g|| <= tol * scale`` is
  accurate to about ``tol * scale / lambda_min`` in ``w``;
- an adjoint ``q`` with residual ``H q - v`` gives the hypergradient ``-c^T q``, whose error
  against the exact ``-c^T H^{-1} v`` at the same ``w`` is ``c^T H^{-1} (H q - v)``, at most
  ``||H^{-1} c|| ||H q - v||`` (``c`` the cross derivative ``d^2 r / d log_alpha d w``).

Helpers only (no tests): the name starts with an underscore so that pytest does not collect it.
"""

from __future__ import annotations

import numpy as np

EPS = float(np.finfo(np.float64).eps)


def host(a) -> np.ndarray:
    """A float64 numpy copy of an array or tensor."""
    return np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)


def _like(a, w):
    """``a`` (numpy) in the backend of ``w`` (numpy array or torch tensor)."""
    if isinstance(w, np.ndarray):
        return a
    import torch

    return torch.as_tensor(a, dtype=w.dtype, device=w.device)


def dense_hessian(inner, w, log_alpha) -> np.ndarray:
    """The inner problem's Hessian at ``w`` as a dense matrix (one product per column)."""
    w = _like(host(w), inner.init_coef())
    hvp = inner.hessian_operator(w, log_alpha)
    n = w.shape[0]
    columns = [host(hvp(_like(e, w))) for e in np.eye(n)]
    h = np.column_stack(columns)
    return (h + h.T) / 2


def cross_matrix(inner, w, log_alpha) -> np.ndarray:
    """``d^2 r / (d log_alpha d w)`` as a dense ``(n_hyper, n_params)`` matrix (rows: c_j)."""
    w = _like(host(w), inner.init_coef())
    n = w.shape[0]
    rows = [np.atleast_1d(host(inner.cross_vjp(w, log_alpha, _like(e, w)))) for e in np.eye(n)]
    return np.column_stack(rows)


def smallest_eigenvalue(h: np.ndarray) -> float:
    """The smallest eigenvalue of a symmetric matrix that is not zero up to round-off."""
    eigenvalues = np.linalg.eigvalsh(h)
    nonzero = eigenvalues[eigenvalues > 1e3 * EPS * eigenvalues[-1]]
    return float(nonzero[0])


def condition_number(h: np.ndarray) -> float:
    """``lambda_max / lambda_min`` over the non-zero spectrum of a symmetric matrix."""
    return float(np.linalg.eigvalsh(h)[-1] / smallest_eigenvalue(h))


def solution_error_bound(inner, w, log_alpha) -> float:
    """First-order bound of ``||w - w*||``: ``||grad r(w)|| / lambda_min(H(w))``."""
    g = host(inner.grad(_like(host(w), inner.init_coef()), log_alpha))
    return float(np.linalg.norm(g) / smallest_eigenvalue(dense_hessian(inner, w, log_alpha)))


def exact_hypergradient_at(inner, outer, w, log_alpha) -> np.ndarray:
    """``-C H(w)^+ grad outer(w)``: the implicit-function hypergradient at the point ``w``.

    The pseudo-inverse covers the multinomial model with intercepts, whose Hessian is singular
    along a common shift of the intercepts (the outer gradient has no component there).
    """
    h = dense_hessian(inner, w, log_alpha)
    v = host(outer.grad(_like(host(w), inner.init_coef())))
    q = np.linalg.lstsq(h, v, rcond=None)[0]
    grad = -cross_matrix(inner, w, log_alpha) @ q
    return grad.reshape(np.shape(log_alpha))


def adjoint_error_bound(inner, outer, w, log_alpha, q) -> float:
    """``||H^+ c|| ||H q - v||`` summed over the rows ``c`` of the cross derivative: a bound of
    ``|grad(q) - exact_hypergradient_at(w)|`` (Cauchy-Schwarz), for any adjoint ``q``."""
    h = dense_hessian(inner, w, log_alpha)
    v = np.asarray(outer.grad(w), dtype=np.float64)
    residual = float(np.linalg.norm(h @ np.asarray(q, dtype=np.float64) - v))
    cross = cross_matrix(inner, w, log_alpha)
    sensitivity = np.linalg.norm(np.linalg.lstsq(h, cross.T, rcond=None)[0], axis=0)
    return float(np.sum(sensitivity) * residual)


def best_multiple_residual(h: np.ndarray, q: np.ndarray, v: np.ndarray) -> float:
    """``min_beta ||beta H q - v|| / ||v||``: the sine of the angle between ``H q`` and ``v``."""
    hq = h @ q
    beta = float(v @ hq / (hq @ hq))
    return float(np.linalg.norm(beta * hq - v) / np.linalg.norm(v))


def pairs_of(memory):
    """The memory's pairs as two numpy arrays (oldest first), whatever the backend."""
    return tuple(host(a) for a in memory.pairs())


def pair_discrepancy(res_a, res_b) -> float:
    """Largest relative difference between corresponding secant pairs of two results' memories
    (numpy or torch)."""
    s, y = pairs_of(res_a.inner_state.memory)
    s_t, y_t = pairs_of(res_b.inner_state.memory)
    assert s.shape == s_t.shape  # the same pairs were kept
    if s.shape[0] == 0:
        return 0.0
    ds = np.linalg.norm(s - s_t, axis=1) / np.linalg.norm(s, axis=1)
    dy = np.linalg.norm(y - y_t, axis=1) / np.linalg.norm(y, axis=1)
    return float(max(ds.max(), dy.max()))


def update_amplification(memory) -> float:
    """``sum_k ||s_k|| ||y_k|| / s_k^T y_k``: how much the BFGS recursion can amplify relative
    perturbations of its pairs (each update's terms carry ``rho_k = 1 / s_k^T y_k``)."""
    s, y = pairs_of(memory)
    return float(
        np.sum(np.linalg.norm(s, axis=1) * np.linalg.norm(y, axis=1) / np.sum(s * y, axis=1))
    )


def adjoint_tolerance(res_a, res_b, rtol: float) -> float:
    """Relative tolerance between the adjoints of two runs of the same computation that differ
    only by round-off (two backends, two BLAS kernels, two summation orders).

    CG (at a tight ``cg_tol``) and Jacobian-free adjoints follow the iterates: ``rtol``, the
    tolerance of the iterates' comparison. A SHINE estimate is a function of the memory's
    pairs, and pairs near the solution are short steps whose relative round-off is that of the
    iterates divided by the step length, orders of magnitude above the iterates' own (1e-12
    iterates give 1e-8 pairs at ``tol=1e-6``). To first order each BFGS update passes its
    pair's relative perturbation on, amplified by at most ``1/cos(s_k, y_k)``; the safeguard's
    rescaling and refine's CG iterations at most double it. So the estimates agree to
    ``2 * 2 sum_k 1/cos_k`` times the pairs' measured discrepancy (the pairs themselves come
    from the iterates, compared at ``rtol``).
    """
    backward = res_a.info["backward"]
    if backward in ("cg", "jacobian-free") or "fallback" in backward:
        return rtol
    amplification = update_amplification(res_a.inner_state.memory)
    return rtol + 4.0 * amplification * pair_discrepancy(res_a, res_b)


def hypergradient_agreement_bound(res_a, res_b, penalty) -> float:
    """Bound of ``||grad_a - grad_b||`` implied by the measured differences of ``w`` and ``q``.

    The hypergradient of the built-in problems is ``-(penalty * w) . q`` (per feature: per
    coordinate), so it moves by at most ``||penalty * w|| ||dq|| + ||penalty * q|| ||dw||``
    (to first order), plus a few ulps of its own size for the sum.
    """

    w, q = host(res_a.coef), host(res_a.q)
    p = np.zeros_like(w)
    p[: np.size(penalty)] = penalty
    dw, dq = np.linalg.norm(w - host(res_b.coef)), np.linalg.norm(q - host(res_b.q))
    bound = np.linalg.norm(p * w) * dq + np.linalg.norm(p * q) * dw
    return float(bound + 1e3 * EPS * np.linalg.norm(np.atleast_1d(res_a.grad)))


def gradient_bound(inner, tol: float) -> float:
    """A bound of ``||grad r(w)||`` at a point that meets the relative stopping rule ``tol``.

    The rule is ``hypot(||g_coef|| / s_coef, ||g_intercept|| / s_intercept) <= tol`` (without an
    intercept, ``||g|| / ||grad r(0)|| <= tol``), so ``||g|| <= tol * max(s_coef, s_intercept)``.
    """
    if not getattr(inner, "fit_intercept", False):
        return tol * inner.gradient_scale
    _, coef_scale, intercept_scale = inner._tolerance_scales()
    return tol * max(coef_scale, intercept_scale)


def finite_difference_error_bound(inner, outer, log_alpha, *, step, tol, direction=None):
    """A bound of the error of the central difference of the outer value (full or directional).

    - Noise: each differenced solve stops within ``e = gradient_bound / lambda_min`` of its
      optimum, so its value errs by ``||grad outer|| e`` (first order), and the difference by
      ``2 ||grad outer|| e / (2 step)``; plus the round-off of the values, ``eps |f| / step``.
    - Truncation, ``step^2 |f'''| / 6``: estimated from the difference at twice the step,
      ``|D(2h) - D(h)| = 3 (h^2 |f'''| / 6)`` to leading order, whose own noise is at most
      1.5 times the noise above.

    Returns the bound on the Euclidean norm of the error (per coordinate, summed in quadrature
    for a full gradient).
    """
    from hoag_shine import finite_difference_hypergradient, hypergradient

    center = hypergradient(inner, outer, log_alpha, method="jacobian-free", tol=tol)
    h = dense_hessian(inner, center.coef, log_alpha)
    distance = gradient_bound(inner, tol) / smallest_eigenvalue(h)
    slope = float(np.linalg.norm(host(outer.grad(center.coef))))
    noise = slope * distance / step + 10 * EPS * abs(center.value) / step
    fd = [
        np.atleast_1d(
            finite_difference_hypergradient(
                inner, outer, log_alpha, step=s, tol=tol, direction=direction
            )
        )
        for s in (step, 2 * step)
    ]
    n = fd[0].size
    truncation = np.linalg.norm(fd[1] - fd[0])
    return float(np.sqrt(n) * 2.5 * noise + truncation)


def hypergradient_error_bound(inner, outer, res, log_alpha, cg_tol: float) -> float:
    """A bound of ``||res.grad - exact||`` for an exact-adjoint result (CG at ``cg_tol``).

    The inner solution is within ``||g|| / lambda_min`` of the optimum and CG's adjoint within
    ``cg_tol`` relative (per block) of ``H^{-1} v``; to first order the hypergradient's terms
    move by the condition number of ``H`` times these relative errors (a factor 10 for the
    norms).
    """
    w = host(res.coef)
    relative_distance = solution_error_bound(inner, w, log_alpha) / np.linalg.norm(w)
    cond = condition_number(dense_hessian(inner, w, log_alpha))
    # -c . q sums terms much larger than the result when they cancel: the relative errors
    # apply to the terms, ||C|| ||q||, not to the sum (also the round-off of a dense reference).
    terms = np.linalg.norm(cross_matrix(inner, w, log_alpha)) * np.linalg.norm(host(res.q))
    return float(10 * cond * (relative_distance + cg_tol + 10 * EPS) * terms)


def refit_decision_error_bound(estimator, X, y) -> float:
    """A bound of how far the decision values (logistic) or predictions (ridge) of a fitted
    :class:`BilevelEstimator` can be from those of the exact solution at its penalty.

    The refit stops at a relative tolerance, so its coefficients are within
    ``||g|| / lambda_min`` of the optimum of the problem on all the data; a sample's decision
    values move by at most ``||(x_i, 1)||`` times that. (Probabilities move by at most half of
    it: the softmax, and the sigmoid, are 1/2-Lipschitz in the infinity norm.)
    """
    from hoag_shine.problems import LogisticRegressionProblem, RidgeProblem

    model = estimator.best_estimator_
    X = np.asarray(X, dtype=np.float64)
    coef = np.atleast_2d(np.asarray(model.coef_, dtype=np.float64)).T  # (n_features, K)
    w = np.concatenate([coef.ravel(), np.atleast_1d(model.intercept_)])
    problem_class = RidgeProblem if hasattr(model, "alpha") else LogisticRegressionProblem
    problem = problem_class(X, y, fit_intercept=True)
    distance = solution_error_bound(problem, w, estimator.best_log_alpha_)
    row_norm = float(np.sqrt(np.max(np.sum(X**2, axis=1)) + 1.0))
    return row_norm * distance
