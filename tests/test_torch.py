"""The torch backend: parity with numpy, user-defined problems, devices, dtypes.

Parity is checked on the CPU in float64 and, when a GPU is present, on CUDA (the same tests,
parametrized by device; skipped with the reason otherwise). Tolerance: 1e-8 relative, in norm.

The SHINE estimates are compared at an inner tolerance of 1e-6 (HOAG's schedule starts at 1e-3):
they are built from secant pairs ``s = x_{k+1} - x_k``, whose relative round-off is
``eps ||x|| / ||s||``; near a solution at tolerance ``1e-8`` the last steps are about ``1e-8``
long, so any two implementations (numpy with another BLAS as well) agree there only to about
``1e-8``. The exact methods are also compared at 1e-10.

CG is compared at ``cg_tol=1e-12``: on an ill-conditioned Hessian its residuals react
chaotically to round-off (two backends part after a dozen iterations), so two CG solves
stopped at a loose tolerance are two different valid solutions, about ``cond(H) * cg_tol``
apart (2e-7 relative at ``cg_tol=1e-6`` on breast_cancer), not the same one. The HOAG path
with ``method="cg"`` is compared with that CG tolerance too; with ``"shine-opa"`` (whose CG
only runs as a fallback) with the defaults, to ``1e-7``: when a warm-started inner solve needs
no iteration, OPA's secant step is floored at ``sqrt(eps) ||x||``, so its gradient difference
carries a relative round-off of about ``sqrt(eps) = 1.5e-8`` by design, whatever the backend
(measured: up to 9e-8 in ``log_alpha`` on the ridge search with an intercept, where most
warm-started solves need no iteration).
Warm-started SHINE (memory carried over) is compared at the tolerances of a HOAG search
(``1e-4`` then ``1e-5``); at ``1e-6`` plain SHINE's estimate on breast_cancer is sensitive to
round-off at the ``1e-6`` level (a property of that estimate, not of the backend).
"""

from __future__ import annotations

import joblib
import numpy as np
import pytest
import scipy.sparse as sp
from _reference import (
    adjoint_tolerance,
    condition_number,
    dense_hessian,
    exact_hypergradient_at,
    finite_difference_error_bound,
    hypergradient_agreement_bound,
    hypergradient_error_bound,
    pairs_of,
    solution_error_bound,
    update_amplification,
)
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

from hoag_shine import (
    METHODS,
    BilevelEstimator,
    check_hypergradient,
    hypergradient,
    solve_bilevel,
)
from hoag_shine.backends import check_backend, make_criterion, make_problem
from hoag_shine.hypergradients import _RESCALE_BAND

torch = pytest.importorskip("torch")

from hoag_shine.backends import (  # noqa: E402  (needs torch)
    TorchCriterion,
    TorchHeldOutLogLoss,
    TorchLogisticRegressionProblem,
    TorchProblem,
    TorchRidgeProblem,
)

RTOL = 1e-8
#: CG tolerance of the parity tests (see the module docstring).
CG_TOL = 1e-12
#: Tolerance of the HOAG paths with OPA: when a warm-started inner solve needs no iteration,
#: OPA's secant step is floored at ``sqrt(eps) ||x||``, so its gradient difference carries a
#: relative round-off of ``sqrt(eps)`` times the ratio of the gradient's terms to the
#: difference (at most about 10 on these standardized problems), and the outer steps pass it
#: on to ``log_alpha``: ``100 sqrt(eps) = 1.5e-6``. (The exact methods' paths follow their
#: iterates: ``RTOL``.)
RTOL_OPA = 100 * float(np.sqrt(np.finfo(np.float64).eps))

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not torch.cuda.is_available(),
            reason="CUDA is not available (torch.cuda.is_available() is False): the CUDA "
            "variant of the parity tests needs a GPU",
        ),
    ),
]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small problems: torch's thread pool only adds overhead, and spins on a loaded machine
    (20 times slower per evaluation on a busy 2-core runner)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel(a, b) -> float:
    """``||a - b|| / ||a||`` of two arrays or tensors (numpy ``a``)."""
    a = np.atleast_1d(np.asarray(a, dtype=np.float64))
    b = np.atleast_1d(_np(b))
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-300))


def rel_log(a, b) -> float:
    """``||a - b|| / max(||a||, 1)``: log_alpha is compared on its own (log) scale."""
    a = np.atleast_1d(np.asarray(a, dtype=np.float64))
    b = np.atleast_1d(_np(b))
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1.0))


def _np(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy().astype(np.float64)
    return np.asarray(x, dtype=np.float64)


# -- data --------------------------------------------------------------------------------------
def _standardized(X):
    return StandardScaler().fit_transform(X)


def _sparse_classification(n=240, d=40, density=0.15, seed=0):
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=density, format="csr", random_state=seed)
    X.data = rng.standard_normal(X.nnz)
    w = rng.standard_normal(d)
    y = (X @ w + 0.5 * rng.standard_normal(n) > 0).astype(int)
    return X, y


def _sparse_regression(n=200, d=30, density=0.2, seed=1):
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=density, format="csr", random_state=seed)
    X.data = rng.standard_normal(X.nnz)
    y = X @ rng.standard_normal(d) + 0.3 * rng.standard_normal(n) + 1.0
    return X, y


def _data(name):
    if name == "cancer":
        X, y = load_breast_cancer(return_X_y=True)
        return _standardized(X), y
    if name == "wine":  # three classes: multinomial
        X, y = load_wine(return_X_y=True)
        return _standardized(X), y
    if name == "diabetes":
        X, y = load_diabetes(return_X_y=True)
        return _standardized(X), (y - y.mean()) / y.std()
    if name == "sparse-clf":
        return _sparse_classification()
    if name == "sparse-reg":
        return _sparse_regression()
    raise AssertionError(name)


_DATA = {}


def data(name):
    if name not in _DATA:
        _DATA[name] = _data(name)
    return _DATA[name]


# (id, kind, data, fit_intercept, per_feature, log_alpha0)
CONFIGS = [
    ("logistic-dense", "logistic", "cancer", False, False, 0.0),
    ("logistic-dense-intercept-perfeature", "logistic", "cancer", True, True, -0.5),
    ("logistic-sparse", "logistic", "sparse-clf", False, False, -1.0),
    ("logistic-sparse-intercept-perfeature", "logistic", "sparse-clf", True, True, -1.0),
    ("multinomial-dense-intercept", "logistic", "wine", True, False, 0.0),
    ("multinomial-dense-perfeature", "logistic", "wine", False, True, 0.0),
    ("ridge-dense-intercept", "ridge", "diabetes", True, False, 1.0),
    ("ridge-dense-perfeature", "ridge", "diabetes", False, True, 1.0),
    ("ridge-sparse-intercept-perfeature", "ridge", "sparse-reg", True, True, 0.0),
]
CONFIG_IDS = [c[0] for c in CONFIGS]


def pair(config, device="cpu", dtype=None, *, split=0.7):
    """``(numpy inner, numpy outer, torch inner, torch outer, log_alpha)`` of ``config``."""
    _, kind, name, fit_intercept, per_feature, la0 = config
    X, y = data(name)
    n_train = int(split * X.shape[0])
    rng = np.random.default_rng(0)
    order = rng.permutation(X.shape[0])
    train, val = order[:n_train], order[n_train:]
    options = dict(fit_intercept=fit_intercept, per_feature=per_feature)
    inner_np = make_problem(kind, X[train], y[train], **options)
    classes = getattr(inner_np, "classes_", None)
    outer_np = make_criterion(kind, X[val], y[val], classes=classes)
    torch_options = dict(backend="torch", device=device, dtype=dtype)
    inner_t = make_problem(kind, X[train], y[train], classes=classes, **options, **torch_options)
    outer_t = make_criterion(kind, X[val], y[val], classes=classes, **torch_options)
    d = X.shape[1]
    log_alpha = la0 + 0.1 * np.cos(np.arange(d)) if per_feature else np.asarray(la0)
    return inner_np, outer_np, inner_t, outer_t, log_alpha


# -- problems and criteria ---------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_problem_and_criterion_parity(config, device):
    inner_np, outer_np, inner_t, outer_t, la = pair(config, device)
    assert inner_t.n_params == inner_np.n_params
    assert inner_t.hyper_shape == inner_np.hyper_shape
    assert inner_t.n_outputs == inner_np.n_outputs
    assert inner_t.gradient_scale == pytest.approx(inner_np.gradient_scale, rel=1e-12)
    rng = np.random.default_rng(1)
    w = 0.3 * rng.standard_normal(inner_np.n_params)
    v = rng.standard_normal(inner_np.n_params)
    wt = torch.as_tensor(w, device=device)
    vt = torch.as_tensor(v, device=device)

    value, grad = inner_np.value_and_grad(w, la)
    value_t, grad_t = inner_t.value_and_grad(wt, la)
    assert isinstance(value_t, float)
    assert grad_t.device == wt.device and grad_t.dtype == torch.float64
    assert value_t == pytest.approx(value, rel=1e-12)
    assert rel(grad, grad_t) < 1e-12
    assert rel(inner_np.hvp(w, la, v), inner_t.hvp(wt, la, vt)) < 1e-12
    assert rel(inner_np.cross_vjp(w, la, v), inner_t.cross_vjp(wt, la, vt)) < 1e-12
    assert rel(inner_np.penalty_weights(la), inner_t.penalty_weights(la)) == 0

    value, grad = outer_np.value_and_grad(w)
    value_t, grad_t = outer_t.value_and_grad(wt)
    assert value_t == pytest.approx(value, rel=1e-12)
    assert outer_t.value(wt) == pytest.approx(value, rel=1e-12)
    assert rel(grad, grad_t) < 1e-12


@pytest.mark.parametrize("layout", ["csr", "coo", "csc", "dense"])
def test_torch_inputs_match_numpy_inputs(layout):
    X, y = _sparse_classification()
    dense = torch.as_tensor(X.toarray())
    X_t = {
        "csr": dense.to_sparse_csr(),
        "coo": dense.to_sparse(),
        "csc": dense.to_sparse_csc(),
        "dense": dense,
    }[layout]
    y_t = torch.as_tensor(y)
    ref = TorchLogisticRegressionProblem(X, y, fit_intercept=True)
    got = TorchLogisticRegressionProblem(X_t, y_t, fit_intercept=True)
    assert got.X.layout == (torch.strided if layout == "dense" else torch.sparse_csr)
    w = torch.linspace(-1, 1, ref.n_params, dtype=torch.float64)
    v0, g0 = ref.value_and_grad(w, 0.5)
    v1, g1 = got.value_and_grad(w, 0.5)
    assert v1 == pytest.approx(v0, rel=1e-13)
    assert rel(_np(g0), g1) < 1e-13


def test_sparse_stays_sparse_with_compact_indices():
    X, y = _sparse_classification()
    problem = TorchLogisticRegressionProblem(X, y)
    assert problem.X.layout == torch.sparse_csr
    assert problem.X.crow_indices().dtype == torch.int32  # twice as fast products on a CPU
    assert problem.X._nnz() == X.nnz


# -- hypergradients ----------------------------------------------------------------------------
def _verdict_is_near_a_threshold(info, threshold, rtol) -> bool:
    """True when the safeguard's quantities are within ``10 * rtol`` (relative) of the values
    where its verdict changes: then the two backends may rightly disagree on it."""
    if "adjoint_scale_residual" not in info:
        return False
    low, high = _RESCALE_BAND
    checks = [(info["adjoint_residual"], threshold)]
    checks += [
        (info[key], bound)
        for key in ("adjoint_scale", "adjoint_scale_residual")
        for bound in (low, high)
    ]
    return any(abs(value - bound) <= 10 * rtol * abs(bound) for value, bound in checks)


def _assert_same_result(res_np, res_t, penalty, *, threshold=0.5):
    """The two backends ran the same computation, up to round-off.

    - The inner solves take the same steps: their stopping tests and line searches compare
      quantities that agree to about 1e-12 relative, so the iteration counts are equal (a tie
      within round-off is a 1e-12 event), and the iterates agree to round-off amplified along
      the path, ``n_iter * cond * eps ~ 1e-12``; ``RTOL = 1e-8`` separates that from another
      valid solution (``tol * cond ~ 1e-6`` away).
    - The adjoints agree to :func:`_reference.adjoint_tolerance`.
    - The hypergradient ``-(penalty * w) . q`` (per feature: per coordinate) then agrees to
      ``||penalty * w|| ||dq|| + ||penalty * q|| ||dw||`` with the measured differences.
    - The safeguard's verdict is the same unless its quantities are near a threshold.
    """
    assert res_t.info["inner_iter"] == res_np.info["inner_iter"]
    assert res_t.value == pytest.approx(res_np.value, rel=RTOL)
    assert rel(res_np.coef, res_t.coef) < RTOL
    q_tol = adjoint_tolerance(res_np, res_t, RTOL)
    assert rel(res_np.q, res_t.q) < q_tol
    if res_t.info["backward"] != res_np.info["backward"]:
        assert _verdict_is_near_a_threshold(res_np.info, threshold, q_tol), (
            res_np.info["backward"],
            res_t.info["backward"],
        )
    assert isinstance(res_t.grad, np.ndarray) and res_t.grad.dtype == np.float64
    assert res_t.grad.shape == res_np.grad.shape
    assert np.linalg.norm(res_np.grad - res_t.grad) <= hypergradient_agreement_bound(
        res_np, res_t, penalty
    )


def _penalty(inner_np, la) -> np.ndarray:
    """The penalties of the coefficients (the cross derivative is ``penalty * w``)."""
    return np.asarray(inner_np.penalty_weights(la))[: inner_np.design.n_coef]


def test_adjoint_tolerance_is_tight_for_identical_pairs():
    """The tolerance is the pairs' discrepancy times a modest factor, and the two-loop on
    tensors is the two-loop on arrays: torch's estimate built from numpy's own pairs gives
    numpy's adjoint to round-off (a wrong order, scaling or sign would be far off)."""
    from hoag_shine.solvers import LBFGSMemory

    inner_np, outer_np, _, _, la = pair(CONFIGS[1])
    res = hypergradient(inner_np, outer_np, la, method="shine-opa", tol=1e-6)
    s, y = pairs_of(res.inner_state.memory)
    memory_t = LBFGSMemory(s.shape[0], torch.zeros(s.shape[1], dtype=torch.float64))
    for s_k, y_k in zip(s, y, strict=True):
        assert memory_t.push(torch.from_numpy(s_k), torch.from_numpy(y_k))
    v = outer_np.grad(res.coef)
    q_t = memory_t.matvec(torch.from_numpy(v))
    q_np = res.inner_state.memory.matvec(v)
    # Round-off of the two-loop: a few ulps per pair, amplified by the updates.
    amplification = update_amplification(res.inner_state.memory)
    assert rel(q_np, q_t) <= 10 * s.shape[0] * amplification * np.finfo(float).eps
    assert 1.0 <= amplification < 1e3  # the factor of _adjoint_tolerance stays modest


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_hypergradient_parity(config, method, device):
    inner_np, outer_np, inner_t, outer_t, la = pair(config, device)
    options = dict(method=method, tol=1e-6, cg_tol=CG_TOL)
    res_np = hypergradient(inner_np, outer_np, la, **options)
    res_t = hypergradient(inner_t, outer_t, la, **options)
    _assert_same_result(res_np, res_t, _penalty(inner_np, la))
    assert res_t.coef.device == torch.device(device) or device == "cuda"
    assert isinstance(res_t.coef, torch.Tensor) and isinstance(res_t.q, torch.Tensor)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["cg", "jacobian-free"])
@pytest.mark.parametrize("config", CONFIGS[::2], ids=CONFIG_IDS[::2])
def test_hypergradient_parity_tight(config, method, device):
    """At tol=1e-10 the last L-BFGS steps are at round-off level, so the two paths may part
    (55 against 56 iterations on breast_cancer): then they are two solutions that meet the
    tolerance, each within ``||g|| / lambda_min`` of the optimum, so within the sum of the two
    bounds of each other; the values differ by at most ``||grad outer||`` times that."""
    inner_np, outer_np, inner_t, outer_t, la = pair(config, device)
    options = dict(method=method, tol=1e-10, cg_tol=CG_TOL)
    res_np = hypergradient(inner_np, outer_np, la, **options)
    res_t = hypergradient(inner_t, outer_t, la, **options)
    coef_t = _np(res_t.coef)
    distance = solution_error_bound(inner_np, res_np.coef, la) + solution_error_bound(
        inner_np, coef_t, la
    )
    assert np.linalg.norm(res_np.coef - coef_t) <= distance + RTOL * np.linalg.norm(res_np.coef)
    slope = np.linalg.norm(outer_np.grad(res_np.coef))
    assert abs(res_t.value - res_np.value) <= 2 * slope * distance + RTOL * res_np.value
    # Each hypergradient is the exact one at its own inner solution: CG's adjoint to
    # cg_tol = 1e-12 (times the conditioning), Jacobian-free's is grad outer itself.
    for res, coef in ((res_np, res_np.coef), (res_t, coef_t)):
        if method == "cg":
            exact = exact_hypergradient_at(inner_np, outer_np, coef, la)
            # The CG residual is at most cg_tol (per block); the error of the adjoint is at
            # most the condition number times that, and so is the dense reference's own
            # round-off times eps: a factor 100 covers the per-block norm and both.
            cond = condition_number(dense_hessian(inner_np, coef, la))
            rtol = 100 * cond * CG_TOL
        else:
            exact = (
                -_penalty(inner_np, la)
                * coef[: inner_np.design.n_coef]
                * outer_np.grad(coef)[: inner_np.design.n_coef]
            )
            exact = exact.reshape(-1, inner_np.n_outputs).sum(axis=1)
            exact = exact if inner_np.per_feature else np.asarray(exact.sum())
            rtol = 1e-12  # q = grad outer exactly: one product and a sum apart
        assert rel(exact, res.grad) < rtol


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("safeguard_threshold", [0.9, 1e-6])
@pytest.mark.parametrize("method", ["shine", "shine-opa"])
def test_safeguard_parity(method, safeguard_threshold, device):
    # A tiny threshold forces the fallback to CG: the same decision on both backends.
    inner_np, outer_np, inner_t, outer_t, la = pair(CONFIGS[1], device)
    options = dict(method=method, tol=1e-6, cg_tol=CG_TOL, safeguard_threshold=safeguard_threshold)
    res_np = hypergradient(inner_np, outer_np, la, **options)
    res_t = hypergradient(inner_t, outer_t, la, **options)
    _assert_same_result(res_np, res_t, _penalty(inner_np, la), threshold=safeguard_threshold)
    if safeguard_threshold < 1e-3:
        assert res_t.info["backward"].endswith("fallback-cg")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["cg", "shine-opa", "shine"])
@pytest.mark.parametrize(
    "config",
    [CONFIGS[0], CONFIGS[3], CONFIGS[4]],
    ids=[CONFIG_IDS[0], CONFIG_IDS[3], CONFIG_IDS[4]],
)
def test_warm_start_parity(config, method, device):
    """coef0, q0 and the L-BFGS memory shifted by the penalty change (memory_log_alpha)."""
    inner_np, outer_np, inner_t, outer_t, la = pair(config, device)
    options = dict(method=method, cg_tol=CG_TOL)
    first_np = hypergradient(inner_np, outer_np, la, tol=1e-4, **options)
    first_t = hypergradient(inner_t, outer_t, la, tol=1e-4, **options)
    la2 = la - 0.3

    def warm(first):
        return dict(
            coef0=first.coef,
            q0=first.q,
            memory=first.inner_state.memory,
            memory_log_alpha=la,
        )

    res_np = hypergradient(inner_np, outer_np, la2, tol=1e-5, **options, **warm(first_np))
    res_t = hypergradient(inner_t, outer_t, la2, tol=1e-5, **options, **warm(first_t))
    _assert_same_result(res_np, res_t, _penalty(inner_np, la2))
    # numpy warm starts are accepted by a torch problem (converted to its device)
    res_mixed = hypergradient(
        inner_t,
        outer_t,
        la2,
        tol=1e-5,
        **options,
        coef0=first_np.coef,
        q0=first_np.q,
        memory=first_t.inner_state.memory,
        memory_log_alpha=la,
    )
    _assert_same_result(res_np, res_mixed, _penalty(inner_np, la2))


def test_no_host_transfer_inside_a_hypergradient(monkeypatch):
    """Only Python floats and, once, the log_alpha-sized hypergradient leave the device; only
    the penalty (once per new log_alpha) goes to it."""
    _, _, inner_t, outer_t, la = pair(CONFIGS[3], "cpu")
    hypergradient(inner_t, outer_t, la, method="shine-opa", tol=1e-6)  # warm caches
    counts = {"to_host": 0, "to_device": 0}
    cpu, numpy_, as_tensor = torch.Tensor.cpu, torch.Tensor.numpy, torch.as_tensor

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(torch.Tensor, "cpu", counted("to_host", cpu))
    monkeypatch.setattr(torch.Tensor, "numpy", counted("to_host", numpy_))
    monkeypatch.setattr(torch, "as_tensor", counted("to_device", as_tensor))
    for method in METHODS:
        counts.update(to_host=0, to_device=0)
        res = hypergradient(inner_t, outer_t, la + 0.1, method=method, tol=1e-6)
        assert res.info["inner_iter"] > 3
        assert counts["to_host"] <= 2, (method, counts)  # the hypergradient: .cpu().numpy()
        assert counts["to_device"] <= 1, (method, counts)  # the penalty of the new log_alpha


# -- the outer loop ----------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["shine-opa", "cg"])
@pytest.mark.parametrize(
    "config",
    [CONFIGS[0], CONFIGS[3], CONFIGS[4], CONFIGS[6], CONFIGS[8]],
    ids=[CONFIG_IDS[i] for i in (0, 3, 4, 6, 8)],
)
def test_hoag_path_parity(config, method, device):
    """The torch search follows numpy's, as far as numpy's own search is insensitive to
    round-off.

    Scalar searches contract the discrepancy of their steps (HOAG's step is at most about
    ``1/L``), so round-off stays at the level of one evaluation. Per-feature searches amplify
    it (by about 10 per outer iteration after a few iterations on these problems), and a
    decision near its threshold (accept, fall back) can part any two searches; after that
    they are different valid searches. Instead of a fixed number of iterations, the window
    compared is measured on numpy itself: the records where numpy started a few ulps away (the
    size of the backends' round-off) agrees with numpy to ``rtol / 10`` and takes the same
    decisions.
    """
    inner_np, outer_np, inner_t, outer_t, la = pair(config, device)
    options = dict(method=method, optimizer="hoag", max_iter=12)
    rtol = RTOL
    if method == "cg":
        options["hypergradient_options"] = {"cg_tol": CG_TOL}
    else:
        rtol = RTOL_OPA
    res_np = solve_bilevel(inner_np, outer_np, la, **options)
    nudge = 4 * np.finfo(float).eps * np.maximum(1.0, np.abs(la))
    nudged = solve_bilevel(inner_np, outer_np, la + nudge, **options)
    res_t = solve_bilevel(inner_t, outer_t, la, **options)
    # Hypergradients are accurate relative to the size of their terms, not to their value
    # near a stationary point: grad_norm is compared on the scale of the first one.
    grad_scale = res_np.history[0]["grad_norm"]

    def discrepancy(a, b) -> float:
        return max(
            rel_log(a["log_alpha"], b["log_alpha"]),
            abs(a["outer_loss"] - b["outer_loss"]) / abs(a["outer_loss"]),
            abs(a["grad_norm"] - b["grad_norm"]) / grad_scale,
        )

    decisions = ("backward", "accepted", "inner_iter", "n_fun_evals")
    window = 0
    for rec_np, rec_nudged in zip(res_np.history, nudged.history, strict=False):
        if discrepancy(rec_np, rec_nudged) > rtol / 10 or any(
            rec_np[key] != rec_nudged[key] for key in decisions
        ):
            break
        window += 1
    # A comparison, not a formality: at least the first three evaluations (on these problems a
    # fallback CG at the loose tolerance of the fourth can already part numpy from itself).
    assert window >= 3
    for rec_np, rec_t in zip(res_np.history[:window], res_t.history[:window], strict=True):
        assert discrepancy(rec_np, rec_t) < rtol
        for key in decisions:
            assert rec_t[key] == rec_np[key], key
    if window == res_np.n_iter:
        assert res_t.n_iter == res_np.n_iter
        assert res_t.message == res_np.message
        assert rel_log(res_np.log_alpha, res_t.log_alpha) < rtol
        assert res_t.value == pytest.approx(res_np.value, rel=rtol)


@pytest.mark.parametrize("method", ["shine-opa", "cg"])
@pytest.mark.parametrize(
    "config",
    [CONFIGS[0], CONFIGS[2], CONFIGS[4], CONFIGS[6]],
    ids=[CONFIG_IDS[i] for i in (0, 2, 4, 6)],
)
def test_secant_search_parity(config, method):
    """The secant search (the default for a scalar log_alpha) on both backends: the start and
    the first expansion steps are decided by the signs of hypergradients far from zero, so
    they agree to the parity tolerance; later decisions compare losses within their errors
    and may rightly part, so after them both searches are only required to end in a good
    point: within the last bracket's width of each other, at losses that agree to both
    searches' final errors."""
    inner_np, outer_np, inner_t, outer_t, la = pair(config)
    options = dict(method=method, max_iter=12)
    rtol = RTOL_OPA if method == "shine-opa" else RTOL
    if method == "cg":
        options["hypergradient_options"] = {"cg_tol": CG_TOL}
    res_np = solve_bilevel(inner_np, outer_np, la, **options)
    res_t = solve_bilevel(inner_t, outer_t, la, **options)
    for rec_np, rec_t in zip(res_np.history[:2], res_t.history[:2], strict=True):
        assert rel_log(rec_np["log_alpha"], rec_t["log_alpha"]) < rtol
        assert rec_t["outer_loss"] == pytest.approx(rec_np["outer_loss"], rel=rtol)
    assert abs(float(res_np.log_alpha) - float(res_t.log_alpha)) <= 2 * 0.1  # two xtol
    # Both end near the minimizer, where the loss is flat to second order: their losses
    # differ by the final evaluations' errors and the loss's variation across the two ends
    # (an assumption: below 0.1% over 0.2 in log_alpha on these smooth problems).
    errors = res_np.history[-1]["outer_loss_error"] + res_t.history[-1]["outer_loss_error"]
    assert abs(res_np.value - res_t.value) <= errors + 1e-3 * res_np.value


def test_hoag_path_parity_cross_validation():
    """Several folds (their mean), with joblib threads."""
    config = CONFIGS[2]
    folds_np, folds_t = ([], []), ([], [])
    for split in (0.6, 0.75):
        inner_np, outer_np, inner_t, outer_t, la = pair(config, split=split)
        folds_np[0].append(inner_np)
        folds_np[1].append(outer_np)
        folds_t[0].append(inner_t)
        folds_t[1].append(outer_t)
    res_np = solve_bilevel(*folds_np, la, max_iter=6)
    with joblib.parallel_config(backend="threading"):
        res_t = solve_bilevel(*folds_t, la, max_iter=6, n_jobs=2)
    assert [r["outer_loss"] for r in res_t.history] == pytest.approx(
        [r["outer_loss"] for r in res_np.history], rel=RTOL
    )
    assert rel_log(res_np.log_alpha, res_t.log_alpha) < RTOL


# -- dtypes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["cg", "shine-opa"])
def test_float32(method):
    inner_np, outer_np, inner_t, outer_t, la = pair(CONFIGS[0], dtype="float32")
    assert inner_t.init_coef().dtype == torch.float32
    res_np = hypergradient(inner_np, outer_np, la, method=method, tol=1e-4)
    res_t = hypergradient(inner_t, outer_t, la, method=method, tol=1e-4)
    assert res_t.coef.dtype == torch.float32 and res_t.q.dtype == torch.float32
    assert res_t.inner_state.memory.dtype == torch.float32
    assert res_t.info["inner_converged"]
    assert rel(res_np.coef, res_t.coef) < 1e-3
    assert rel(res_np.grad, res_t.grad) < 1e-2
    assert res_t.value == pytest.approx(res_np.value, rel=1e-4)
    path = solve_bilevel(inner_t, outer_t, la, method=method, max_iter=5)
    # A search in float32 stays in float32 and ends (at most max_iter evaluations; the secant
    # search may close its bracket before) on a finite loss.
    assert 1 < path.n_iter <= 5
    assert path.coef[0].dtype == torch.float32
    assert np.isfinite(path.value)


@pytest.mark.parametrize("dtype", ["float16", "int64", torch.int32])
def test_invalid_dtype(dtype):
    X, y = data("cancer")
    with pytest.raises(ValueError, match="float64 or float32"):
        TorchLogisticRegressionProblem(X, y, dtype=dtype)


# -- user-defined problems ---------------------------------------------------------------------
def _smoothed_hinge_problem(per_feature, device="cpu"):
    X, y = data("sparse-clf")
    X = torch.as_tensor(X.toarray(), device=device)
    signs = torch.as_tensor(2.0 * y - 1.0, device=device)
    X_train, X_val = X[:160], X[160:]
    s_train, s_val = signs[:160], signs[160:]
    tau = 0.5

    def smoothed_hinge(margin):  # tau * log(1 + exp((1 - m) / tau)): a C-infinity hinge
        return tau * torch.nn.functional.softplus((1.0 - margin) / tau)

    def loss(w, log_alpha):
        data_term = smoothed_hinge(s_train * (X_train @ w)).sum()
        return data_term + 0.5 * (torch.exp(log_alpha) * w * w).sum()

    d = X.shape[1]
    inner = TorchProblem(
        loss,
        d,
        hyper_shape=(d,) if per_feature else (),
        device=device,
        penalty_weights=lambda la: torch.exp(la) * torch.ones(d, dtype=la.dtype, device=la.device),
    )
    outer = TorchCriterion(lambda w: smoothed_hinge(s_val * (X_val @ w)).mean())
    la = -1.0 + 0.2 * np.sin(np.arange(d)) if per_feature else np.asarray(-1.0)
    return inner, outer, la


@pytest.mark.parametrize("per_feature", [False, True])
@pytest.mark.parametrize("method", ["cg", "shine-opa"])
def test_torch_problem_smoothed_hinge_matches_finite_differences(method, per_feature):
    """Exact (cg) to finite-difference accuracy; SHINE-OPA to its own accuracy (an estimate)."""
    inner, outer, la = _smoothed_hinge_problem(per_feature)
    direction = np.cos(np.arange(la.size)).reshape(la.shape) if per_feature else None
    report = check_hypergradient(
        inner, outer, la, method=method, tol=1e-10, step=1e-4, direction=direction
    )
    if method == "cg":  # within the bounds of both computations (see _reference)
        res = hypergradient(inner, outer, la, method="cg", tol=1e-10)
        bound = finite_difference_error_bound(
            inner, outer, la, step=1e-4, tol=1e-12, direction=direction
        ) + np.sqrt(la.size) * hypergradient_error_bound(inner, outer, res, la, cg_tol=1e-10)
        assert abs(report["grad"] - report["finite_difference"]) <= bound, report
    else:  # an estimate: no a-priori bound (measured: 9e-4 and 5.5e-2 relative)
        assert report["relative_error"] < 0.1, report


def test_torch_problem_mlp_last_layer_matches_finite_differences():
    """Tune the L2 penalty of the softmax last layer of a (fixed) small MLP on digits."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = torch.as_tensor(X[:300] / 16.0), torch.as_tensor(y[:300])
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.Tanh()).double()
    with torch.no_grad():
        features = body(X)  # the network's penultimate layer, frozen
    n_features, n_classes = features.shape[1], 10
    train, val = slice(0, 200), slice(200, 300)

    def logits(w, rows):
        W = w[: n_features * n_classes].reshape(n_features, n_classes)
        return features[rows] @ W + w[n_features * n_classes :]

    def inner_loss(w, log_alpha):
        ce = torch.nn.functional.cross_entropy(logits(w, train), y[train], reduction="sum")
        W = w[: n_features * n_classes]
        return ce + 0.5 * torch.exp(log_alpha) * W.dot(W)

    def outer_loss(w):
        return torch.nn.functional.cross_entropy(logits(w, val), y[val])

    inner = TorchProblem(inner_loss, n_features * n_classes + n_classes)
    outer = TorchCriterion(outer_loss)
    report = check_hypergradient(inner, outer, 0.0, method="cg", tol=1e-10)
    res = hypergradient(inner, outer, 0.0, method="cg", tol=1e-10)
    bound = finite_difference_error_bound(
        inner, outer, 0.0, step=1e-4, tol=1e-12
    ) + hypergradient_error_bound(inner, outer, res, 0.0, cg_tol=1e-10)
    assert abs(report["grad"] - report["finite_difference"]) <= bound, report
    report = check_hypergradient(inner, outer, 0.0, method="shine-opa", tol=1e-10)
    assert report["relative_error"] < 0.1, report  # an estimate (see the hinge test)
    path = solve_bilevel(inner, outer, 0.0, method="shine-opa", max_iter=6)
    assert path.value < 0.5 * path.history[0]["outer_loss"]


@pytest.mark.parametrize("device", DEVICES)
def test_torch_problem_autograd_matches_the_builtin_problem(device):
    """Autograd's gradient, Hessian-vector product and cross term equal the analytic ones."""
    _, _, builtin, outer_t, la = pair(CONFIGS[1], device)  # logistic, intercept, per-feature
    X = builtin.X.to_dense()
    signs = builtin.y
    d = X.shape[1]

    def loss(w, log_alpha):
        margin = signs * (X @ w[:d] + w[d])
        return (
            torch.nn.functional.softplus(-margin).sum()
            + 0.5 * (torch.exp(log_alpha) * w[:d] ** 2).sum()
        )

    def penalty(log_alpha):
        return torch.cat([torch.exp(log_alpha), log_alpha.new_zeros(1)])

    user = TorchProblem(loss, d + 1, hyper_shape=(d,), penalty_weights=penalty, device=device)
    assert user.gradient_scale == pytest.approx(builtin.gradient_scale, rel=1e-12)
    # A TorchProblem has one gradient scale; the built-in problem measures the features' and
    # the intercept's blocks separately. Stop both inner solves the same way.
    user.relative_gradient_norm = builtin.relative_gradient_norm
    w = torch.linspace(-0.5, 0.5, d + 1, dtype=torch.float64, device=device)
    v = torch.cos(torch.arange(d + 1, dtype=torch.float64, device=device))
    assert user.value(w, la) == pytest.approx(builtin.value(w, la), rel=1e-12)
    assert rel(_np(builtin.grad(w, la)), user.grad(w, la)) < 1e-12
    assert rel(_np(builtin.hvp(w, la, v)), user.hvp(w, la, v)) < 1e-12
    assert rel(_np(builtin.cross_vjp(w, la, v)), user.cross_vjp(w, la, v)) < 1e-12
    assert rel(_np(builtin.penalty_weights(la)), user.penalty_weights(la)) < 1e-15
    for method in ("cg", "shine-opa"):
        first = hypergradient(builtin, outer_t, la, method=method, tol=1e-6)
        warm = dict(coef0=first.coef, memory=first.inner_state.memory, memory_log_alpha=la)
        ref = hypergradient(builtin, outer_t, la - 0.2, method=method, tol=1e-6, **warm)
        got = hypergradient(user, outer_t, la - 0.2, method=method, tol=1e-6, **warm)
        assert got.info["backward"] == ref.info["backward"]
        assert rel(ref.grad, got.grad) < 1e-6


def test_torch_problem_validation():
    with pytest.raises(TypeError, match="callable"):
        TorchProblem("not a function", 3)
    with pytest.raises(ValueError, match="positive"):
        TorchProblem(lambda w, la: w.sum(), 0)
    problem = TorchProblem(lambda w, la: (w * w).sum() * torch.exp(la).sum(), 3, hyper_shape=(2,))
    with pytest.raises(ValueError, match="shape"):
        problem.value_and_grad(torch.zeros(3, dtype=torch.float64), 0.0)
    with pytest.raises(ValueError, match="finite"):
        problem.check_log_alpha([np.nan, 0.0])
    bad = TorchProblem(lambda w, la: w, 3)
    with pytest.raises(TypeError, match="scalar"):
        bad.value_and_grad(torch.zeros(3, dtype=torch.float64), 0.0)
    # a loss whose gradient does not depend on log_alpha has a zero cross term
    flat = TorchProblem(lambda w, la: ((w - 1) ** 2).sum(), 3)
    zero = flat.cross_vjp(torch.ones(3, dtype=torch.float64), 0.0, torch.ones(3))
    assert float(zero) == 0.0


# -- the estimator -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("estimator", "data_name", "per_feature"),
    [
        (LogisticRegression(), "cancer", False),
        (LogisticRegression(C=0.5), "wine", False),
        (Ridge(alpha=2.0), "sparse-reg", True),
    ],
)
def test_estimator_torch_backend_matches_numpy(estimator, data_name, per_feature):
    X, y = data(data_name)
    options = dict(cv=3, max_outer_iter=6, random_state=0, per_feature=per_feature)
    ref = BilevelEstimator(estimator, **options).fit(X, y)
    got = BilevelEstimator(estimator, backend="torch", **options).fit(X, y)
    if per_feature:
        # HOAG (the default for a vector): its searches agree to RTOL_OPA (see there), and six
        # outer iterations stay inside the window where they are insensitive to round-off
        # (test_hoag_path_parity measures it on the same kind of problems).
        assert rel_log(ref.best_log_alpha_, got.best_log_alpha_) < RTOL_OPA
        assert [r["outer_loss"] for r in got.history_] == pytest.approx(
            [r["outer_loss"] for r in ref.history_], rel=RTOL_OPA
        )
        # The refits solve the same problem at the refit tolerance from the two penalties.
        np.testing.assert_allclose(got.predict(X), ref.predict(X), rtol=10 * RTOL_OPA, atol=1e-9)
    else:
        # The secant search (the default for a scalar): the first steps agree (see
        # test_secant_search_parity), and both end in a last bracket at most xtol = 0.1 wide.
        for rec, rec_t in zip(ref.history_[:2], got.history_[:2], strict=True):
            assert rel_log(rec["log_alpha"], rec_t["log_alpha"]) < RTOL_OPA
        assert abs(ref.best_log_alpha_ - got.best_log_alpha_) <= 0.1
    model = got.best_estimator_
    if per_feature:
        model = model[-1]
    assert isinstance(model.coef_, np.ndarray)


def test_estimator_backend_parameters():
    est = BilevelEstimator(LogisticRegression(), backend="torch", device="cpu", dtype="float32")
    params = est.get_params()
    assert (params["backend"], params["device"], params["dtype"]) == ("torch", "cpu", "float32")
    X, y = data("cancer")
    est.set_params(max_outer_iter=3, cv=2).fit(X, y)
    assert est.score(X, y) > 0.9
    with pytest.raises(ValueError, match="backend"):
        BilevelEstimator(LogisticRegression(), backend="jax").fit(X, y)
    with pytest.raises(ValueError, match="needs backend='torch'"):
        BilevelEstimator(LogisticRegression(), dtype="float32").fit(X, y)
    with pytest.raises(ValueError, match="float64 or float32"):
        BilevelEstimator(LogisticRegression(), backend="torch", dtype="int8").fit(X, y)


def test_check_backend():
    assert check_backend("numpy") == {}
    assert check_backend("numpy", "cpu", "float64") == {}
    options = check_backend("torch", None, None)
    assert options == {"device": torch.device("cpu"), "dtype": torch.float64}
    assert check_backend("torch", "cpu", np.float32)["dtype"] == torch.float32
    with pytest.raises(ValueError, match="Unknown backend"):
        check_backend("cupy")
    with pytest.raises(ValueError, match="needs backend='torch'"):
        check_backend("numpy", device="cuda")
    with pytest.raises(ValueError, match="Unknown problem kind"):
        make_problem("svm", *data("cancer"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            check_backend("torch", "cuda")


def test_criterion_classes_must_match():
    X, y = data("wine")
    inner = TorchLogisticRegressionProblem(X[::2], y[::2])  # three classes
    outer = TorchHeldOutLogLoss(X[1::2], y[1::2] + 10)
    with pytest.raises(ValueError, match="classes"):
        hypergradient(inner, outer, 0.0)


def test_ridge_problem_rejects_non_finite_targets():
    X, y = data("diabetes")
    y = y.copy()
    y[3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        TorchRidgeProblem(X, y)
    with pytest.raises(ValueError, match="NaN"):
        TorchRidgeProblem(torch.full((3, 2), float("nan")), np.zeros(3))


# -- the array layer and the optional dependency ----------------------------------------------
def test_array_helpers_on_tensors():
    from hoag_shine._array import all_finite, as_like, copy, dot, eps, norm, to_numpy

    a = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert dot(a, a) == 25.0 and norm(a) == 5.0
    assert all_finite(a)
    for bad in (float("inf"), float("-inf"), float("nan")):
        assert not all_finite(torch.tensor([1.0, bad]))
        assert not all_finite(np.array([1.0, bad]))
    assert all_finite(torch.tensor([1e308, 1e308], dtype=torch.float64))  # no overflow
    b = copy(a)
    b += 1
    assert a[0] == 3.0
    assert eps(a) == np.finfo(np.float64).eps
    assert eps(a.float()) == np.finfo(np.float32).eps
    assert eps(np.zeros(2)) == np.finfo(np.float64).eps
    as_tensor = as_like(np.array([1.0, 2.0]), a.float())
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.float32
    as_array = as_like(a, np.zeros(2))
    assert isinstance(as_array, np.ndarray) and as_array.dtype == np.float64
    x = np.ones(2)
    assert as_like(x, np.zeros(2)) is x
    assert isinstance(to_numpy(a), np.ndarray)


def _run_python(code):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_torch_is_optional():
    """Without torch, hoag_shine imports and runs on numpy, and the torch backend says how to
    get torch."""
    done = _run_python(
        "import importlib.abc, sys\n"
        "class NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import numpy as np, hoag_shine\n"
        "from hoag_shine.backends import check_backend, make_criterion, make_problem\n"
        "p = make_problem('ridge', np.eye(3), np.ones(3))  # numpy works\n"
        "c = make_criterion('ridge', np.eye(3), np.ones(3))\n"
        "hoag_shine.hypergradient(p, c, 0.0)\n"
        "try:\n"
        "    check_backend('torch')\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    assert done.returncode == 0, done.stderr
    assert "pip install" in done.stdout
