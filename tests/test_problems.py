"""Tests of the inner problems and the outer criteria.

References are independent: scikit-learn's estimators and metrics, closed forms written here
with numpy, and central finite differences.
"""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import expit
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import log_loss, mean_squared_error
from sklearn.preprocessing import StandardScaler

from hoag_shine import hypergradient
from hoag_shine.criteria import HeldOutLogLoss, HeldOutMSE
from hoag_shine.problems import LOG_ALPHA_LIMIT, LogisticRegressionProblem, RidgeProblem
from hoag_shine.solvers import LBFGS

PROBLEMS = {"logistic": LogisticRegressionProblem, "ridge": RidgeProblem}


# -- data and helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def breast_cancer():
    X, y = load_breast_cancer(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def random_data(kind, seed=0, n=80, d=8, density=None):
    """Random (X, y): labels in {0, 1} for ``logistic``, real targets for ``ridge``."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    if density is not None:
        X *= rng.random((n, d)) < density
    w = rng.standard_normal(d)
    z = X @ w + 0.3
    if kind == "logistic":
        y = (z + rng.standard_normal(n) > 0).astype(int)
    else:
        y = z + 0.5 * rng.standard_normal(n)
    return X, y


def solve(problem, log_alpha, tol=1e-10):
    state = LBFGS(memory_size=20, tol=tol, max_iter=10000).run(
        lambda w: problem.value_and_grad(w, log_alpha), problem.init_coef()
    )
    assert state.converged, state.message
    return state.x


def sklearn_coef(estimator):
    coef = np.ravel(estimator.coef_)
    if estimator.fit_intercept:
        return np.append(coef, estimator.intercept_)
    return coef


def assert_coef_close(actual, expected, rtol):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def central_gradient(f, x, h=1e-6):
    """Central finite-difference gradient of a scalar (or vector-valued) function."""
    x = np.asarray(x, dtype=np.float64)
    columns = []
    for j in range(x.size):
        e = np.zeros_like(x)
        e.flat[j] = h
        columns.append((np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * h))
    return np.array(columns)


def with_intercept(X):
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    return np.hstack([X, np.ones((X.shape[0], 1))])


def logistic_reference(X, y01, w, alpha, sample_weight=None, intercept=False):
    """Value, gradient and Hessian of the design's logistic objective, written with numpy."""
    Xa = with_intercept(X) if intercept else (X.toarray() if sp.issparse(X) else X)
    s = np.where(y01 == 1, 1.0, -1.0)
    sw = np.ones(len(s)) if sample_weight is None else sample_weight
    z = Xa @ w
    pen = np.zeros(Xa.shape[1])
    pen[: X.shape[1]] = alpha
    value = np.sum(sw * np.logaddexp(0.0, -s * z)) + 0.5 * np.sum(pen * w**2)
    grad = Xa.T @ (sw * -s * expit(-s * z)) + pen * w
    p = expit(z)
    hess = (Xa * (sw * p * (1 - p))[:, None]).T @ Xa + np.diag(pen)
    return value, grad, hess


# -- minimizers equal scikit-learn's ----------------------------------------------------------


@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("alpha", [1.0, 0.1])
def test_logistic_minimizer_matches_sklearn(breast_cancer, fit_intercept, alpha):
    X, y = breast_cancer
    problem = LogisticRegressionProblem(X, y, fit_intercept=fit_intercept)
    w = solve(problem, np.log(alpha))
    clf = LogisticRegression(
        C=1 / alpha, tol=1e-10, max_iter=10000, fit_intercept=fit_intercept
    ).fit(X, y)
    np.testing.assert_array_equal(problem.classes_, clf.classes_)
    assert_coef_close(w, sklearn_coef(clf), rtol=1e-4)


def test_logistic_minimizer_via_hypergradient_matches_sklearn(breast_cancer):
    X, y = breast_cancer
    X_train, y_train, X_val, y_val = X[:400], y[:400], X[400:], y[400:]
    problem = LogisticRegressionProblem(X_train, y_train, fit_intercept=True)
    result = hypergradient(
        problem, HeldOutLogLoss(X_val, y_val), 0.0, method="jacobian-free", tol=1e-12
    )
    clf = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(X_train, y_train)
    assert_coef_close(result.coef, sklearn_coef(clf), rtol=1e-4)
    # The reported value is the held-out log-loss of that model.
    assert result.value == pytest.approx(log_loss(y_val, clf.predict_proba(X_val)), rel=1e-5)


def test_logistic_minimizer_with_sample_weight_matches_sklearn(breast_cancer):
    X, y = breast_cancer
    sw = np.random.default_rng(1).uniform(0.2, 3.0, size=len(y))
    problem = LogisticRegressionProblem(X, y, fit_intercept=True, sample_weight=sw)
    w = solve(problem, 0.0)
    clf = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(X, y, sample_weight=sw)
    assert_coef_close(w, sklearn_coef(clf), rtol=1e-4)
    # And the weights matter: the unweighted solution is far from it.
    unweighted = solve(LogisticRegressionProblem(X, y, fit_intercept=True), 0.0)
    assert np.abs(unweighted - w).max() > 1e-2


def test_logistic_integer_sample_weight_equals_repeated_rows():
    X, y = random_data("logistic", seed=2, n=40, d=5)
    counts = np.random.default_rng(3).integers(0, 4, size=40)
    counts[:2] = [1, 2]
    weighted = LogisticRegressionProblem(X, y, fit_intercept=True, sample_weight=counts)
    repeated = LogisticRegressionProblem(
        np.repeat(X, counts, axis=0), np.repeat(y, counts), fit_intercept=True
    )
    w = np.random.default_rng(4).standard_normal(6)
    v = np.random.default_rng(5).standard_normal(6)
    assert weighted.value(w, 0.3) == pytest.approx(repeated.value(w, 0.3), rel=1e-12)
    np.testing.assert_allclose(weighted.grad(w, 0.3), repeated.grad(w, 0.3), rtol=1e-11)
    np.testing.assert_allclose(weighted.hvp(w, 0.3, v), repeated.hvp(w, 0.3, v), rtol=1e-11)


def test_logistic_string_labels_follow_sklearn_class_order(breast_cancer):
    X, y = breast_cancer
    # sklearn's target 0 is malignant; sorted labels make "malignant" the positive class.
    labels = np.where(y == 0, "malignant", "benign")
    problem = LogisticRegressionProblem(X, labels, fit_intercept=True)
    clf = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(X, labels)
    np.testing.assert_array_equal(problem.classes_, ["benign", "malignant"])
    np.testing.assert_array_equal(problem.classes_, clf.classes_)
    w = solve(problem, 0.0)
    assert_coef_close(w, sklearn_coef(clf), rtol=1e-4)
    # Same model as the numeric labels, with the positive class swapped: w flips sign.
    numeric = solve(LogisticRegressionProblem(X, y, fit_intercept=True), 0.0)
    np.testing.assert_allclose(w, -numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("sparse", [False, True])
def test_ridge_minimizer_matches_sklearn_and_closed_form(fit_intercept, sparse):
    X, y = random_data("ridge", seed=6, n=120, d=10, density=0.5 if sparse else None)
    alpha = 2.5
    data = sp.csr_matrix(X) if sparse else X
    problem = RidgeProblem(data, y, fit_intercept=fit_intercept)
    assert sp.issparse(problem.X) == sparse
    w = solve(problem, np.log(alpha), tol=1e-11)
    # Closed form: centred data for the intercept (it is not penalized).
    if fit_intercept:
        x_mean, y_mean = X.mean(axis=0), y.mean()
        coef = np.linalg.solve(
            (X - x_mean).T @ (X - x_mean) + alpha * np.eye(10), (X - x_mean).T @ (y - y_mean)
        )
        expected = np.append(coef, y_mean - x_mean @ coef)
    else:
        expected = np.linalg.solve(X.T @ X + alpha * np.eye(10), X.T @ y)
    np.testing.assert_allclose(w, expected, rtol=1e-9, atol=1e-11)
    reg = Ridge(alpha=alpha, fit_intercept=fit_intercept, tol=1e-12).fit(X, y)
    np.testing.assert_allclose(w, sklearn_coef(reg), rtol=1e-8, atol=1e-10)


def test_ridge_sample_weight_matches_sklearn():
    X, y = random_data("ridge", seed=7, n=100, d=6)
    sw = np.random.default_rng(8).uniform(0.1, 2.0, size=100)
    problem = RidgeProblem(X, y, fit_intercept=True, sample_weight=sw)
    w = solve(problem, np.log(0.7), tol=1e-11)
    reg = Ridge(alpha=0.7, tol=1e-12).fit(X, y, sample_weight=sw)
    np.testing.assert_allclose(w, sklearn_coef(reg), rtol=1e-8, atol=1e-10)


# -- derivatives against finite differences and closed forms ---------------------------------


def _setup(kind, per_feature, fit_intercept, sparse, seed=9):
    X, y = random_data(kind, seed=seed, n=60, d=6, density=0.6)
    data = sp.csr_matrix(X) if sparse else X
    problem = PROBLEMS[kind](X=data, y=y, fit_intercept=fit_intercept, per_feature=per_feature)
    rng = np.random.default_rng(seed + 100)
    w = 0.4 * rng.standard_normal(problem.n_params)
    q = rng.standard_normal(problem.n_params)
    v = rng.standard_normal(problem.n_params)
    log_alpha = rng.uniform(-1, 1, size=6) if per_feature else np.float64(0.4)
    return X, y, problem, w, q, v, log_alpha


CASES = [
    (kind, per_feature, fit_intercept, sparse)
    for kind in ("logistic", "ridge")
    for per_feature in (False, True)
    for fit_intercept in (False, True)
    for sparse in (False, True)
]


@pytest.mark.parametrize(("kind", "per_feature", "fit_intercept", "sparse"), CASES)
def test_derivatives_match_finite_differences(kind, per_feature, fit_intercept, sparse):
    _, _, problem, w, q, v, log_alpha = _setup(kind, per_feature, fit_intercept, sparse)
    la = np.atleast_1d(log_alpha)

    value, grad = problem.value_and_grad(w, log_alpha)
    assert value == problem.value(w, log_alpha)
    np.testing.assert_array_equal(grad, problem.grad(w, log_alpha))
    fd_grad = central_gradient(lambda x: problem.value(x, log_alpha), w)
    np.testing.assert_allclose(grad, fd_grad, rtol=1e-6, atol=1e-7)

    hv = problem.hvp(w, log_alpha, v)
    fd_hv = (problem.grad(w + 1e-6 * v, log_alpha) - problem.grad(w - 1e-6 * v, log_alpha)) / 2e-6
    np.testing.assert_allclose(hv, fd_hv, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(problem.hessian_operator(w, log_alpha)(v), hv, rtol=1e-14)

    cross = problem.cross_vjp(w, log_alpha, q)
    assert np.shape(cross) == np.shape(log_alpha)

    def grad_dot_q(x):
        return problem.grad(w, x.reshape(np.shape(log_alpha))) @ q

    fd_cross = central_gradient(grad_dot_q, la, h=1e-6).reshape(np.shape(log_alpha))
    np.testing.assert_allclose(cross, fd_cross, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(("kind", "per_feature", "fit_intercept"), [c[:3] for c in CASES[::2]])
def test_derivatives_match_closed_form(kind, per_feature, fit_intercept):
    X, y, problem, w, q, v, log_alpha = _setup(kind, per_feature, fit_intercept, False)
    alpha = np.broadcast_to(np.exp(log_alpha), (6,))
    if kind == "logistic":
        value, grad, hess = logistic_reference(X, y, w, alpha, intercept=fit_intercept)
    else:
        Xa = with_intercept(X) if fit_intercept else X
        pen = np.append(alpha, 0.0) if fit_intercept else alpha
        value = 0.5 * np.sum((y - Xa @ w) ** 2) + 0.5 * np.sum(pen * w**2)
        grad = Xa.T @ (Xa @ w - y) + pen * w
        hess = Xa.T @ Xa + np.diag(pen)
    assert problem.value(w, log_alpha) == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(problem.grad(w, log_alpha), grad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(problem.hvp(w, log_alpha, v), hess @ v, rtol=1e-10, atol=1e-12)
    # d/dlog_alpha_j of grad = alpha_j w_j e_j, contracted with q.
    per_coord = alpha * w[:6] * q[:6]
    expected = per_coord if per_feature else per_coord.sum()
    np.testing.assert_allclose(problem.cross_vjp(w, log_alpha, q), expected, rtol=1e-12)
    # The gradient scale is ||grad r(0)||, whatever log_alpha.
    assert problem.gradient_scale == pytest.approx(
        np.linalg.norm(problem.grad(problem.init_coef(), log_alpha)), rel=1e-12
    )


@pytest.mark.parametrize(("kind", "per_feature", "fit_intercept"), [c[:3] for c in CASES[::2]])
def test_dense_and_sparse_give_identical_results(kind, per_feature, fit_intercept):
    X, y, dense_problem, w, q, v, log_alpha = _setup(kind, per_feature, fit_intercept, False)
    for data in (sp.csr_matrix(X), sp.csc_matrix(X), sp.coo_matrix(X), sp.csr_array(X)):
        problem = PROBLEMS[kind](X=data, y=y, fit_intercept=fit_intercept, per_feature=per_feature)
        assert sp.issparse(problem.X)
        assert problem.X.format == "csr"
        # X.T @ r runs on a view of X's nonzeros, not on a transposed copy.
        assert np.shares_memory(problem.design._XT.data, problem.X.data)
        value, grad = problem.value_and_grad(w, log_alpha)
        dense_value, dense_grad = dense_problem.value_and_grad(w, log_alpha)
        assert value == pytest.approx(dense_value, rel=1e-13)
        np.testing.assert_allclose(grad, dense_grad, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(
            problem.hvp(w, log_alpha, v), dense_problem.hvp(w, log_alpha, v), rtol=1e-12, atol=1e-13
        )
        np.testing.assert_allclose(
            problem.cross_vjp(w, log_alpha, q),
            dense_problem.cross_vjp(w, log_alpha, q),
            rtol=1e-13,
        )
        assert problem.gradient_scale == pytest.approx(dense_problem.gradient_scale, rel=1e-12)


@pytest.mark.parametrize("kind", ["logistic", "ridge"])
def test_per_feature_with_equal_penalties_equals_scalar(kind):
    X, y = random_data(kind, seed=10, n=50, d=5)
    scalar = PROBLEMS[kind](X, y, fit_intercept=True)
    per_feature = PROBLEMS[kind](X, y, fit_intercept=True, per_feature=True)
    assert scalar.hyper_shape == ()
    assert per_feature.hyper_shape == (5,)
    rng = np.random.default_rng(11)
    w, q, v = rng.standard_normal((3, 6))
    la = np.full(5, -0.7)
    assert scalar.value(w, -0.7) == pytest.approx(per_feature.value(w, la), rel=1e-14)
    np.testing.assert_allclose(scalar.grad(w, -0.7), per_feature.grad(w, la), rtol=1e-14)
    np.testing.assert_allclose(scalar.hvp(w, -0.7, v), per_feature.hvp(w, la, v), rtol=1e-14)
    np.testing.assert_allclose(
        scalar.cross_vjp(w, -0.7, q), per_feature.cross_vjp(w, la, q).sum(), rtol=1e-13
    )
    # A scalar problem also accepts a length-1 array.
    assert scalar.value(w, np.array([-0.7])) == scalar.value(w, -0.7)


# -- numerical stability and hyperparameter validation ----------------------------------------


@pytest.mark.parametrize("fit_intercept", [False, True])
def test_logistic_huge_margins_are_finite_and_exact(fit_intercept):
    X, y = random_data("logistic", seed=12, n=60, d=5)
    X = X * 1e6
    problem = LogisticRegressionProblem(X, y, fit_intercept=fit_intercept)
    rng = np.random.default_rng(13)
    w = rng.standard_normal(problem.n_params)
    v = rng.standard_normal(problem.n_params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grad = problem.value_and_grad(w, 0.0)
        hv = problem.hvp(w, 0.0, v)
        crit = HeldOutLogLoss(X, y)
        crit_value, crit_grad = crit.value_and_grad(w)
    assert np.isfinite(value) and np.all(np.isfinite(grad)) and np.all(np.isfinite(hv))
    assert np.isfinite(crit_value) and np.all(np.isfinite(crit_grad))
    ref_value, ref_grad, _ = logistic_reference(X, y, w, np.ones(5), intercept=fit_intercept)
    assert value == pytest.approx(ref_value, rel=1e-12)
    assert value > 1e5  # misclassified points with margins ~1e6 cost ~1e6 each
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-6)


@pytest.mark.parametrize("kind", ["logistic", "ridge"])
@pytest.mark.parametrize("log_alpha", [LOG_ALPHA_LIMIT, -LOG_ALPHA_LIMIT])
def test_extreme_log_alpha_is_finite(kind, log_alpha):
    X, y = random_data(kind, seed=14, n=40, d=4)
    problem = PROBLEMS[kind](X, y, fit_intercept=True)
    w, v, q = np.random.default_rng(15).standard_normal((3, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grad = problem.value_and_grad(w, log_alpha)
        hv = problem.hvp(w, log_alpha, v)
        cross = problem.cross_vjp(w, log_alpha, q)
    alpha = np.exp(log_alpha)
    assert np.isfinite(value) and np.all(np.isfinite(grad)) and np.all(np.isfinite(hv))
    np.testing.assert_allclose(cross, alpha * np.sum(w[:4] * q[:4]), rtol=1e-12)
    # The penalty part of the gradient and HVP is alpha * w (intercept unpenalized).
    zero_pen_grad = problem.grad(w, -LOG_ALPHA_LIMIT)
    np.testing.assert_allclose(
        grad[:4] - zero_pen_grad[:4], (alpha - np.exp(-LOG_ALPHA_LIMIT)) * w[:4], rtol=1e-9
    )
    assert grad[4] == pytest.approx(zero_pen_grad[4], rel=1e-12)


@pytest.mark.parametrize(
    ("log_alpha", "match"),
    [
        (LOG_ALPHA_LIMIT + 1, "log_alpha must lie"),
        (-LOG_ALPHA_LIMIT - 1e-9, "log_alpha must lie"),
        (np.nan, "finite"),
        (np.inf, "finite"),
        (-np.inf, "finite"),
        (np.zeros(2), "single log_alpha"),
    ],
)
def test_bad_scalar_log_alpha_raises(log_alpha, match):
    X, y = random_data("logistic", seed=16, n=30, d=3)
    problem = LogisticRegressionProblem(X, y)
    w = np.zeros(3)
    for method in (
        lambda: problem.value(w, log_alpha),
        lambda: problem.grad(w, log_alpha),
        lambda: problem.hvp(w, log_alpha, w),
        lambda: problem.cross_vjp(w, log_alpha, w),
    ):
        with pytest.raises(ValueError, match=match):
            method()


def test_bad_per_feature_log_alpha_raises():
    X, y = random_data("ridge", seed=17, n=30, d=3)
    problem = RidgeProblem(X, y, per_feature=True)
    w = np.zeros(3)
    for bad in (np.zeros(2), np.zeros(4), 0.0, np.zeros((3, 1))):
        with pytest.raises(ValueError, match=r"shape \(3,\)"):
            problem.value(w, bad)
    with pytest.raises(ValueError, match="log_alpha must lie"):
        problem.value(w, np.array([0.0, 101.0, 0.0]))
    with pytest.raises(ValueError, match="finite"):
        problem.grad(w, np.array([0.0, np.nan, 0.0]))
    with pytest.raises(ValueError, match=r"w must have shape \(3,\)"):
        problem.value(np.zeros(4), np.zeros(3))


def test_logistic_solves_at_large_log_alpha(breast_cancer):
    X, y = breast_cancer
    problem = LogisticRegressionProblem(X, y)
    log_alpha = 30.0
    state = LBFGS(tol=1e-8 * problem.gradient_scale).run(
        lambda w: problem.value_and_grad(w, log_alpha), problem.init_coef()
    )
    assert state.converged, state.message
    # With a huge penalty the minimizer is -grad r(0) / alpha to first order.
    expected = -problem.grad(problem.init_coef(), log_alpha) / np.exp(log_alpha)
    np.testing.assert_allclose(state.x, expected, rtol=1e-6)


# -- bad input --------------------------------------------------------------------------------


def _bad_inputs():
    X, y = random_data("logistic", seed=18, n=30, d=3)
    X_nan, X_inf = X.copy(), X.copy()
    X_nan[2, 1], X_inf[5, 0] = np.nan, np.inf
    return X, y, X_nan, X_inf


@pytest.mark.parametrize("kind", ["logistic", "ridge"])
def test_bad_design_matrix_raises(kind):
    X, y, X_nan, X_inf = _bad_inputs()
    cls = PROBLEMS[kind]
    with pytest.raises(ValueError, match="NaN"):
        cls(X_nan, y)
    with pytest.raises(ValueError, match="infinity"):
        cls(X_inf, y)
    with pytest.raises(ValueError, match="NaN"):
        cls(sp.csr_matrix(X_nan), y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        cls(X, y[:-1])
    with pytest.raises(ValueError, match="dim 3"):
        cls(X[:, :, None], y)
    with pytest.raises(ValueError, match="2D"):
        cls(X[:, 0], y)
    with pytest.raises(ValueError, match="1-D"):
        cls(X, np.c_[y, y])
    with pytest.raises(ValueError, match="0 sample"):
        cls(X[:0], y[:0])


@pytest.mark.parametrize(
    "kind",
    [
        "logistic",
        "ridge",
    ],
)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_targets_raise(kind, bad):
    X, y, _, _ = _bad_inputs()
    y = y.astype(float)
    y[3] = bad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"finite|NaN|infinity"):
            PROBLEMS[kind](X, y)


def test_logistic_label_errors():
    X, _, _, _ = _bad_inputs()
    with pytest.raises(ValueError, match="two classes"):
        LogisticRegressionProblem(X, np.ones(30))
    with pytest.raises(ValueError, match="two classes"):
        LogisticRegressionProblem(X, np.full(30, "spam"))
    # Three classes give the multinomial model (one coefficient column per class).
    multinomial = LogisticRegressionProblem(X, np.arange(30) % 3)
    assert multinomial.n_outputs == 3
    assert multinomial.n_params == 3 * X.shape[1]
    with pytest.raises(ValueError, match="discrete labels"):
        LogisticRegressionProblem(X, np.linspace(0, 1, 30))


@pytest.mark.parametrize("kind", ["logistic", "ridge"])
def test_bad_sample_weight_raises(kind):
    X, y, _, _ = _bad_inputs()
    cls = PROBLEMS[kind]
    sw = np.ones(30)
    for bad in (-sw, np.r_[-1.0, sw[1:]], np.zeros(30), np.r_[np.nan, sw[1:]]):
        with pytest.raises(ValueError, match="non-negative"):
            cls(X, y, sample_weight=bad)
    with pytest.raises(ValueError, match=r"shape \(30,\)"):
        cls(X, y, sample_weight=np.ones(29))
    # A scalar weight scales the loss.
    weighted = cls(X, y, sample_weight=3.0)
    plain = cls(X, y)
    w = np.random.default_rng(19).standard_normal(3)
    loss_only = plain.value(w, -LOG_ALPHA_LIMIT)
    assert weighted.value(w, -LOG_ALPHA_LIMIT) == pytest.approx(3 * loss_only, rel=1e-12)


@pytest.mark.parametrize("kind", ["logistic", "ridge"])
@pytest.mark.parametrize("container", ["dense", "fortran", "float32", "csr"])
def test_inputs_are_not_modified(kind, container):
    X, y = random_data(kind, seed=20, n=40, d=4, density=0.7)
    if container == "fortran":
        X = np.asfortranarray(X)
    elif container == "float32":
        X = X.astype(np.float32)
    elif container == "csr":
        X = sp.csr_matrix(X)
    sw = np.random.default_rng(21).uniform(0.5, 2.0, size=40)
    X_copy = X.copy()
    y_copy, sw_copy = y.copy(), sw.copy()
    rng = np.random.default_rng(22)
    w, q, v = rng.standard_normal((3, 5))
    la = rng.standard_normal(4)
    originals = [a.copy() for a in (w, q, v, la)]

    problem = PROBLEMS[kind](X, y, fit_intercept=True, per_feature=True, sample_weight=sw)
    problem.value_and_grad(w, la)
    problem.grad(w, la)
    problem.hvp(w, la, v)
    problem.hessian_operator(w, la)(v)
    problem.cross_vjp(w, la, q)
    problem.gradient_scale
    solve(problem, la, tol=1e-6)
    criterion = (HeldOutLogLoss if kind == "logistic" else HeldOutMSE)(X, y, sample_weight=sw)
    criterion.value_and_grad(w)
    criterion.value(w[:4])

    if sp.issparse(X):
        assert (X != X_copy).nnz == 0
        np.testing.assert_array_equal(X.indices, X_copy.indices)
        np.testing.assert_array_equal(X.indptr, X_copy.indptr)
    else:
        np.testing.assert_array_equal(X, X_copy)
    np.testing.assert_array_equal(y, y_copy)
    np.testing.assert_array_equal(sw, sw_copy)
    for a, original in zip((w, q, v, la), originals, strict=True):
        np.testing.assert_array_equal(a, original)


def test_float32_design_matches_float64():
    X, y = random_data("logistic", seed=23, n=50, d=4)
    X32 = X.astype(np.float32)
    p32 = LogisticRegressionProblem(X32, y)
    p64 = LogisticRegressionProblem(X32.astype(np.float64), y)
    w = np.random.default_rng(24).standard_normal(4)
    assert p32.value(w, 0.1) == pytest.approx(p64.value(w, 0.1), rel=1e-6)
    np.testing.assert_allclose(p32.grad(w, 0.1), p64.grad(w, 0.1), rtol=1e-5)


# -- criteria ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("sparse", [False, True])
def test_held_out_log_loss_equals_sklearn(fit_intercept, weighted, sparse):
    X, y = random_data("logistic", seed=25, n=70, d=5, density=0.8)
    rng = np.random.default_rng(26)
    w = rng.standard_normal(6 if fit_intercept else 5)
    sw = rng.uniform(0.1, 2.0, size=70) if weighted else None
    criterion = HeldOutLogLoss(sp.csr_matrix(X) if sparse else X, y, sample_weight=sw)
    z = X @ w[:5] + (w[5] if fit_intercept else 0.0)
    expected = log_loss(y, expit(z), sample_weight=sw)
    assert criterion.value(w) == pytest.approx(expected, rel=1e-12)
    value, grad = criterion.value_and_grad(w)
    assert value == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(grad, criterion.grad(w), rtol=1e-15)
    np.testing.assert_allclose(grad, central_gradient(criterion.value, w), rtol=1e-6, atol=1e-9)


def test_held_out_log_loss_string_labels_and_fitted_model(breast_cancer):
    X, y = breast_cancer
    labels = np.where(y == 0, "malignant", "benign")
    clf = LogisticRegression(C=1.0).fit(X[:400], labels[:400])
    criterion = HeldOutLogLoss(X[400:], labels[400:])
    np.testing.assert_array_equal(criterion.classes_, clf.classes_)
    expected = log_loss(labels[400:], clf.predict_proba(X[400:]))
    assert criterion.value(sklearn_coef(clf)) == pytest.approx(expected, rel=1e-12)


def test_held_out_log_loss_needs_classes_for_one_class_fold():
    X, y = random_data("logistic", seed=27, n=20, d=3)
    w = np.random.default_rng(28).standard_normal(3)
    one_class = np.ones(20, dtype=int)
    with pytest.raises(ValueError, match="two classes"):
        HeldOutLogLoss(X, one_class)
    criterion = HeldOutLogLoss(X, one_class, classes=[0, 1])
    np.testing.assert_array_equal(criterion.classes_, [0, 1])
    expected = log_loss(one_class, expit(X @ w), labels=[0, 1])
    assert criterion.value(w) == pytest.approx(expected, rel=1e-12)
    # The order of classes decides which label is positive.
    flipped = HeldOutLogLoss(X, one_class, classes=[1, 0])
    assert flipped.value(w) == pytest.approx(np.mean(np.logaddexp(0, X @ w)), rel=1e-12)
    with pytest.raises(ValueError, match="not in classes"):
        HeldOutLogLoss(X, y, classes=[0, 2])
    # A third class makes it the multinomial criterion, expecting one column per class.
    assert HeldOutLogLoss(X, y, classes=[0, 1, 2]).n_outputs == 3
    with pytest.raises(ValueError, match="at least two classes"):
        HeldOutLogLoss(X, np.zeros_like(y), classes=[0])
    with pytest.raises(ValueError, match="does not fit 3 features"):
        HeldOutLogLoss(X, y).value(np.zeros(5))


@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("sparse", [False, True])
def test_held_out_mse_equals_sklearn(fit_intercept, weighted, sparse):
    X, y = random_data("ridge", seed=29, n=70, d=5, density=0.8)
    rng = np.random.default_rng(30)
    w = rng.standard_normal(6 if fit_intercept else 5)
    sw = rng.uniform(0.1, 2.0, size=70) if weighted else None
    criterion = HeldOutMSE(sp.csr_matrix(X) if sparse else X, y, sample_weight=sw)
    prediction = X @ w[:5] + (w[5] if fit_intercept else 0.0)
    expected = mean_squared_error(y, prediction, sample_weight=sw)
    assert criterion.value(w) == pytest.approx(expected, rel=1e-12)
    value, grad = criterion.value_and_grad(w)
    assert value == pytest.approx(expected, rel=1e-12)
    # Closed form: d/dw mean_i s_i (y_i - x_i w)^2 = -2 X^T (s (y - X w)) / sum(s).
    s = np.ones(70) if sw is None else sw
    Xa = with_intercept(X) if fit_intercept else X
    np.testing.assert_allclose(grad, -2 * Xa.T @ (s * (y - prediction)) / s.sum(), rtol=1e-11)
    np.testing.assert_allclose(grad, central_gradient(criterion.value, w), rtol=1e-6, atol=1e-8)


def test_held_out_mse_bad_input():
    X, y = random_data("ridge", seed=31, n=20, d=3)
    y_bad = y.copy()
    y_bad[0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        HeldOutMSE(X, y_bad)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        HeldOutMSE(X, y[:-1])
    with pytest.raises(ValueError, match="non-negative"):
        HeldOutMSE(X, y, sample_weight=-np.ones(20))
