"""Tests of the solvers: L-BFGS (with OPA), Broyden, conjugate gradient and the line search.

Every check compares against a reference computed independently in the test: dense linear
algebra, a dense BFGS/Broyden matrix built from the same pairs, or a closed form.
"""

import numpy as np
import pytest
from scipy.optimize import rosen, rosen_der
from scipy.sparse.linalg import LinearOperator

from hoag_shine.solvers import (
    LBFGS,
    Broyden,
    LBFGSMemory,
    NewtonCG,
    conjugate_gradient,
    strong_wolfe,
)

torch = pytest.importorskip("torch")


# -- helpers ----------------------------------------------------------------------------------


def spd_matrix(rng, d, cond):
    """A random symmetric positive-definite matrix with eigenvalues in [1, cond]."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a = (q * np.logspace(0, np.log10(cond), d)) @ q.T
    return (a + a.T) / 2


def quadratic(a, b):
    """``x -> (1/2 x^T A x - b^T x, A x - b)``."""

    def value_and_grad(x):
        g = a @ x - b
        return 0.5 * float(x @ (g - b)), g

    return value_and_grad


def dense_bfgs_inverse(s_rows, y_rows):
    """Dense inverse BFGS matrix from pairs (oldest first), H0 = gamma I of the newest pair."""
    s_new, y_new = s_rows[-1], y_rows[-1]
    d = s_new.shape[0]
    h = (s_new @ y_new) / (y_new @ y_new) * np.eye(d)
    for s, y in zip(s_rows, y_rows, strict=True):
        rho = 1.0 / (s @ y)
        left = np.eye(d) - rho * np.outer(s, y)
        h = left @ h @ left.T + rho * np.outer(s, s)
    return h


def dense(operator, d, method="matvec"):
    """Dense matrix of a linear map by applying it to the identity columns."""
    apply = getattr(operator, method)
    return np.column_stack([apply(e) for e in np.eye(d)])


def relative(a, b):
    return np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b))


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture
def quad():
    rng = np.random.default_rng(0)
    d = 30
    a = spd_matrix(rng, d, 1e2)
    b = rng.standard_normal(d)
    return a, b, np.linalg.solve(a, b)


# -- L-BFGS: convergence ----------------------------------------------------------------------


def test_lbfgs_converges_on_quadratic(quad):
    a, b, x_star = quad
    tol = 1e-10
    state = LBFGS(memory_size=5, tol=tol, max_iter=1000).run(quadratic(a, b), np.zeros(30))
    assert state.converged
    assert state.grad_norm <= tol
    assert np.linalg.norm(a @ state.x - b) <= tol
    # x - x* = A^{-1} g, so ||x - x*|| <= ||g|| / lambda_min(A) <= tol / lambda_min (lambda_min
    # is 1 here); the residual a @ x - b is recomputed, hence the round-off of one product.
    lambda_min = np.linalg.eigvalsh(a)[0]
    round_off = 30 * np.finfo(float).eps * np.linalg.norm(a, 2) * np.linalg.norm(x_star)
    assert np.linalg.norm(state.x - x_star) <= (tol + round_off) / lambda_min
    # f(x) - f* = 1/2 (x - x*)^T A (x - x*) <= ||g||^2 / (2 lambda_min), plus the round-off of
    # the value itself (a few ulps of its terms).
    f_star = -0.5 * b @ x_star
    value_round_off = 30 * np.finfo(float).eps * np.linalg.norm(b) * np.linalg.norm(x_star)
    assert abs(state.value - f_star) <= tol**2 / (2 * lambda_min) + value_round_off
    assert 0 < state.n_iter < 300
    assert state.n_fun_evals >= state.n_iter + 1
    assert state.n_opa_evals == 0


@pytest.mark.parametrize(
    ("x0", "memory_size"),
    [(np.array([-1.2, 1.0]), 10), (np.zeros(10), 10), (np.full(6, -0.5), 3)],
)
def test_lbfgs_converges_on_rosenbrock(x0, memory_size):
    x0_copy = x0.copy()
    state = LBFGS(memory_size=memory_size, tol=1e-9, max_iter=2000).run(
        lambda x: (rosen(x), rosen_der(x)), x0
    )
    assert state.converged, state.message
    np.testing.assert_allclose(state.x, np.ones_like(x0), atol=1e-7)
    assert state.value < 1e-14
    np.testing.assert_array_equal(x0, x0_copy)


def test_lbfgs_respects_max_iter_and_reports_it(quad):
    a, b, _ = quad
    state = LBFGS(memory_size=5, tol=1e-12, max_iter=3).run(quadratic(a, b), np.zeros(30))
    assert state.n_iter == 3
    assert not state.converged
    assert "maximum" in state.message
    # The state's gradient is the gradient at the returned iterate.
    np.testing.assert_allclose(state.grad, a @ state.x - b, rtol=1e-12)
    assert state.grad_norm == pytest.approx(np.linalg.norm(a @ state.x - b), rel=1e-12)


def test_lbfgs_does_not_modify_x0(quad):
    a, b, _ = quad
    x0 = np.random.default_rng(1).standard_normal(30)
    x0_copy = x0.copy()
    state = LBFGS(memory_size=5, tol=1e-8).run(quadratic(a, b), x0)
    np.testing.assert_array_equal(x0, x0_copy)
    assert state.x is not x0
    # And the state does not alias it afterwards either.
    state.x[:] = 0.0
    np.testing.assert_array_equal(x0, x0_copy)


def test_lbfgs_converges_with_huge_curvature():
    # The logistic problem at log_alpha = 30 (allowed: |log_alpha| <= 100) looks like this.
    b = np.linspace(1.0, 3.0, 5)
    curvature = 1e13
    state = LBFGS(tol=1e-8).run(
        lambda x: (0.5 * curvature * x @ x - b @ x, curvature * x - b), np.zeros(5)
    )
    assert state.converged, state.message
    np.testing.assert_allclose(state.x, b / curvature, rtol=1e-8)


# -- L-BFGS: the inverse estimate ---------------------------------------------------------------


def test_inverse_hessian_secant_equation_and_dense_bfgs(quad):
    a, b, _ = quad
    state = LBFGS(memory_size=6, tol=1e-8).run(quadratic(a, b), np.zeros(30))
    h = state.inverse_hessian
    assert isinstance(h, LinearOperator)
    assert h.shape == (30, 30)
    s_rows, y_rows = state.memory.pairs()
    assert s_rows.shape == y_rows.shape == (6, 30)
    assert state.memory.count == 6
    # Secant equation of the newest pair.
    assert relative(h @ y_rows[-1], s_rows[-1]) < 1e-10
    # The operator is the dense BFGS inverse of the same pairs, in the same order.
    reference = dense_bfgs_inverse(s_rows, y_rows)
    assert relative(dense(h, 30), reference) < 1e-10
    rng = np.random.default_rng(2)
    for v in rng.standard_normal((3, 30)):
        assert relative(h @ v, reference @ v) < 1e-10
    # gamma is s^T y / y^T y of the newest pair.
    gamma = s_rows[-1] @ y_rows[-1] / (y_rows[-1] @ y_rows[-1])
    assert state.memory.gamma == pytest.approx(gamma, rel=1e-12)


def test_inverse_hessian_after_more_than_memory_size_updates(quad):
    # The solver wraps its circular buffer many times: the unrolled order must still be right.
    a, b, _ = quad
    points = []

    def value_and_grad(x):
        points.append(x.copy())
        return quadratic(a, b)(x)

    # A fixed number of iterations (tol=0 never stops the solver earlier): 14 pairs through a
    # buffer of 4 leave it unaligned with its storage (else any order test is vacuous).
    state = LBFGS(memory_size=4, tol=0.0, max_iter=14).run(value_and_grad, np.zeros(30))
    assert state.n_iter == 14 and state.memory.n_skipped == 0
    assert (state.n_iter - state.memory.n_skipped) % 4 == 2
    s_rows, y_rows = state.memory.pairs()
    # The newest pair is the solver's last step: x - s_newest is the previous iterate, which
    # was evaluated, and y_newest the change of gradient along that step.
    previous = state.x - s_rows[-1]
    assert min(np.linalg.norm(p - previous) for p in points) <= 1e-12 * np.linalg.norm(state.x)
    np.testing.assert_allclose(y_rows[-1], a @ s_rows[-1], rtol=1e-6, atol=1e-12)
    reference = dense_bfgs_inverse(s_rows, y_rows)
    assert relative(dense(state.inverse_hessian, 30), reference) < 1e-9
    # The newest pair is the last step the solver took: its secant equation holds.
    assert relative(state.inverse_hessian @ y_rows[-1], s_rows[-1]) < 1e-10


def test_inverse_hessian_is_symmetric(quad):
    a, b, _ = quad
    state = LBFGS(memory_size=5, tol=1e-8).run(quadratic(a, b), np.zeros(30))
    op = state.memory.as_linear_operator()
    h = dense(op, 30)
    np.testing.assert_allclose(h, h.T, rtol=0, atol=1e-12 * np.abs(h).max())
    np.testing.assert_allclose(dense(op, 30, "rmatvec"), h, rtol=1e-14, atol=0)
    rng = np.random.default_rng(3)
    u, v = rng.standard_normal((2, 30))
    assert u @ (op @ v) == pytest.approx(v @ (op @ u), rel=1e-12)
    # Positive definite (BFGS keeps it so with positive curvature pairs).
    assert np.linalg.eigvalsh((h + h.T) / 2).min() > 0


def _random_pairs(rng, n_pairs, d):
    a = spd_matrix(rng, d, 50.0)
    s = rng.standard_normal((n_pairs, d))
    return s, s @ a


def test_memory_chronological_order_after_wraparound():
    rng = np.random.default_rng(4)
    d = 8
    s_all, y_all = _random_pairs(rng, 7, d)
    memory = LBFGSMemory(3, np.zeros(d))
    for s, y in zip(s_all, y_all, strict=True):
        assert memory.push(s, y)
    assert memory.count == 3
    # Slots written: 0,1,2,0,1,2,0 -> pairs 4,5,6 live in slots 1,2,0.
    assert memory.chronological() == [1, 2, 0]
    s_rows, y_rows = memory.pairs()
    np.testing.assert_array_equal(s_rows, s_all[4:])
    np.testing.assert_array_equal(y_rows, y_all[4:])

    reference = dense_bfgs_inverse(s_all[4:], y_all[4:])
    h = dense(memory, d)
    assert relative(h, reference) < 1e-12
    assert relative(memory.matvec(y_all[6]), s_all[6]) < 1e-12
    # Storage order (slot 0, 1, 2 = pairs 6, 4, 5) or H0 = I would give another matrix.
    wrong_order = dense_bfgs_inverse(s_all[[6, 4, 5]], y_all[[6, 4, 5]])
    assert relative(wrong_order, reference) > 1e-3
    wrong_h0 = np.eye(d)
    for s, y in zip(s_all[4:], y_all[4:], strict=True):
        rho = 1.0 / (s @ y)
        left = np.eye(d) - rho * np.outer(s, y)
        wrong_h0 = left @ wrong_h0 @ left.T + rho * np.outer(s, s)
    assert relative(wrong_h0, reference) > 1e-3
    # pairs() returns copies.
    s_rows[:] = 0.0
    assert relative(dense(memory, d), reference) < 1e-12


def test_push_and_matvec_from_the_previous_product_matches_the_direct_one():
    """With ``previous``, the products of the stored pairs with ``y = v - previous`` are taken as
    differences of the products with ``v`` and ``previous`` (one pass over the pairs instead of
    two). Along an iteration's gradients of a quadratic (condition 50), while the memory fills,
    after it wraps, and across a pair that is skipped, the estimate matches the dense BFGS
    inverse: the difference of two dot products of size ``d`` loses at most about ``2 d eps``
    of ``|s_j| |v|`` more than the direct product, and the compact form's two triangular
    solves multiply that by at most the square of the pairs' condition (50^2)."""
    rng = np.random.default_rng(11)
    d, size = 12, 4
    a = spd_matrix(rng, d, 50.0)
    bound = 50.0**2 * 4 * d * np.finfo(float).eps
    memory = LBFGSMemory(size, np.zeros(d))
    x = rng.standard_normal(d)
    grad = a @ x
    memory.matvec(grad)  # the first product: nothing stored, nothing remembered
    kept_s, kept_y = [], []
    for k in range(9):
        step = rng.standard_normal(d)
        grad_new = a @ (x + step)
        y = grad_new - grad
        if k == 5:
            y = -y  # negative curvature: skipped, the memory and its products are kept
        h_v = memory.push_and_matvec(step, y, grad_new, previous=grad)
        if k != 5:
            kept_s.append(step)
            kept_y.append(y)
        reference = dense_bfgs_inverse(np.array(kept_s[-size:]), np.array(kept_y[-size:]))
        assert relative(h_v, reference @ grad_new) < bound
        x, grad = x + step, grad_new
    assert memory.n_skipped == 1 and memory.count == size  # 8 pairs kept: wrapped twice
    assert relative(dense(memory, d), reference) < bound  # (its products replace grad's)
    # Another vector than the last product's: the products with y are computed directly.
    other = rng.standard_normal(d)
    step = rng.standard_normal(d)
    h_v = memory.push_and_matvec(step, a @ step, grad, previous=other)
    reference = dense_bfgs_inverse(
        np.array([*kept_s[-size + 1 :], step]), np.array([*kept_y[-size + 1 :], a @ step])
    )
    assert relative(h_v, reference @ grad) < bound


def test_memory_empty_is_identity_and_clear():
    d = 5
    memory = LBFGSMemory(3, np.zeros(d))
    v = np.arange(1.0, d + 1)
    np.testing.assert_array_equal(memory.matvec(v), v)
    assert memory.gamma == 1.0
    assert memory.pairs()[0].shape == (0, d)
    rng = np.random.default_rng(5)
    s_all, y_all = _random_pairs(rng, 2, d)
    memory.push(s_all[0], y_all[0])
    assert not np.allclose(memory.matvec(v), v)
    memory.clear()
    assert memory.count == 0
    np.testing.assert_array_equal(memory.matvec(v), v)
    with pytest.raises(ValueError, match="at least 1"):
        LBFGSMemory(0, np.zeros(d))


@pytest.mark.parametrize("sign", [-1.0, 0.0])
def test_memory_curvature_safeguard_skips_pair(sign):
    rng = np.random.default_rng(6)
    d = 6
    s_all, y_all = _random_pairs(rng, 2, d)
    memory = LBFGSMemory(4, np.zeros(d))
    assert memory.push(s_all[0], y_all[0])
    before = dense(memory, d)
    s = s_all[1]
    # y with s^T y = sign * ||s||^2 (negative or zero curvature).
    y = rng.standard_normal(d)
    y += (sign * (s @ s) - s @ y) / (s @ s) * s
    assert s @ y == pytest.approx(sign * (s @ s), abs=1e-12)
    assert not memory.push(s, y)
    assert memory.count == 1
    assert memory.n_skipped == 1
    np.testing.assert_array_equal(dense(memory, d), before)
    # Non-finite pairs are skipped too.
    assert not memory.push(s, np.full(d, np.nan))
    assert memory.n_skipped == 2
    assert memory.count == 1


def test_memory_curvature_eps_threshold():
    s = np.array([1.0, 0.0, 0.0])
    y = np.array([1e-6, 1.0, 0.0])  # s^T y / (||s|| ||y||) ~ 1e-6
    assert not LBFGSMemory(2, s, curvature_eps=1e-4).push(s, y)
    assert LBFGSMemory(2, s, curvature_eps=1e-8).push(s, y)


def test_lbfgs_skips_negative_curvature_pairs_on_nonconvex_problem():
    # f(x) = sum(x^4/4 - x^2/2): negative curvature near 0 produces pairs with s^T y < 0
    # on some steps, which must be skipped rather than pushed.
    def value_and_grad(x):
        return float(np.sum(x**4 / 4 - x**2 / 2)), x**3 - x

    x0 = np.array([0.3, -0.2, 0.1, 0.05])
    state = LBFGS(memory_size=5, tol=1e-10).run(value_and_grad, x0)
    assert state.converged
    np.testing.assert_allclose(np.abs(state.x), 1.0, rtol=1e-8)
    s_rows, y_rows = state.memory.pairs()
    assert np.all(np.sum(s_rows * y_rows, axis=1) > 0)


def test_lbfgs_warm_start_memory_copied_and_faster():
    # A memory larger than the dimension: the pairs of the first solve describe A well.
    rng = np.random.default_rng(7)
    d = 5
    a = spd_matrix(rng, d, 1e3)
    b = rng.standard_normal(d)
    solver = LBFGS(memory_size=10, tol=1e-8, max_iter=5000)
    first = solver.run(quadratic(a, b), np.zeros(d))
    memory = first.memory
    count, n_skipped = memory.count, memory.n_skipped
    s_before, y_before = (arr.copy() for arr in memory.pairs())
    h_before = dense(memory, d)

    b2 = b + 1e-2 * rng.standard_normal(d)
    cold = solver.run(quadratic(a, b2), first.x)
    warm = solver.run(quadratic(a, b2), first.x, memory=memory)
    assert cold.converged and warm.converged
    # tol / lambda_min from the optimum (lambda_min = 1).
    assert np.linalg.norm(warm.x - np.linalg.solve(a, b2)) <= 1e-8 / np.linalg.eigvalsh(a)[0]
    assert warm.n_iter < 0.7 * cold.n_iter
    # The memory given as warm start is unchanged (the solver worked on a copy).
    assert warm.memory is not memory
    assert memory.count == count and memory.n_skipped == n_skipped
    s_after, y_after = memory.pairs()
    np.testing.assert_array_equal(s_after, s_before)
    np.testing.assert_array_equal(y_after, y_before)
    np.testing.assert_array_equal(dense(memory, d), h_before)


def test_lbfgs_torch_float64_matches_numpy():
    rng = np.random.default_rng(19)
    a = spd_matrix(rng, 30, 10.0)
    b = rng.standard_normal(30)
    points = {"numpy": [], "torch": []}

    def vg_numpy(x):
        points["numpy"].append(x.copy())
        return quadratic(a, b)(x)

    at, bt = torch.from_numpy(a), torch.from_numpy(b)

    def vg_torch(x):
        points["torch"].append(x.clone().numpy())
        g = at @ x - bt
        return 0.5 * float(x @ (g - bt)), g

    solver = LBFGS(memory_size=5, tol=1e-7)
    st_np = solver.run(vg_numpy, np.zeros(30))
    x0 = torch.zeros(30, dtype=torch.float64)
    st_t = solver.run(vg_torch, x0)
    assert isinstance(st_t.x, torch.Tensor)
    assert st_t.x.dtype == torch.float64
    assert torch.count_nonzero(x0) == 0
    assert st_t.converged and st_np.converged
    # The same algorithm: the first evaluations are the same points, up to the round-off of
    # the products (torch's MKL and numpy's BLAS sum in other orders), which the first
    # iterations amplify little (cond 10): the points agree to a few ulps of their norm.
    for p_t, p_np in zip(points["torch"][1:6], points["numpy"][1:6], strict=True):
        assert relative(p_t, p_np) <= 1e3 * np.finfo(float).eps
    # Later, round-off may make the paths part; both solutions meet the tolerance, so each is
    # within tol / lambda_min of the optimum (lambda_min = 1).
    x_star = np.linalg.solve(a, b)
    bound = 1e-7 / np.linalg.eigvalsh(a)[0]
    assert np.linalg.norm(st_t.x.numpy() - x_star) <= bound
    assert np.linalg.norm(st_np.x - x_star) <= bound
    # The inverse estimate on tensors is the memory itself: the dense BFGS of its own pairs
    # (the last pairs are round-off sensitive steps, so numpy's pairs differ slightly).
    v = np.random.default_rng(8).standard_normal(30)
    hv_t = st_t.inverse_hessian.matvec(torch.from_numpy(v))
    assert isinstance(hv_t, torch.Tensor)
    s_t, y_t = (arr.numpy() for arr in st_t.memory.pairs())
    assert s_t.shape == (5, 30)
    assert relative(hv_t.numpy(), dense_bfgs_inverse(s_t, y_t) @ v) < 1e-10
    assert relative(st_t.inverse_hessian @ torch.from_numpy(y_t[-1]), torch.from_numpy(s_t[-1])) < (
        1e-10
    )
    with pytest.raises(TypeError):
        st_t.memory.as_linear_operator()


# -- L-BFGS: outer-problem awareness ----------------------------------------------------------


def test_opa_same_optimum_and_better_inverse_in_direction():
    """OPA moves no iterate, so both solves reach the same optimum within their tolerance; and
    its pairs make the estimate point along ``A^{-1} v``.

    A moderately conditioned quadratic (cond 1e2, memory 10, OPA every 3 iterations) keeps
    the path short (about 100 iterations) and insensitive to round-off: with ``b`` perturbed
    by 1e-15 to 1e-14 relative the iteration counts stay within one, and the cosines within
    [0.41, 0.55] without OPA and [0.97, 1.0] with it. (On an ill-conditioned problem with a
    short memory the path runs thousands of chaotic iterations and the final estimate's norm
    error varies by 10x under such perturbations: only the direction is compared here.)
    """
    rng = np.random.default_rng(9)
    d = 40
    a = spd_matrix(rng, d, 1e2)
    b, v = rng.standard_normal(d), rng.standard_normal(d)
    x_star = np.linalg.solve(a, b)
    target = np.linalg.solve(a, v)
    plain = LBFGS(memory_size=10, tol=1e-8, max_iter=5000).run(quadratic(a, b), np.zeros(d))
    calls = []

    def direction(x):
        calls.append(x.copy())
        return v

    opa = LBFGS(memory_size=10, tol=1e-8, max_iter=5000, opa_freq=3, opa_final=2).run(
        quadratic(a, b), np.zeros(d), opa_direction=direction
    )
    assert plain.converged and opa.converged
    assert plain.n_opa_evals == 0
    assert opa.n_opa_evals > 0
    assert opa.n_opa_evals == len(calls)
    assert opa.n_fun_evals > opa.n_opa_evals
    # ||x - x*|| <= ||grad|| / lambda_min, with ||grad|| <= tol at convergence.
    error_bound = 1e-8 / np.linalg.eigvalsh(a)[0]
    assert np.linalg.norm(opa.x - x_star) <= error_bound
    assert np.linalg.norm(plain.x - x_star) <= error_bound

    cos_plain = cosine(plain.inverse_hessian @ v, target)
    cos_opa = cosine(opa.inverse_hessian @ v, target)
    assert cos_opa > 0.9
    assert cos_opa > cos_plain + 0.2


@pytest.fixture
def ill_quad():
    rng = np.random.default_rng(9)
    d = 40
    a = spd_matrix(rng, d, 1e4)
    b = rng.standard_normal(d)
    v = rng.standard_normal(d)
    return a, b, v


def test_opa_final_pair_is_exact_secant_pair_along_h_v(ill_quad):
    # With a memory that never fills, the estimate before the last OPA push is the dense BFGS
    # of all pairs but the last; the last pair must be (e, A e) with e parallel to H_prev v.
    a, b, v = ill_quad
    d = 40
    solver = LBFGS(memory_size=400, tol=1e-6, max_iter=300, opa_freq=None, opa_final=1)
    state = solver.run(quadratic(a, b), np.zeros(d), opa_direction=lambda x: v)
    assert state.converged
    assert state.n_opa_evals == 1
    s_rows, y_rows = state.memory.pairs()
    assert state.memory.count == state.n_iter + 1  # every solver pair kept, plus the OPA pair
    e, y_e = s_rows[-1], y_rows[-1]
    h_prev = dense_bfgs_inverse(s_rows[:-1], y_rows[:-1])
    assert cosine(e, h_prev @ v) > 1 - 1e-10
    assert relative(y_e, a @ e) < 1e-5  # a quadratic's secant pair is exact (up to round-off)
    # The rule for the pair's length: the last step's length, or the round-off floor
    # sqrt(eps) * max(1, ||x||) when that is larger; e is rescaled to it exactly (one division).
    last_step = np.linalg.norm(s_rows[-2])
    floor = np.sqrt(np.finfo(float).eps) * max(1.0, np.linalg.norm(state.x))
    assert np.linalg.norm(e) == pytest.approx(max(last_step, floor), rel=1e-12)
    h = state.inverse_hessian
    assert relative(h @ y_e, e) < 1e-10
    assert relative(dense(h, d), dense_bfgs_inverse(s_rows, y_rows)) < 1e-8


def test_opa_without_direction_is_plain_lbfgs(quad):
    a, b, _ = quad
    plain = LBFGS(memory_size=5, tol=1e-9).run(quadratic(a, b), np.zeros(30))
    with_freq = LBFGS(memory_size=5, tol=1e-9, opa_freq=2).run(quadratic(a, b), np.zeros(30))
    assert with_freq.n_opa_evals == 0
    assert with_freq.n_iter == plain.n_iter
    np.testing.assert_array_equal(with_freq.x, plain.x)


# -- Broyden ----------------------------------------------------------------------------------


def _tanh_problem(rng, n, scale=0.6):
    m = scale * rng.standard_normal((n, n)) / np.sqrt(n)
    c = rng.standard_normal(n)
    return m, c


def _fixed_point(m, c, iters=2000):
    z = np.zeros(m.shape[0])
    for _ in range(iters):
        z = np.tanh(m @ z + c)
    return z


def dense_broyden(g, z0, n_steps):
    """Good Broyden on the inverse, dense: returns iterates, residuals and matrices."""
    z = z0.copy()
    gz = g(z)
    b = -np.eye(z.shape[0])
    zs, gs, bs = [z.copy()], [gz.copy()], [b.copy()]
    for _ in range(n_steps):
        dz = -b @ gz
        z = z + dz
        g_new = g(z)
        dg = g_new - gz
        b_dg = b @ dg
        b = b + np.outer(dz - b_dg, dz @ b) / (dz @ b_dg)
        gz = g_new
        zs.append(z.copy())
        gs.append(gz.copy())
        bs.append(b.copy())
    return zs, gs, bs


def test_broyden_solves_nonsymmetric_root_problem():
    rng = np.random.default_rng(10)
    n = 12
    m, c = _tanh_problem(rng, n)
    assert np.linalg.norm(m - m.T) > 0.5
    z_star = _fixed_point(m, c)
    assert np.linalg.norm(np.tanh(m @ z_star + c) - z_star) < 1e-14
    z0 = np.zeros(n)
    state = Broyden(tol=1e-10, max_iter=50).run(lambda z: np.tanh(m @ z + c) - z, z0)
    assert state.converged
    assert state.x.shape == (n,)
    assert float(state.residual_norm) <= 1e-10
    assert float(state.residual_norm) == pytest.approx(
        np.linalg.norm(np.tanh(m @ state.x + c) - state.x), rel=1e-6
    )
    np.testing.assert_allclose(state.x, z_star, atol=1e-9)
    np.testing.assert_array_equal(z0, 0.0)
    assert 0 < state.n_iter < 50


def test_broyden_matches_dense_good_broyden():
    rng = np.random.default_rng(11)
    n = 7
    m, c = _tanh_problem(rng, n, scale=0.9)

    def g(z):
        return np.tanh(m @ z + c) - z

    z0 = 0.1 * rng.standard_normal(n)
    k = 5
    state = Broyden(tol=0.0, max_iter=k).run(g, z0)
    zs, gs, bs = dense_broyden(g, z0, k)
    residuals = [np.linalg.norm(r) for r in gs]
    best = int(np.argmin(residuals))
    np.testing.assert_allclose(state.x, zs[best], rtol=1e-10, atol=1e-12)
    assert int(state.inverse.counts[0]) == best
    b_dense = dense(state.inverse_jacobian, n)
    np.testing.assert_allclose(b_dense, bs[best], rtol=1e-9, atol=1e-12)
    # B = -I + U V^T with the stored factors.
    u = state.inverse.u[0, :best]
    v = state.inverse.v[0, :best]
    np.testing.assert_allclose(b_dense, -np.eye(n) + u.T @ v, rtol=1e-12, atol=1e-14)


def test_broyden_inverse_rmatvec_is_transpose():
    rng = np.random.default_rng(12)
    n = 9
    m, c = _tanh_problem(rng, n, scale=0.9)
    state = Broyden(tol=1e-10, max_iter=40).run(lambda z: np.tanh(m @ z + c) - z, np.zeros(n))
    assert state.converged
    op = state.inverse_jacobian
    assert isinstance(op, LinearOperator)
    b_mat = dense(op, n)
    bt_mat = dense(op, n, "rmatvec")
    # The estimate is genuinely non-symmetric, so rmatvec == matvec would fail below.
    assert np.linalg.norm(b_mat - b_mat.T) > 1e-3 * np.linalg.norm(b_mat)
    np.testing.assert_allclose(bt_mat, b_mat.T, rtol=1e-12, atol=1e-14)
    x, y = rng.standard_normal((2, n))
    assert y @ op.matvec(x) == pytest.approx(x @ op.rmatvec(y), rel=1e-12)
    # The estimate approximates J_g^{-1} at the solution (not exactly: Broyden's B does not
    # converge to it, but it must be in the right ballpark on this small problem).
    z = state.x
    jac = (1 - np.tanh(m @ z + c) ** 2)[:, None] * m - np.eye(n)
    assert relative(b_mat, np.linalg.inv(jac)) < 0.5


def test_broyden_zero_iterations_gives_minus_identity():
    rng = np.random.default_rng(13)
    n = 6
    m, _ = _tanh_problem(rng, n)
    # z = 0 solves tanh(M z) - z = 0.
    state = Broyden(tol=1e-12, max_iter=20).run(lambda z: np.tanh(m @ z) - z, np.zeros(n))
    assert state.n_iter == 0
    assert state.converged
    np.testing.assert_array_equal(state.x, 0.0)
    np.testing.assert_array_equal(dense(state.inverse_jacobian, n), -np.eye(n))
    np.testing.assert_array_equal(dense(state.inverse_jacobian, n, "rmatvec"), -np.eye(n))


def test_broyden_returns_lowest_residual_iterate():
    rng = np.random.default_rng(3)
    n = 8
    m = 1.5 * rng.standard_normal((n, n)) / np.sqrt(n)
    c = rng.standard_normal(n)
    points = []

    def g(z):
        points.append(z.copy())
        return np.tanh(m @ z + c) - z

    state = Broyden(tol=1e-12, max_iter=12).run(g, np.zeros(n))
    residuals = np.array([np.linalg.norm(np.tanh(m @ p + c) - p) for p in points])
    best = int(np.argmin(residuals))
    assert best != len(points) - 1  # the last iterate is not the best on this problem
    assert not state.converged
    np.testing.assert_array_equal(state.x, points[best])
    assert float(state.residual_norm) == pytest.approx(residuals[best], rel=1e-12)
    # The inverse is the one built up to that iterate.
    assert int(state.inverse.counts[0]) == best
    _, _, bs = dense_broyden(lambda z: np.tanh(m @ z + c) - z, np.zeros(n), best)
    np.testing.assert_allclose(dense(state.inverse_jacobian, n), bs[best], rtol=1e-8, atol=1e-10)


def test_broyden_torch_batch_matches_single_solves():
    rng = np.random.default_rng(14)
    n, batch = 10, 4
    m = 0.8 * rng.standard_normal((n, n)) / np.sqrt(n)
    cs = rng.standard_normal((batch, n))
    mt = torch.from_numpy(m)

    def g_batch(z):
        return torch.tanh(z @ mt.T + torch.from_numpy(cs)) - z

    z0 = torch.zeros(batch, n, dtype=torch.float64)
    state = Broyden(tol=1e-10, max_iter=60).run(g_batch, z0)
    assert isinstance(state.x, torch.Tensor)
    assert state.x.shape == (batch, n)
    assert state.residual_norm.shape == (batch,)
    assert state.converged
    assert torch.count_nonzero(z0) == 0
    for i in range(batch):
        c = cs[i]
        single = Broyden(tol=1e-10, max_iter=60).run(
            lambda z, c=c: np.tanh(m @ z + c) - z, np.zeros(n)
        )
        np.testing.assert_allclose(state.x[i].numpy(), single.x, atol=1e-9)
        np.testing.assert_allclose(state.x[i].numpy(), _fixed_point(m, c), atol=1e-9)
        assert float(state.residual_norm[i]) <= 1e-10


def test_broyden_torch_batch_inverse_per_sample():
    # With a fixed number of iterations (tol=0), every sample's estimate must equal its own
    # single-problem estimate, and rmatvec must be the per-sample transpose.
    rng = np.random.default_rng(15)
    n, batch, k = 6, 3, 4
    m = 0.8 * rng.standard_normal((n, n)) / np.sqrt(n)
    cs = rng.standard_normal((batch, n))
    mt, ct = torch.from_numpy(m), torch.from_numpy(cs)
    state = Broyden(tol=0.0, max_iter=k).run(
        lambda z: torch.tanh(z @ mt.T + ct) - z, torch.zeros(batch, n, dtype=torch.float64)
    )
    inverse = state.inverse_jacobian
    x = torch.from_numpy(rng.standard_normal((batch, n)))
    bx = inverse.matvec(x)
    btx = inverse.rmatvec(x)
    for i in range(batch):
        c = cs[i]
        single = Broyden(tol=0.0, max_iter=k).run(
            lambda z, c=c: np.tanh(m @ z + c) - z, np.zeros(n)
        )
        b_single = dense(single.inverse_jacobian, n)
        np.testing.assert_allclose(bx[i].numpy(), b_single @ x[i].numpy(), rtol=1e-10)
        np.testing.assert_allclose(btx[i].numpy(), b_single.T @ x[i].numpy(), rtol=1e-10)


# -- conjugate gradient -----------------------------------------------------------------------


@pytest.fixture
def spd_system():
    rng = np.random.default_rng(16)
    d = 50
    a = spd_matrix(rng, d, 1e3)
    b = rng.standard_normal(d)
    return a, b, np.linalg.solve(a, b)


@pytest.mark.parametrize("rtol", [1e-4, 1e-8, 1e-11])
def test_cg_solves_spd_system_to_tolerance(spd_system, rtol):
    a, b, x_star = spd_system
    result = conjugate_gradient(lambda v: a @ v, b, rtol=rtol, max_iter=1000)
    assert result.converged
    true_residual = np.linalg.norm(b - a @ result.x)
    assert result.residual_norm <= rtol * np.linalg.norm(b)
    assert true_residual <= 10 * rtol * np.linalg.norm(b)
    assert relative(result.x, x_star) <= 1e3 * 10 * rtol  # condition number times residual


def test_cg_exact_termination_small_system():
    rng = np.random.default_rng(17)
    d = 5
    a = spd_matrix(rng, d, 10.0)
    b = rng.standard_normal(d)
    result = conjugate_gradient(lambda v: a @ v, b, rtol=1e-12, max_iter=20)
    assert result.converged
    assert result.n_iter <= d + 1
    np.testing.assert_allclose(result.x, np.linalg.solve(a, b), rtol=1e-10)


def test_cg_warm_start_reduces_iterations(spd_system):
    a, b, x_star = spd_system
    x0 = x_star + 1e-4 * np.random.default_rng(18).standard_normal(50)
    x0_copy = x0.copy()
    cold = conjugate_gradient(lambda v: a @ v, b, rtol=1e-8, max_iter=1000)
    warm = conjugate_gradient(lambda v: a @ v, b, x0, rtol=1e-8, max_iter=1000)
    assert cold.converged and warm.converged
    assert warm.n_iter < cold.n_iter
    np.testing.assert_array_equal(x0, x0_copy)
    assert np.linalg.norm(b - a @ warm.x) <= 1e-7 * np.linalg.norm(b)
    # A start at the solution needs no iteration.
    exact = conjugate_gradient(lambda v: a @ v, b, x_star, rtol=1e-8)
    assert exact.n_iter == 0
    assert exact.converged


def test_cg_respects_max_iter(spd_system):
    a, b, _ = spd_system
    count = 0

    def matvec(v):
        nonlocal count
        count += 1
        return a @ v

    result = conjugate_gradient(matvec, b, rtol=1e-12, max_iter=4)
    assert result.n_iter == 4
    assert count == 4
    assert not result.converged
    # The reported residual is the true one (up to round-off).
    assert result.residual_norm == pytest.approx(np.linalg.norm(b - a @ result.x), rel=1e-8)
    assert result.residual_norm > 1e-12 * np.linalg.norm(b)


def test_cg_atol_and_torch(spd_system):
    a, b, x_star = spd_system
    result = conjugate_gradient(lambda v: a @ v, b, rtol=0.0, atol=1e-6, max_iter=1000)
    assert result.converged
    assert result.residual_norm <= 1e-6
    at = torch.from_numpy(a)
    res_t = conjugate_gradient(lambda v: at @ v, torch.from_numpy(b), rtol=1e-10, max_iter=1000)
    assert isinstance(res_t.x, torch.Tensor)
    np.testing.assert_allclose(res_t.x.numpy(), x_star, rtol=1e-6)


def test_cg_stop_when_ends_the_iterations_and_says_so(spd_system):
    a, b, _ = spd_system
    seen = []

    def stop_after_three(x, r):
        # CG hands over its iterate and the residual b - A x of that iterate.
        np.testing.assert_allclose(r, b - a @ x, atol=1e-8 * np.linalg.norm(b))
        seen.append(1)
        return len(seen) >= 3

    result = conjugate_gradient(lambda v: a @ v, b, rtol=1e-12, stop_when=stop_after_three)
    assert result.n_iter == 3 and result.stopped_early and result.converged
    assert result.residual_norm > 1e-12 * np.linalg.norm(b)  # the residual test did not stop it
    never = conjugate_gradient(
        lambda v: a @ v, b, rtol=1e-8, max_iter=1000, stop_when=lambda x, r: False
    )
    plain = conjugate_gradient(lambda v: a @ v, b, rtol=1e-8, max_iter=1000)
    assert never.converged and not never.stopped_early
    np.testing.assert_array_equal(never.x, plain.x)


# -- Newton-CG -----------------------------------------------------------------------------------


def logistic_objective(rng, n=80, d=12, alpha=1e-2):
    """L2-regularized logistic loss on random data: (value_and_grad, hessian_at, x_star)."""
    X = rng.standard_normal((n, d))
    y = (X @ rng.standard_normal(d) + 0.5 * rng.standard_normal(n) > 0).astype(float)

    def value_and_grad(w):
        z = X @ w
        value = np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * alpha * w @ w
        return float(value), X.T @ (1.0 / (1.0 + np.exp(-z)) - y) + alpha * w

    def hessian_at(w):
        p = 1.0 / (1.0 + np.exp(-(X @ w)))
        curvature = p * (1.0 - p)
        return lambda v: X.T @ (curvature * (X @ v)) + alpha * v

    # Reference: dense Newton steps, to round-off (the objective is strictly convex).
    x_star = np.zeros(d)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(X @ x_star)))
        hessian = X.T @ ((p * (1.0 - p))[:, None] * X) + alpha * np.eye(d)
        x_star = x_star - np.linalg.solve(hessian, value_and_grad(x_star)[1])
    return value_and_grad, hessian_at, x_star


def test_newton_cg_converges_to_the_solution_with_few_iterations():
    value_and_grad, hessian_at, x_star = logistic_objective(np.random.default_rng(30))
    x0 = np.zeros_like(x_star)
    tol = 1e-10
    state = NewtonCG(tol=tol).run(value_and_grad, x0, hessian=hessian_at)
    assert state.converged and state.message == "gradient norm below tolerance"
    assert state.grad_norm <= tol
    # ||x - x*|| <= ||g|| / lambda_min(H); lambda_min >= alpha = 1e-2 (the penalty).
    assert np.linalg.norm(state.x - x_star) <= tol / 1e-2 + 1e-9 * np.linalg.norm(x_star)
    np.testing.assert_array_equal(x0, np.zeros_like(x_star))  # not modified
    # Newton's local quadratic convergence: a handful of iterations, where L-BFGS needs more.
    lbfgs = LBFGS(tol=tol).run(value_and_grad, x0)
    assert state.n_iter < lbfgs.n_iter
    assert state.n_fun_evals >= state.n_iter + 1 and state.n_hvp >= state.n_iter
    assert state.n_opa_evals == 0


def test_newton_cg_step_test_and_max_iter():
    value_and_grad, hessian_at, x_star = logistic_objective(np.random.default_rng(31))
    x0 = np.zeros_like(x_star)
    # With step_tol, convergence also means a Newton step (an estimate of the distance to the
    # solution) of at most step_tol ||x||; the step is computed to a relative residual of 1/2,
    # so the true distance is at most twice that bound, to first order.
    step_tol = 1e-6
    state = NewtonCG(tol=1e-3, step_tol=step_tol).run(value_and_grad, x0, hessian=hessian_at)
    assert state.converged and "Newton step" in state.message
    assert np.linalg.norm(state.x - x_star) <= 2 * step_tol * np.linalg.norm(state.x) * 1.01
    capped = NewtonCG(tol=1e-14, max_iter=1).run(value_and_grad, x0, hessian=hessian_at)
    assert capped.n_iter == 1 and not capped.converged
    assert capped.message == "maximum number of iterations reached"


def test_newton_cg_step_test_shares_the_iteration_cg_solve():
    """A step test that fails costs no Hessian product of its own: the iteration's single CG
    solve checks the step's length on its way to the forcing term (not a solve to 1/2 and a
    restarted one)."""
    rng = np.random.default_rng(33)
    M = rng.standard_normal((40, 40))
    A = M @ M.T + 0.1 * np.eye(40)
    b = rng.standard_normal(40)

    def value_and_grad(x):
        return 0.5 * float(x @ A @ x) - float(b @ x), A @ x - b

    x0 = np.ones(40)
    # The gradient test always holds and the step test never does: one iteration, whose CG
    # runs to the first forcing term, 1/2.
    state = NewtonCG(tol=1e10, step_tol=1e-300, max_iter=1).run(
        value_and_grad, x0, hessian=lambda x: lambda v: A @ v
    )
    alone = conjugate_gradient(lambda v: A @ v, -value_and_grad(x0)[1], rtol=0.5)
    assert state.n_iter == 1 and state.n_hvp == alone.n_iter
    # A step test that holds ends the run at that same CG iterate, without a step.
    settled = NewtonCG(tol=1e10, step_tol=1e300).run(
        value_and_grad, x0, hessian=lambda x: lambda v: A @ v
    )
    assert settled.converged and settled.n_iter == 0 and settled.n_hvp == alone.n_iter
    np.testing.assert_array_equal(settled.x, x0)


def test_newton_cg_torch_matches_numpy():
    value_and_grad, hessian_at, x_star = logistic_objective(np.random.default_rng(32))

    def value_and_grad_t(w):
        value, grad = value_and_grad(w.numpy())
        return value, torch.from_numpy(grad)

    def hessian_at_t(w):
        hvp = hessian_at(w.numpy())
        return lambda v: torch.from_numpy(hvp(v.numpy()))

    x0 = torch.zeros(x_star.shape[0], dtype=torch.float64)
    state = NewtonCG(tol=1e-10).run(value_and_grad_t, x0, hessian=hessian_at_t)
    assert isinstance(state.x, torch.Tensor) and state.converged
    np.testing.assert_allclose(state.x.numpy(), x_star, atol=1e-7)


def test_newton_cg_at_round_off_with_a_long_step_is_converged():
    """A gradient below tol whose Newton step is long (vanishing curvature) and along which no
    trial lowers the value: the solution to round-off, reported as converged, in one pass."""
    x0 = np.ones(3)

    def value_and_grad(x):
        # Any move raises the value beyond the line search's round-off allowance.
        return 1.0 + 1e-6 * float(np.linalg.norm(x - x0)), np.full(3, 1e-20)

    state = NewtonCG(tol=1e-8, step_tol=1e-8).run(
        value_and_grad, x0, hessian=lambda x: lambda v: 1e-30 * v
    )
    assert state.converged and state.n_iter == 0
    assert state.message == "gradient norm below tolerance; no decrease along the Newton step"
    np.testing.assert_array_equal(state.x, x0)


def test_newton_cg_reports_a_non_finite_gradient():
    state = NewtonCG(tol=1e-8).run(
        lambda x: (float("nan"), x * np.nan), np.ones(3), hessian=lambda x: lambda v: v
    )
    assert not state.converged and state.message == "non-finite gradient"


# -- strong-Wolfe line search -----------------------------------------------------------------


def _phi_from(f, df):
    calls = []

    def phi(t):
        calls.append(t)
        return f(t), df(t), ("payload", t)

    return phi, calls


LINE_FUNCTIONS = {
    # name: (f, f', step0)
    "parabola": (lambda t: (t - 3.0) ** 2, lambda t: 2 * (t - 3.0), 1.0),
    "parabola_overshoot": (lambda t: (t - 0.01) ** 2, lambda t: 2 * (t - 0.01), 1.0),
    "quartic": (
        lambda t: t**4 - 4 * t**2 - t,
        lambda t: 4 * t**3 - 8 * t - 1,
        0.1,
    ),
    "exp_linear": (lambda t: np.exp(t - 5.0) - t, lambda t: np.exp(t - 5.0) - 1.0, 1e-3),
    "rosen_line": (
        lambda t: rosen(np.array([-1.2, 1.0]) - t * rosen_der(np.array([-1.2, 1.0]))),
        lambda t: (
            -rosen_der(np.array([-1.2, 1.0]) - t * rosen_der(np.array([-1.2, 1.0])))
            @ rosen_der(np.array([-1.2, 1.0]))
        ),
        1.0,
    ),
}


@pytest.mark.parametrize("name", sorted(LINE_FUNCTIONS))
@pytest.mark.parametrize(("c1", "c2"), [(1e-4, 0.9), (1e-4, 0.1)])
def test_strong_wolfe_conditions_hold(name, c1, c2):
    f, df, step0 = LINE_FUNCTIONS[name]
    phi, calls = _phi_from(f, df)
    f0, g0 = f(0.0), df(0.0)
    assert g0 < 0
    result = strong_wolfe(phi, f0, g0, step0, c1=c1, c2=c2, value_noise=0.0)
    assert result.success
    t = result.step
    assert t > 0
    assert f(t) <= f0 + c1 * t * g0  # sufficient decrease
    assert abs(df(t)) <= c2 * abs(g0)  # strong curvature condition
    assert result.value == f(t)
    assert result.slope == df(t)
    assert result.payload == ("payload", t)
    assert result.n_evals == len(calls)
    assert result.n_evals <= 25


@pytest.mark.parametrize("slope0", [1.0, 0.0])
def test_strong_wolfe_refuses_non_descent_direction(slope0):
    phi, calls = _phi_from(lambda t: t, lambda t: 1.0)
    result = strong_wolfe(phi, 0.0, slope0, 1.0)
    assert not result.success
    assert result.step == 0.0
    assert result.n_evals == 0
    assert calls == []


def test_strong_wolfe_max_evals_returns_best_decrease():
    # A very tight curvature condition cannot be met in 3 evaluations of a steep function.
    f, df = (lambda t: np.exp(t - 50.0) - t), (lambda t: np.exp(t - 50.0) - 1.0)
    phi, calls = _phi_from(f, df)
    result = strong_wolfe(phi, f(0.0), df(0.0), 1e-3, c2=0.01, max_evals=3, value_noise=0.0)
    assert not result.success
    assert len(calls) == 3
    assert result.step == max(calls)  # the best value among the tried steps
    assert f(result.step) < f(0.0)


# -- cross-checks against scipy ----------------------------------------------------------------


def test_two_loop_matches_scipy_lbfgs_inverse_product():
    """scipy's ``LbfgsInvHessProduct`` runs the two-loop recursion with ``H0 = I``. The BFGS
    recursion with ``H0 = gamma I`` on pairs ``(s, y)`` is ``gamma`` times the one with
    ``H0 = I`` on ``(s, gamma y)`` (each update is homogeneous in ``H`` and ``1/y``), so the
    two must agree to round-off: a few ulps per pair, times the conditioning of the updates."""
    from scipy.optimize import LbfgsInvHessProduct

    a, b = spd_matrix(np.random.default_rng(20), 30, 1e2), np.ones(30)
    state = LBFGS(memory_size=7, tol=1e-9).run(quadratic(a, b), np.zeros(30))
    assert state.memory.count == 7 and state.n_iter > 7  # the buffer has wrapped
    s_rows, y_rows = state.memory.pairs()
    gamma = state.memory.gamma
    scipy_h = LbfgsInvHessProduct(s_rows, gamma * y_rows)
    amplification = np.sum(
        np.linalg.norm(s_rows, axis=1) * np.linalg.norm(y_rows, axis=1) / np.sum(s_rows * y_rows, 1)
    )
    for v in np.random.default_rng(21).standard_normal((4, 30)):
        ours, theirs = state.memory.matvec(v), gamma * scipy_h.matvec(v)
        assert relative(ours, theirs) <= 10 * 7 * amplification * np.finfo(float).eps


@pytest.mark.parametrize("direction", ["gradient", "newton", "random"])
@pytest.mark.parametrize("c2", [0.9, 0.1])
def test_line_search_agrees_with_scipy_on_a_quadratic(quad, direction, c2):
    """Along a line, a quadratic is a parabola ``phi`` with ``phi'(t) = phi'(0) (1 - t/t*)``,
    so a step meets the strong curvature condition exactly when ``|1 - t/t*| <= c2``: both
    searches must end in that interval, and with the Newton direction (``t* = 1``) both must
    accept the unit step they start from, to round-off."""
    from scipy.optimize import line_search

    a, b, _ = quad
    x0 = np.random.default_rng(22).standard_normal(30)
    g0 = a @ x0 - b
    p = {
        "gradient": -g0,
        "newton": -np.linalg.solve(a, g0),
        "random": -g0 + 0.5 * np.linalg.norm(g0) * np.random.default_rng(23).standard_normal(30),
    }[direction]
    assert g0 @ p < 0
    t_star = -(g0 @ p) / (p @ a @ p)

    def f(x):
        return 0.5 * x @ a @ x - b @ x

    def phi(t):
        return f(x0 + t * p), (a @ (x0 + t * p) - b) @ p, None

    ours = strong_wolfe(phi, f(x0), g0 @ p, 1.0, c1=1e-4, c2=c2, value_noise=0.0)
    theirs = line_search(f, lambda x: a @ x - b, x0, p, gfk=g0, old_fval=f(x0), c1=1e-4, c2=c2)
    assert ours.success and theirs[0] is not None
    for step in (ours.step, theirs[0]):
        assert abs(1 - step / t_star) <= c2
    if direction == "newton":
        assert t_star == pytest.approx(1.0, rel=1e-10)
        assert ours.step == theirs[0] == 1.0


@pytest.mark.parametrize("n_iter", [1, 5, 15])
def test_cg_iterates_match_scipy(spd_system, n_iter):
    """The same Krylov recurrence from zero: after k iterations both are the same iterate, up
    to round-off that grows like k * cond * eps; to convergence, both meet the residual
    tolerance and are within 2 rtol ||b|| / lambda_min of each other."""
    from scipy.sparse.linalg import cg

    a, b, x_star = spd_system
    cond = np.linalg.cond(a)
    ours = conjugate_gradient(lambda v: a @ v, b, rtol=0.0, max_iter=n_iter)
    theirs, info = cg(a, b, rtol=1e-300, atol=0.0, maxiter=n_iter)
    assert ours.n_iter == n_iter and info == n_iter  # both ran k iterations
    assert relative(ours.x, theirs) <= 10 * n_iter * cond * np.finfo(float).eps

    rtol = 1e-8
    ours = conjugate_gradient(lambda v: a @ v, b, rtol=rtol, max_iter=1000)
    theirs, info = cg(a, b, rtol=rtol, atol=0.0, maxiter=1000)
    assert ours.converged and info == 0
    lambda_min = np.linalg.eigvalsh(a)[0]
    assert np.linalg.norm(ours.x - theirs) <= 2 * rtol * np.linalg.norm(b) / lambda_min
    assert np.linalg.norm(ours.x - x_star) <= rtol * np.linalg.norm(b) / lambda_min


def test_memory_resized_keeps_the_newest_pairs_and_the_solver_its_size():
    rng = np.random.default_rng(24)
    s_all, y_all = _random_pairs(rng, 6, 5)
    memory = LBFGSMemory(6, np.zeros(5))
    for s, y in zip(s_all, y_all, strict=True):
        memory.push(s, y)
    small = memory.resized(3)
    assert small.size == 3 and small.count == 3
    np.testing.assert_array_equal(small.pairs()[0], s_all[3:])
    assert relative(dense(small, 5), dense_bfgs_inverse(s_all[3:], y_all[3:])) < 1e-12
    assert memory.count == 6  # not modified
    # A solver given a larger memory keeps its own size (the newest pairs).
    a, b = spd_matrix(rng, 5, 10.0), rng.standard_normal(5)
    state = LBFGS(memory_size=3, tol=1e-8).run(quadratic(a, b), np.zeros(5), memory=memory)
    assert state.memory.size == 3
