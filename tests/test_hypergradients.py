"""Tests of :func:`hoag_shine.hypergradient` and the finite-difference checks.

References are independent of the library: the ridge hypergradient in closed form, and for
logistic regression a dense Newton solve of the inner problem followed by a dense linear solve
of the adjoint system (implicit function theorem written out with numpy).
"""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import expit
from sklearn.datasets import load_breast_cancer
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from hoag_shine import (
    METHODS,
    check_hypergradient,
    finite_difference_hypergradient,
    hypergradient,
)
from hoag_shine.criteria import HeldOutLogLoss, HeldOutMSE
from hoag_shine.problems import LogisticRegressionProblem, RidgeProblem
from hoag_shine.solvers import LBFGS

N_TRAIN, N_VAL, N_FEATURES = 80, 40, 6


# --------------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------------
def _dense(X):
    return X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)


def _augment(X, fit_intercept):
    X = _dense(X)
    return np.hstack([X, np.ones((X.shape[0], 1))]) if fit_intercept else X


def reference(kind, X, y, X_val, y_val, log_alpha, *, per_feature, fit_intercept):
    """Exact inner solution, outer value, adjoint and hypergradient with dense linear algebra."""
    d = _dense(X).shape[1]
    alpha = np.broadcast_to(np.exp(np.asarray(log_alpha, dtype=np.float64)), (d,)).copy()
    A, A_val = _augment(X, fit_intercept), _augment(X_val, fit_intercept)
    penalty = np.concatenate([alpha, np.zeros(int(fit_intercept))])
    n_val = A_val.shape[0]
    if kind == "ridge":
        H = A.T @ A + np.diag(penalty)
        w = np.linalg.solve(H, A.T @ y)
        residual = A_val @ w - y_val
        value = float(np.mean(residual**2))
        v = 2.0 / n_val * A_val.T @ residual
    else:
        s = np.where(np.asarray(y) == 1, 1.0, -1.0)
        s_val = np.where(np.asarray(y_val) == 1, 1.0, -1.0)
        w = np.zeros(A.shape[1])
        for _ in range(100):
            p = expit(-s * (A @ w))
            g = -A.T @ (s * p) + penalty * w
            H = A.T @ ((p * (1 - p))[:, None] * A) + np.diag(penalty)
            step = np.linalg.solve(H, g)
            w -= step
            if np.linalg.norm(step) <= 1e-15 * (1 + np.linalg.norm(w)):
                break
        p = expit(-s * (A @ w))
        assert np.linalg.norm(-A.T @ (s * p) + penalty * w) < 1e-10
        H = A.T @ ((p * (1 - p))[:, None] * A) + np.diag(penalty)
        z_val = A_val @ w
        value = float(np.mean(np.logaddexp(0.0, -s_val * z_val)))
        v = A_val.T @ (-s_val * expit(-s_val * z_val)) / n_val
    q = np.linalg.solve(H, v)
    per_coord = -alpha * w[:d] * q[:d]
    grad = per_coord if per_feature else np.asarray(per_coord.sum())
    return {"w": w, "value": value, "v": v, "q": q, "grad": grad, "H": H}


def rel_err(a, b):
    a, b = np.atleast_1d(a), np.atleast_1d(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def make_data(kind, *, sparse=False, seed=0):
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_VAL
    X = rng.standard_normal((n, N_FEATURES))
    if sparse:
        X[rng.random(X.shape) < 0.5] = 0.0
    w_true = rng.standard_normal(N_FEATURES)
    noise = rng.standard_normal(n)
    if kind == "ridge":
        y = X @ w_true + 0.5 * noise + 0.3
    else:
        y = (X @ w_true + 0.8 * noise > 0).astype(int)
    X_train, X_val = X[:N_TRAIN], X[N_TRAIN:]
    if sparse:
        X_train, X_val = sp.csr_matrix(X_train), sp.csr_matrix(X_val)
    return X_train, y[:N_TRAIN], X_val, y[N_TRAIN:]


def make_problem(kind, *, sparse=False, per_feature=False, fit_intercept=False, seed=0):
    X, y, X_val, y_val = make_data(kind, sparse=sparse, seed=seed)
    if kind == "ridge":
        inner = RidgeProblem(X, y, fit_intercept=fit_intercept, per_feature=per_feature)
        outer = HeldOutMSE(X_val, y_val)
    else:
        inner = LogisticRegressionProblem(
            X, y, fit_intercept=fit_intercept, per_feature=per_feature
        )
        outer = HeldOutLogLoss(X_val, y_val)
    return inner, outer, (X, y, X_val, y_val)


def make_log_alpha(per_feature, seed=1):
    if per_feature:
        return np.random.default_rng(seed).uniform(-1.0, 1.0, N_FEATURES)
    return 0.3


@pytest.fixture(scope="module")
def cancer():
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    perm = np.random.RandomState(0).permutation(len(y))
    X, y = X[perm], y[perm]
    data = (X[:300], y[:300], X[300:], y[300:])
    inner = LogisticRegressionProblem(X[:300], y[:300])
    outer = HeldOutLogLoss(X[300:], y[300:])
    ref = reference("logistic", *data, 0.0, per_feature=False, fit_intercept=False)
    return inner, outer, data, ref


# --------------------------------------------------------------------------------------------
# Every method on every kind of problem
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fit_intercept", [False, True], ids=["no-intercept", "intercept"])
@pytest.mark.parametrize("per_feature", [False, True], ids=["scalar", "per-feature"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
@pytest.mark.parametrize("kind", ["logistic", "ridge"])
@pytest.mark.parametrize("method", METHODS)
def test_method_contract(method, kind, sparse, per_feature, fit_intercept):
    inner, outer, data = make_problem(
        kind, sparse=sparse, per_feature=per_feature, fit_intercept=fit_intercept
    )
    log_alpha = make_log_alpha(per_feature)
    ref = reference(kind, *data, log_alpha, per_feature=per_feature, fit_intercept=fit_intercept)

    res = hypergradient(inner, outer, log_alpha, method=method, tol=1e-10, cg_tol=1e-12)

    assert np.shape(res.grad) == np.shape(log_alpha)
    assert np.asarray(res.grad).dtype == np.float64
    assert np.all(np.isfinite(res.grad))
    assert res.coef.shape == (N_FEATURES + int(fit_intercept),)
    assert res.q.shape == res.coef.shape
    assert np.all(np.isfinite(res.q))
    # value is the outer criterion at the returned coefficient, which is the inner optimum
    assert res.value == pytest.approx(outer.value(res.coef), rel=1e-12)
    assert rel_err(res.coef, ref["w"]) < 1e-7
    assert res.value == pytest.approx(ref["value"], rel=1e-8)
    assert res.info["method"] == method
    assert res.info["backward"] in (method, f"{method}+fallback-cg")
    assert res.info["inner_converged"]
    # whatever q is, grad is -(cross derivative)^T q
    alpha = np.exp(log_alpha)
    per_coord = -alpha * res.coef[:N_FEATURES] * res.q[:N_FEATURES]
    np.testing.assert_allclose(res.grad, per_coord if per_feature else per_coord.sum(), rtol=1e-12)

    if method == "cg" or res.info["backward"].endswith("fallback-cg"):
        assert rel_err(res.grad, ref["grad"]) < 1e-6
        assert rel_err(res.q, ref["q"]) < 1e-6
    if method == "jacobian-free":
        np.testing.assert_allclose(res.q, outer.grad(res.coef), rtol=1e-14, atol=0)
        assert res.info["n_hvp"] == 0
    if method in ("shine", "shine-opa") and res.info["backward"] == method:
        # the raw SHINE adjoint is the inverse estimate applied to grad_w outer
        v = outer.grad(res.coef)
        np.testing.assert_allclose(res.q, res.inner_state.inverse_hessian.matvec(v), rtol=1e-12)


@pytest.mark.parametrize("kind", ["logistic", "ridge"])
@pytest.mark.parametrize("per_feature", [False, True], ids=["scalar", "per-feature"])
def test_sparse_matches_dense(kind, per_feature):
    log_alpha = make_log_alpha(per_feature)
    X, y, X_val, y_val = make_data(kind, sparse=True)
    assert sp.issparse(X) and sp.issparse(X_val)
    problem = RidgeProblem if kind == "ridge" else LogisticRegressionProblem
    criterion = HeldOutMSE if kind == "ridge" else HeldOutLogLoss
    results = []
    for convert in (np.asarray, sp.csr_matrix):
        inner = problem(convert(X.toarray()), y, per_feature=per_feature)
        outer = criterion(convert(X_val.toarray()), y_val)
        results.append(hypergradient(inner, outer, log_alpha, method="cg", tol=1e-11))
    dense, csr = results
    np.testing.assert_allclose(csr.coef, dense.coef, rtol=1e-8)
    assert rel_err(csr.grad, dense.grad) < 1e-7


@pytest.mark.parametrize(
    ("log_alpha", "shape"),
    [(0.5, ()), (np.float64(0.5), ()), (np.array(0.5), ()), (np.array([0.5]), (1,))],
    ids=["float", "np-float", "0d", "1d-1"],
)
def test_scalar_log_alpha_shapes(log_alpha, shape):
    inner, outer, data = make_problem("ridge")
    res = hypergradient(inner, outer, log_alpha, method="cg", tol=1e-10)
    assert np.shape(res.grad) == shape
    ref = reference("ridge", *data, 0.5, per_feature=False, fit_intercept=False)
    assert rel_err(res.grad, ref["grad"]) < 1e-6


def test_ridge_matches_sklearn_and_scalar_is_sum_of_per_feature():
    from sklearn.linear_model import Ridge

    inner, outer, (X, y, _, _) = make_problem("ridge")
    res = hypergradient(inner, outer, 0.7, method="cg", tol=1e-12)
    np.testing.assert_allclose(
        res.coef, Ridge(alpha=np.exp(0.7), fit_intercept=False).fit(X, y).coef_, rtol=1e-8
    )
    inner_pf, outer_pf, _ = make_problem("ridge", per_feature=True)
    res_pf = hypergradient(
        inner_pf, outer_pf, np.full(N_FEATURES, 0.7), method="cg", tol=1e-12, cg_tol=1e-13
    )
    assert float(res.grad) == pytest.approx(res_pf.grad.sum(), rel=1e-8)


# --------------------------------------------------------------------------------------------
# Accuracy on breast cancer
# --------------------------------------------------------------------------------------------
def test_reference_matches_sklearn(cancer):
    _, _, (X, y, _, _), ref = cancer
    clf = LogisticRegression(C=1.0, fit_intercept=False, tol=1e-12, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(ref["w"], clf.coef_.ravel(), rtol=1e-4, atol=1e-5)


def test_cg_exact_on_breast_cancer(cancer):
    inner, outer, _, ref = cancer
    res = hypergradient(inner, outer, 0.0, method="cg", tol=1e-10)
    assert rel_err(res.grad, ref["grad"]) < 1e-6
    assert rel_err(res.coef, ref["w"]) < 1e-7
    report = check_hypergradient(inner, outer, 0.0, method="cg", tol=1e-10)
    assert report["relative_error"] < 1e-5
    assert report["cosine"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("tol", [1e-6, 1e-8])
def test_shine_opa_accurate_on_breast_cancer(cancer, tol):
    inner, outer, _, ref = cancer
    res = hypergradient(inner, outer, 0.0, method="shine-opa", tol=tol)
    assert res.info["backward"] == "shine-opa"  # no fallback: OPA's own estimate
    assert res.info["n_opa_evals"] > 0
    assert rel_err(res.grad, ref["grad"]) < 1e-2
    assert cosine(res.q, ref["q"]) > 0.99
    raw = hypergradient(inner, outer, 0.0, method="shine-opa", tol=tol, safeguard=False)
    np.testing.assert_array_equal(raw.grad, res.grad)


@pytest.mark.parametrize("method", ["shine", "shine-opa", "shine-refine", "jacobian-free"])
def test_approximate_methods_finite_and_sign_on_breast_cancer(cancer, method):
    inner, outer, _, ref = cancer
    res = hypergradient(inner, outer, 0.0, method=method, tol=1e-8, safeguard=False)
    assert np.isfinite(res.value) and np.isfinite(res.grad)
    assert np.all(np.isfinite(res.q))
    assert np.sign(res.grad) == np.sign(ref["grad"])
    assert res.value == pytest.approx(ref["value"], rel=1e-6)


def test_shine_refine_at_least_as_accurate_as_shine(cancer):
    inner, outer, _, ref = cancer
    H, q_exact = ref["H"], ref["q"]
    shine = hypergradient(inner, outer, 0.0, method="shine", tol=1e-8, safeguard=False)
    refine = hypergradient(inner, outer, 0.0, method="shine-refine", tol=1e-8, safeguard=False)
    np.testing.assert_array_equal(refine.coef, shine.coef)  # same inner solve

    def energy_error(q):  # CG never increases the H-norm error of its starting point
        e = q - q_exact
        return float(e @ H @ e)

    assert energy_error(refine.q) < energy_error(shine.q)
    assert rel_err(refine.q, q_exact) < rel_err(shine.q, q_exact)
    assert cosine(refine.q, q_exact) >= cosine(shine.q, q_exact)
    assert refine.info["cg_iter"] == 5
    more = hypergradient(
        inner, outer, 0.0, method="shine-refine", tol=1e-8, safeguard=False, refine_iter=15
    )
    assert energy_error(more.q) <= energy_error(refine.q)


# --------------------------------------------------------------------------------------------
# Safeguard
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["shine", "shine-opa", "shine-refine"])
def test_safeguard_threshold_forces_fallback(cancer, method):
    inner, outer, _, ref = cancer
    res = hypergradient(inner, outer, 0.0, method=method, tol=1e-10, safeguard_threshold=1e-12)
    assert res.info["backward"] == f"{method}+fallback-cg"
    assert res.info["cg_iter"] > 0
    assert rel_err(res.grad, ref["grad"]) < 1e-6
    cg = hypergradient(inner, outer, 0.0, method="cg", tol=1e-10)
    assert rel_err(res.grad, cg.grad) < 1e-6


def test_safeguard_catches_bad_inverse_and_false_keeps_raw(cancer):
    inner, outer, _, ref = cancer
    solver = LBFGS(memory_size=1)
    raw = hypergradient(
        inner, outer, 0.0, method="shine", tol=1e-10, solver=solver, safeguard=False
    )
    assert raw.info["backward"] == "shine"
    assert raw.info["cg_iter"] == 0 and raw.info["n_hvp"] == 0
    v = outer.grad(raw.coef)
    np.testing.assert_allclose(raw.q, raw.inner_state.inverse_hessian.matvec(v), rtol=1e-12)
    assert rel_err(raw.q, ref["q"]) > 0.1  # the bad estimate really is bad

    # The safeguard's two scales, computed independently: minimal residual and energy norm.
    Hq = ref["H"] @ raw.q
    beta = (v @ Hq) / (Hq @ Hq)
    beta_energy = (raw.q @ v) / (raw.q @ Hq)
    residual = np.linalg.norm(beta * Hq - v) / np.linalg.norm(v)

    checked = hypergradient(inner, outer, 0.0, method="shine", tol=1e-10, solver=solver)
    assert checked.info["adjoint_scale"] == pytest.approx(beta_energy, rel=1e-8)
    assert checked.info["adjoint_residual"] == pytest.approx(residual, rel=1e-8)
    both_low = beta < 0.5 and beta_energy < 0.5
    both_high = beta > 2.0 and beta_energy > 2.0
    if residual > 0.9:
        assert checked.info["backward"] == "shine+fallback-cg"
    elif both_low or both_high:
        assert checked.info["backward"] == "shine+rescaled"
        np.testing.assert_allclose(checked.q, beta_energy * raw.q, rtol=1e-7)
    else:
        assert checked.info["backward"] == "shine"

    # A threshold no estimate can meet forces the CG fallback, which is exact.
    strict = hypergradient(
        inner, outer, 0.0, method="shine", tol=1e-10, solver=solver, safeguard_threshold=1e-12
    )
    assert strict.info["backward"] == "shine+fallback-cg"
    assert strict.info["adjoint_residual"] <= 1e-10
    assert rel_err(strict.grad, ref["grad"]) < 1e-6


def test_safeguard_rescales_a_badly_scaled_estimate(cancer):
    from hoag_shine.hypergradients import _check_adjoint

    ref = cancer[3]
    H = ref["H"]
    v = H @ ref["q"]  # the exact adjoint solves H q = v
    info = {}
    # The right direction with a norm 20 times too small: kept, but rescaled exactly (both
    # scales agree on 20 for a multiple of the exact adjoint).
    verdict, beta = _check_adjoint(0.05 * ref["q"], v, lambda x: H @ x, 0.9, info)
    assert verdict == "rescale"
    assert beta == pytest.approx(20.0, rel=1e-8)
    # When the two scales disagree (one in the band), the estimate is kept as it is.
    mixed = ref["q"] + 0.3 * np.linalg.norm(ref["q"]) * np.eye(len(v))[0]
    Hm = H @ mixed
    scales = ((v @ Hm) / (Hm @ Hm), (mixed @ v) / (mixed @ Hm))
    in_band = [0.5 <= scale <= 2.0 for scale in scales]
    if any(in_band):
        assert _check_adjoint(mixed, v, lambda x: H @ x, 0.9, {})[0] in ("keep", "fallback")
    assert info["adjoint_residual"] < 1e-8
    # Within a factor 2: kept as it is.
    assert _check_adjoint(0.7 * ref["q"], v, lambda x: H @ x, 0.9, {})[0] == "keep"
    # An orthogonal-ish direction: residual above the threshold, CG fallback.
    other = np.linalg.solve(H, np.roll(v, 7))
    assert _check_adjoint(other, v, lambda x: H @ x, 0.1, {})[0] == "fallback"
    # Negative curvature or non-finite values: fallback.
    assert _check_adjoint(-ref["q"], v, lambda x: H @ x, 0.9, {})[0] == "fallback"
    assert _check_adjoint(ref["q"] * np.nan, v, lambda x: H @ x, 0.9, {})[0] == "fallback"


# --------------------------------------------------------------------------------------------
# Finite differences
# --------------------------------------------------------------------------------------------
def test_finite_difference_full_and_directional():
    inner, outer, data = make_problem("ridge", per_feature=True)
    log_alpha = make_log_alpha(True)
    ref = reference("ridge", *data, log_alpha, per_feature=True, fit_intercept=False)
    fd = finite_difference_hypergradient(inner, outer, log_alpha)
    assert fd.shape == (N_FEATURES,)
    assert rel_err(fd, ref["grad"]) < 1e-5
    direction = np.random.default_rng(3).standard_normal(N_FEATURES)
    fd_dir = finite_difference_hypergradient(inner, outer, log_alpha, direction=direction)
    assert np.ndim(fd_dir) == 0
    assert float(fd_dir) == pytest.approx(float(ref["grad"] @ direction), rel=1e-5)

    inner_s, outer_s, data_s = make_problem("logistic")
    ref_s = reference("logistic", *data_s, 0.3, per_feature=False, fit_intercept=False)
    fd_s = finite_difference_hypergradient(inner_s, outer_s, 0.3)
    assert np.shape(fd_s) == ()
    assert float(fd_s) == pytest.approx(float(ref_s["grad"]), rel=1e-5)


def test_check_hypergradient_report():
    inner, outer, _ = make_problem("logistic", per_feature=True)
    log_alpha = make_log_alpha(True)
    report = check_hypergradient(inner, outer, log_alpha, method="cg", tol=1e-11)
    assert set(report) == {"grad", "finite_difference", "relative_error", "cosine"}
    g, f = report["grad"], report["finite_difference"]
    assert g.shape == f.shape == (N_FEATURES,)
    assert report["relative_error"] == pytest.approx(rel_err(g, f), rel=1e-12)
    assert report["cosine"] == pytest.approx(cosine(g, f), rel=1e-12)
    assert report["relative_error"] < 1e-5
    assert report["cosine"] > 1 - 1e-9

    # a poor method is reported as such
    bad = check_hypergradient(inner, outer, log_alpha, method="jacobian-free", tol=1e-11)
    assert bad["relative_error"] > 1e-2
    assert bad["relative_error"] == pytest.approx(
        rel_err(bad["grad"], bad["finite_difference"]), rel=1e-12
    )

    direction = np.ones(N_FEATURES)
    rep_dir = check_hypergradient(inner, outer, log_alpha, direction=direction, tol=1e-11)
    assert set(rep_dir) == {"grad", "finite_difference", "relative_error"}
    assert rep_dir["grad"] == pytest.approx(float(np.sum(report["grad"])), rel=1e-8)
    assert rep_dir["relative_error"] == pytest.approx(
        abs(rep_dir["grad"] - rep_dir["finite_difference"]) / abs(rep_dir["finite_difference"]),
        rel=1e-10,
    )
    assert rep_dir["relative_error"] < 1e-5


# --------------------------------------------------------------------------------------------
# Warm starts and inputs
# --------------------------------------------------------------------------------------------
def test_warm_starts_save_work_without_changing_result(cancer):
    inner, outer, _, _ = cancer
    prev = hypergradient(inner, outer, 0.01, method="cg", tol=1e-6)
    exact = hypergradient(inner, outer, 0.0, method="cg", tol=1e-12)
    cold = hypergradient(inner, outer, 0.0, method="cg", tol=1e-6)
    coef_warm = hypergradient(inner, outer, 0.0, method="cg", tol=1e-6, coef0=prev.coef)
    memory_warm = hypergradient(
        inner, outer, 0.0, method="cg", tol=1e-6, coef0=prev.coef, memory=prev.inner_state.memory
    )
    shifted_warm = hypergradient(
        inner,
        outer,
        0.0,
        method="cg",
        tol=1e-6,
        coef0=prev.coef,
        memory=prev.inner_state.memory,
        memory_log_alpha=0.01,
    )
    q_warm = hypergradient(inner, outer, 0.0, method="cg", tol=1e-6, q0=prev.q)

    assert coef_warm.info["inner_iter"] < cold.info["inner_iter"] / 2
    assert memory_warm.info["inner_iter"] <= coef_warm.info["inner_iter"]
    assert shifted_warm.info["inner_iter"] <= coef_warm.info["inner_iter"]
    assert q_warm.info["cg_iter"] < cold.info["cg_iter"]
    assert q_warm.info["inner_iter"] == cold.info["inner_iter"]
    for res in (cold, coef_warm, memory_warm, shifted_warm, q_warm):
        assert res.info["inner_converged"]
        assert np.linalg.norm(inner.grad(res.coef, 0.0)) <= 1e-6 * inner.gradient_scale
        assert rel_err(res.coef, exact.coef) < 5e-4
        assert rel_err(res.grad, exact.grad) < 1e-3
        assert res.value == pytest.approx(exact.value, rel=1e-5)


@pytest.mark.parametrize("per_feature", [False, True], ids=["scalar", "per-feature"])
def test_memory_shift_gives_exact_ridge_pairs(per_feature):
    """Ridge's Hessian does not depend on w: shifted pairs are exact secant pairs at the new
    log_alpha, so every pair of the returned memory satisfies y = H s."""
    inner, outer, data = make_problem("ridge", per_feature=per_feature, fit_intercept=True)
    la_prev = make_log_alpha(per_feature) + 1.0
    la_new = make_log_alpha(per_feature)
    solver = LBFGS(memory_size=50)  # large enough to keep every pair
    prev = hypergradient(inner, outer, la_prev, method="shine", tol=1e-8, solver=solver)
    memory = prev.inner_state.memory
    count_before = memory.count
    s_before, y_before = (a.copy() for a in memory.pairs())
    ref = reference("ridge", *data, la_new, per_feature=per_feature, fit_intercept=True)

    def secant_errors(mem):
        s, y = mem.pairs()
        return np.array(
            [
                np.linalg.norm(yi - ref["H"] @ si) / inner.gradient_scale
                for si, yi in zip(s, y, strict=True)
            ]
        )

    kwargs = {"method": "cg", "tol": 1e-10, "coef0": prev.coef, "memory": memory, "solver": solver}
    stale = hypergradient(inner, outer, la_new, **kwargs)
    shifted = hypergradient(inner, outer, la_new, memory_log_alpha=la_prev, **kwargs)
    assert shifted.inner_state.memory.count > count_before  # old pairs and new ones
    assert max(secant_errors(shifted.inner_state.memory)) < 1e-13
    assert max(secant_errors(stale.inner_state.memory)) > 1e-4  # old pairs not corrected
    for res in (stale, shifted):
        assert rel_err(res.grad, ref["grad"]) < 1e-6
    # the memory passed in is left as it was
    assert memory.count == count_before
    np.testing.assert_array_equal(memory.pairs()[0], s_before)
    np.testing.assert_array_equal(memory.pairs()[1], y_before)


def test_inputs_not_modified():
    inner, outer, _ = make_problem("logistic", per_feature=True)
    log_alpha = make_log_alpha(True)
    prev = hypergradient(inner, outer, log_alpha + 0.1, method="shine-opa", tol=1e-8)
    coef0, q0, memory = prev.coef.copy(), prev.q.copy(), prev.inner_state.memory
    s_before, y_before = (a.copy() for a in memory.pairs())
    count_before = memory.count
    la_before, coef0_before, q0_before = log_alpha.copy(), coef0.copy(), q0.copy()

    for method in METHODS:
        res = hypergradient(
            inner, outer, log_alpha, method=method, tol=1e-8, coef0=coef0, q0=q0, memory=memory
        )
        assert res.coef is not coef0 and res.q is not q0
        np.testing.assert_array_equal(log_alpha, la_before)
        np.testing.assert_array_equal(coef0, coef0_before)
        np.testing.assert_array_equal(q0, q0_before)
        assert memory.count == count_before
        s_after, y_after = memory.pairs()
        np.testing.assert_array_equal(s_after, s_before)
        np.testing.assert_array_equal(y_after, y_before)
    # the previous result itself is untouched too
    np.testing.assert_array_equal(prev.coef, coef0_before)


# --------------------------------------------------------------------------------------------
# Convergence warnings
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_inner_max_iter_warns(cancer, method):
    inner, outer, _, _ = cancer
    with pytest.warns(ConvergenceWarning, match="Inner solver"):
        res = hypergradient(inner, outer, 0.0, method=method, solver=LBFGS(max_iter=2))
    assert not res.info["inner_converged"]
    assert res.info["inner_iter"] == 2
    assert np.isfinite(res.value) and np.all(np.isfinite(res.grad))
    assert np.all(np.isfinite(res.coef))


def test_cg_max_iter_warns(cancer):
    inner, outer, _, ref = cancer
    with pytest.warns(ConvergenceWarning, match="CG"):
        res = hypergradient(inner, outer, 0.0, method="cg", tol=1e-8, cg_max_iter=1)
    assert res.info["cg_iter"] == 1
    assert np.isfinite(res.grad) and np.all(np.isfinite(res.q))
    assert rel_err(res.q, ref["q"]) > 1e-3  # one iteration is not the solution


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def test_unknown_method_lists_methods():
    inner, outer, _ = make_problem("ridge")
    with pytest.raises(ValueError, match="Unknown hypergradient method") as excinfo:
        hypergradient(inner, outer, 0.0, method="newton")
    for name in METHODS:
        assert name in str(excinfo.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_log_alpha(bad):
    inner, outer, _ = make_problem("ridge")
    with pytest.raises(ValueError, match="finite"):
        hypergradient(inner, outer, bad, method="cg")
    inner_pf, outer_pf, _ = make_problem("ridge", per_feature=True)
    log_alpha = np.zeros(N_FEATURES)
    log_alpha[2] = bad
    with pytest.raises(ValueError, match="finite"):
        hypergradient(inner_pf, outer_pf, log_alpha, method="cg")


def test_wrong_log_alpha_shape():
    inner, outer, _ = make_problem("logistic")
    with pytest.raises(ValueError, match="single log_alpha"):
        hypergradient(inner, outer, np.zeros(2), method="cg")
    inner_pf, outer_pf, _ = make_problem("logistic", per_feature=True)
    for bad in (0.0, np.zeros(N_FEATURES - 1), np.zeros((N_FEATURES, 1))):
        with pytest.raises(ValueError, match="per_feature"):
            hypergradient(inner_pf, outer_pf, bad, method="cg")


@pytest.mark.parametrize("tol", [0.0, -1e-6, np.nan, np.inf])
def test_invalid_tol(tol):
    inner, outer, _ = make_problem("ridge")
    with pytest.raises(ValueError, match="tol"):
        hypergradient(inner, outer, 0.0, method="cg", tol=tol)
