"""Tests of :func:`hoag_shine.solve_bilevel` (HOAG, GD, Adam) and :class:`ToleranceSchedule`."""

import itertools
import math
import warnings

import joblib
import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from sklearn.datasets import load_breast_cancer
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler

import hoag_shine.outer
from hoag_shine import (
    METHODS,
    SearchBoundWarning,
    ToleranceSchedule,
    hypergradient,
    solve_bilevel,
)
from hoag_shine.criteria import HeldOutLogLoss, HeldOutMSE
from hoag_shine.problems import LogisticRegressionProblem, RidgeProblem
from hoag_shine.solvers import LBFGS

HISTORY_KEYS = {
    "time",
    "time_inner",
    "time_backward",
    "log_alpha",
    "outer_loss",
    "grad_norm",
    "inner_iter",
    "backward",
    "n_opa_evals",
    "accepted",
    "step_size",
}


@pytest.fixture(scope="module")
def cancer_data():
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    perm = np.random.RandomState(0).permutation(len(y))
    return X[perm], y[perm]


@pytest.fixture(scope="module")
def cancer(cancer_data):
    X, y = cancer_data
    return LogisticRegressionProblem(X[:300], y[:300]), HeldOutLogLoss(X[300:], y[300:])


@pytest.fixture(scope="module")
def cancer_optimum(cancer):
    """Minimum of the held-out loss over scalar log_alpha: a grid, then a bounded 1-D search."""
    inner, outer = cancer

    def value(log_alpha):
        return hypergradient(inner, outer, log_alpha, method="jacobian-free", tol=1e-10).value

    grid = np.linspace(-5.0, 5.0, 41)
    values = [value(g) for g in grid]
    i = int(np.argmin(values))
    assert 0 < i < len(grid) - 1  # an interior minimum
    fine = minimize_scalar(
        value, bounds=(grid[i - 1], grid[i + 1]), method="bounded", options={"xatol": 1e-4}
    )
    assert fine.fun <= values[i]
    return float(fine.x), float(fine.fun), value


@pytest.fixture(scope="module")
def folds(cancer_data):
    X, y = cancer_data
    inners, outers = [], []
    for train, test in KFold(3).split(X):
        inners.append(LogisticRegressionProblem(X[train], y[train]))
        outers.append(HeldOutLogLoss(X[test], y[test]))
    return inners, outers


def strip_time(history):
    return [{k: v for k, v in record.items() if not k.startswith("time")} for record in history]


def assert_same_history(h1, h2):
    assert len(h1) == len(h2)
    for a, b in zip(strip_time(h1), strip_time(h2), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def check_history(result, max_iter, bounds=(-25.0, 25.0)):
    history = result.history
    assert result.n_iter == len(history) <= max_iter
    assert len(history) >= 1
    times = [record["time"] for record in history]
    assert all(t >= 0 for t in times)
    assert all(b >= a for a, b in itertools.pairwise(times))
    for k, record in enumerate(history):
        assert HISTORY_KEYS <= set(record)
        assert record["iteration"] == k
        la = np.asarray(record["log_alpha"])
        assert la.shape == np.shape(result.log_alpha)
        assert np.all(la >= bounds[0]) and np.all(la <= bounds[1])
        assert math.isfinite(record["outer_loss"]) and math.isfinite(record["grad_norm"])
        assert record["inner_iter"] >= 0 and record["n_opa_evals"] >= 0
        assert isinstance(record["accepted"], bool)
        # (0 only for a point evaluated again, which the secant search may do before its stop)
        evaluated_before = any(
            np.array_equal(r["log_alpha"], record["log_alpha"]) for r in history[:k]
        )
        assert record["step_size"] > 0 or (record["step_size"] == 0 and evaluated_before)
    # The result is the lowest-loss record or the last accepted iterate (whichever is lower when
    # both are evaluated again at the final tolerance); its value is that re-evaluation.
    losses = [record["outer_loss"] for record in history]
    lowest = history[int(np.argmin(losses))]["log_alpha"]
    last_accepted = [record for record in history if record["accepted"]][-1]["log_alpha"]
    assert any(np.array_equal(result.log_alpha, candidate) for candidate in (lowest, last_accepted))
    assert math.isfinite(result.value)


def check_hoag_rule(history, reject_increase=0.0):
    """Replay the documented HOAG step rule on a scalar history (no trust-region clipping)."""
    current = history[0]
    step = current["step_size"]
    for k in range(1, len(history)):
        record = history[k]
        assert record["step_size"] == pytest.approx(step, rel=1e-12)
        move = abs(record["log_alpha"] - current["log_alpha"])
        slack = 1e-13 * (1 + abs(current["log_alpha"]))  # rounding of the subtraction
        assert move <= step * current["grad_norm"] * (1 + 1e-12) + slack  # equal unless clipped
        loss, ref = record["outer_loss"], current["outer_loss"]
        predicted = ref - 0.5 * step * current["grad_norm"] ** 2
        # Rejected: a rise beyond what the two losses' errors (and the slack) explain.
        margin = record["outer_loss_error"] + current["outer_loss_error"]
        if loss > ref + margin + reject_increase * abs(ref):
            assert record["accepted"] is False
            step *= 0.5
        else:
            assert record["accepted"] is True
            if loss <= predicted:
                step *= 1.5
            elif loss > ref:
                step *= 0.5
            current = record


# --------------------------------------------------------------------------------------------
# HOAG and the other optimizers decrease the held-out loss
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_hoag_decreases_loss(cancer, cancer_optimum, method):
    inner, outer = cancer
    _, best_value, value = cancer_optimum
    result = solve_bilevel(
        inner, outer, -5.0, method=method, optimizer="hoag", trust_radius=None, max_iter=30
    )
    check_history(result, 30)
    check_hoag_rule(result.history)
    initial = value(-5.0)
    assert result.value < initial
    assert value(result.log_alpha) < 0.6 * initial  # the loss at the tight tolerance, too
    assert np.shape(result.log_alpha) == ()
    allowed = {method, f"{method}+fallback-cg", f"{method}+rescaled"}
    assert {r["backward"] for r in result.history} <= allowed
    if method in ("cg", "shine-opa", "shine-refine"):
        assert abs(result.value - best_value) <= 0.01 * best_value
        assert abs(value(result.log_alpha) - best_value) <= 0.01 * best_value
    if method == "shine-opa":
        assert all(r["n_opa_evals"] > 0 for r in result.history)
    else:
        assert all(r["n_opa_evals"] == 0 for r in result.history)


@pytest.mark.parametrize("optimizer", ["gd", "adam"])
@pytest.mark.parametrize("method", ["cg", "shine-opa"])
def test_gd_and_adam_decrease_loss(cancer, cancer_optimum, optimizer, method):
    inner, outer = cancer
    value = cancer_optimum[2]
    result = solve_bilevel(inner, outer, -5.0, method=method, optimizer=optimizer, max_iter=20)
    check_history(result, 20)
    assert all(r["accepted"] for r in result.history)
    losses = [r["outer_loss"] for r in result.history]
    assert result.value < losses[0]
    assert value(result.log_alpha) < value(-5.0)
    if optimizer == "gd":  # a fixed step
        assert len({r["step_size"] for r in result.history}) == 1
    # the first move goes downhill: the held-out loss decreases with alpha at -5
    assert result.history[1]["log_alpha"] > result.history[0]["log_alpha"]


def test_adam_step_size_is_learning_rate(cancer):
    inner, outer = cancer
    result = solve_bilevel(
        inner, outer, -5.0, method="cg", optimizer="adam", max_iter=4, step_size=0.05
    )
    # Adam's first bias-corrected step has length lr in each coordinate
    moves = np.diff([r["log_alpha"] for r in result.history])
    assert moves[0] == pytest.approx(0.05, rel=1e-6)
    assert np.all(np.abs(moves) <= 0.06)


@pytest.mark.parametrize("method", ["cg", "shine-opa"])
def test_per_feature_search(cancer_data, method):
    X, y = cancer_data
    inner = LogisticRegressionProblem(X[:300], y[:300], per_feature=True)
    outer = HeldOutLogLoss(X[300:], y[300:])
    log_alpha0 = np.full(X.shape[1], -3.0)
    result = solve_bilevel(inner, outer, log_alpha0, method=method, max_iter=10)
    check_history(result, 10)
    assert result.log_alpha.shape == (X.shape[1],)
    assert result.grad.shape == (X.shape[1],)
    assert np.all(np.isfinite(result.grad))
    np.testing.assert_array_equal(log_alpha0, -3.0)  # not modified
    losses = [r["outer_loss"] for r in result.history]
    assert result.value < losses[0]
    # records hold copies: they are not views of one another or of the result
    history_la = [r["log_alpha"] for r in result.history]
    assert len({id(a) for a in history_la}) == len(history_la)
    assert not np.shares_memory(history_la[0], history_la[-1])
    # the reported gradient is the fold's, at the returned point
    assert result.fold_results[0].grad.shape == (X.shape[1],)
    np.testing.assert_array_equal(result.grad, result.fold_results[0].grad)
    assert np.all(np.isfinite(result.grad))


def test_ridge_per_feature_search():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((150, 8))
    w = np.zeros(8)
    w[:3] = [2.0, -1.0, 1.5]
    y = X @ w + 0.5 * rng.standard_normal(150)
    inner = RidgeProblem(X[:100], y[:100], per_feature=True, fit_intercept=True)
    outer = HeldOutMSE(X[100:], y[100:])
    result = solve_bilevel(inner, outer, np.zeros(8), method="shine-refine", max_iter=15)
    check_history(result, 15)
    assert result.value < result.history[0]["outer_loss"]
    assert result.coef[0].shape == (9,)


# --------------------------------------------------------------------------------------------
# History, bounds, stopping
# --------------------------------------------------------------------------------------------
def test_bounds_respected_and_start_clipped(cancer):
    inner, outer = cancer
    result = solve_bilevel(inner, outer, -8.0, method="cg", bounds=(-3.0, 3.0), max_iter=10)
    check_history(result, 10, bounds=(-3.0, 3.0))
    assert result.history[0]["log_alpha"] == -3.0
    # a huge step lands on the upper bound, never beyond
    result = solve_bilevel(
        inner, outer, -8.0, method="cg", bounds=(-3.0, 3.0), step_size=1e4, max_iter=4
    )
    check_history(result, 4, bounds=(-3.0, 3.0))
    assert result.history[1]["log_alpha"] == 3.0


def test_bounds_per_feature(cancer_data):
    X, y = cancer_data
    inner = LogisticRegressionProblem(X[:300], y[:300], per_feature=True)
    outer = HeldOutLogLoss(X[300:], y[300:])
    log_alpha0 = np.linspace(-6.0, 6.0, X.shape[1])
    with pytest.warns(SearchBoundWarning, match="at the upper bound 2"):
        result = solve_bilevel(
            inner, outer, log_alpha0, method="shine-opa", bounds=(-2.0, 2.0), max_iter=5
        )
    check_history(result, 5, bounds=(-2.0, 2.0))
    np.testing.assert_array_equal(result.history[0]["log_alpha"], np.clip(log_alpha0, -2, 2))


def test_time_budget_zero(cancer):
    inner, outer = cancer
    result = solve_bilevel(inner, outer, -5.0, method="cg", time_budget=0.0, max_iter=10)
    assert result.n_iter == 1
    assert result.message == "time budget exhausted"
    assert result.log_alpha == -5.0


def test_max_iter_message(cancer):
    inner, outer = cancer
    result = solve_bilevel(inner, outer, -5.0, method="cg", max_iter=3)
    assert result.n_iter == 3
    assert result.message == "maximum number of iterations reached"
    one = solve_bilevel(inner, outer, -5.0, method="cg", max_iter=1)
    assert one.n_iter == 1


@pytest.mark.parametrize("stop_at", [0, 2])
def test_callback_stops(cancer, stop_at):
    inner, outer = cancer
    seen = []

    def callback(record):
        seen.append(record)
        return record["iteration"] >= stop_at

    result = solve_bilevel(inner, outer, -5.0, method="cg", callback=callback, max_iter=10)
    assert result.message == "stopped by callback"
    assert result.n_iter == stop_at + 1
    assert len(seen) == result.n_iter
    assert all(a is b for a, b in zip(seen, result.history, strict=True))


def test_callback_returning_none_continues(cancer):
    inner, outer = cancer
    result = solve_bilevel(inner, outer, -5.0, method="cg", callback=lambda r: None, max_iter=4)
    assert result.n_iter == 4


def test_xtol_stop(cancer):
    inner, outer = cancer
    hoag = {"method": "cg", "optimizer": "hoag", "max_iter": 10}
    result = solve_bilevel(inner, outer, -5.0, xtol=1e3, **hoag)
    assert result.message == "step below xtol"
    assert result.n_iter == 1
    # at a bound with the gradient pushing outward the clipped step is zero
    with pytest.warns(SearchBoundWarning, match="upper bound -5"):
        result = solve_bilevel(inner, outer, -5.0, bounds=(-8.0, -5.0), **hoag)
    assert result.message == "step below xtol"
    assert result.n_iter == 1
    # the secant search stops on the bound at once too
    with pytest.warns(SearchBoundWarning, match="upper bound -5"):
        result = solve_bilevel(inner, outer, -5.0, method="cg", bounds=(-8.0, -5.0), max_iter=10)
    assert result.message.startswith("on a bound")
    assert result.n_iter == 1


def _interrupting_callback(at):
    calls = []

    def callback(record):
        calls.append(record)
        if len(calls) == at:
            raise KeyboardInterrupt

    return callback


def test_keyboard_interrupt_returns_best(cancer):
    inner, outer = cancer
    with pytest.warns(RuntimeWarning, match="interrupted"):
        result = solve_bilevel(
            inner, outer, -5.0, method="cg", callback=_interrupting_callback(3), max_iter=10
        )
    assert result.interrupted is True
    assert result.message == "interrupted"
    assert result.n_iter == 3
    losses = [r["outer_loss"] for r in result.history]
    # a recorded point, at least as good as those before the interrupted record
    assert result.value in losses
    assert result.value <= min(losses[:2])
    np.testing.assert_array_equal(
        result.log_alpha, result.history[losses.index(result.value)]["log_alpha"]
    )
    assert np.isfinite(result.value) and np.all(np.isfinite(result.grad))
    assert result.value < losses[0]


def test_keyboard_interrupt_best_includes_last_record(cancer):
    inner, outer = cancer
    with pytest.warns(RuntimeWarning, match="interrupted"):
        result = solve_bilevel(
            inner, outer, -5.0, method="cg", callback=_interrupting_callback(3), max_iter=10
        )
    losses = [r["outer_loss"] for r in result.history]
    assert losses[2] < min(losses[:2])  # the third record is the best one
    assert result.value == min(losses)


def test_keyboard_interrupt_on_first_record_keeps_it(cancer):
    inner, outer = cancer
    with pytest.warns(RuntimeWarning, match="interrupted"):
        result = solve_bilevel(inner, outer, -5.0, method="cg", callback=_interrupting_callback(1))
    assert result.interrupted and result.n_iter == 1
    assert result.log_alpha == -5.0
    assert result.value == result.history[0]["outer_loss"]


def test_keyboard_interrupt_before_any_evaluation_propagates(cancer, monkeypatch):
    inner, outer = cancer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hoag_shine.outer, "hypergradient", interrupted)
    with pytest.raises(KeyboardInterrupt):
        solve_bilevel(inner, outer, -5.0, method="cg")


# --------------------------------------------------------------------------------------------
# Folds and parallelism
# --------------------------------------------------------------------------------------------
def test_folds_mean_value_and_grad(folds):
    inners, outers = folds
    schedule = ToleranceSchedule("constant", initial=1e-10)
    result = solve_bilevel(inners, outers, -1.0, method="cg", max_iter=1, tol_schedule=schedule)
    individual = [
        hypergradient(i, o, -1.0, method="cg", tol=1e-10)
        for i, o in zip(inners, outers, strict=True)
    ]
    assert result.value == pytest.approx(np.mean([r.value for r in individual]), rel=1e-12)
    assert result.grad == pytest.approx(np.mean([r.grad for r in individual]), rel=1e-12)
    record = result.history[0]
    assert record["outer_loss"] == result.value
    assert record["grad_norm"] == pytest.approx(abs(float(result.grad)), rel=1e-12)
    assert record["inner_iter"] == sum(r.info["inner_iter"] for r in individual)
    assert len(result.coef) == len(result.fold_results) == 3
    for fold, ref in zip(result.fold_results, individual, strict=True):
        np.testing.assert_allclose(fold.coef, ref.coef, rtol=1e-12)
    # the folds differ, so the mean is not trivially one of them
    assert np.ptp([r.value for r in individual]) > 1e-3


def test_folds_mismatch_raises(folds):
    inners, outers = folds
    with pytest.raises(ValueError, match="pair up"):
        solve_bilevel(inners, outers[:2], 0.0)
    with pytest.raises(ValueError, match="pair up"):
        solve_bilevel([], [], 0.0)


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_n_jobs_gives_identical_history(folds, backend):
    """Bitwise identical: the same computation on the same inputs, with one BLAS thread in the
    main process and in the workers (joblib gives loky workers cpu_count // n_jobs threads,
    and a threaded BLAS sums in an order that depends on its thread count)."""
    from threadpoolctl import threadpool_limits

    inners, outers = folds
    kwargs = {"method": "shine-opa", "max_iter": 6}
    with threadpool_limits(1):
        serial = solve_bilevel(inners, outers, -3.0, n_jobs=1, **kwargs)
        # (threads share the main process's limit; loky workers get their own)
        limit = {"inner_max_num_threads": 1} if backend == "loky" else {}
        with joblib.parallel_config(backend=backend, **limit):
            parallel = solve_bilevel(inners, outers, -3.0, n_jobs=2, **kwargs)
    assert_same_history(serial.history, parallel.history)
    assert serial.value == parallel.value


def test_warnings_from_parallel_folds_reach_caller(folds):
    inners, outers = folds
    with joblib.parallel_config(backend="threading"):
        with pytest.warns(ConvergenceWarning, match="Inner solver"):
            result = solve_bilevel(
                inners,
                outers,
                0.0,
                method="cg",
                max_iter=2,
                n_jobs=2,
                hypergradient_options={"solver": LBFGS(max_iter=2)},
            )
    assert np.isfinite(result.value)


def test_deterministic(cancer):
    inner, outer = cancer
    runs = [solve_bilevel(inner, outer, -4.0, method="shine-opa", max_iter=12) for _ in range(2)]
    assert_same_history(runs[0].history, runs[1].history)
    assert runs[0].message == runs[1].message


# --------------------------------------------------------------------------------------------
# HOAG's step rule
# --------------------------------------------------------------------------------------------
def _record_tolerances(monkeypatch) -> list[float]:
    """The inner tolerance of every hypergradient call of solve_bilevel, in order."""
    used = []
    original = hoag_shine.outer.hypergradient

    def spy(*args, **kwargs):
        used.append(kwargs["tol"])
        return original(*args, **kwargs)

    monkeypatch.setattr(hoag_shine.outer, "hypergradient", spy)
    return used


def test_huge_step_rejected_and_halved(cancer, monkeypatch):
    inner, outer = cancer
    used = _record_tolerances(monkeypatch)
    schedule = ToleranceSchedule.default_for("cg")
    result = solve_bilevel(
        inner,
        outer,
        -5.0,
        method="cg",
        optimizer="hoag",
        trust_radius=None,
        step_size=300.0,
        bounds=(-10.0, 10.0),
        max_iter=8,
    )
    h = result.history
    check_hoag_rule(h)
    assert h[0]["step_size"] == 300.0 and h[1]["step_size"] == 300.0
    assert h[1]["outer_loss"] > 1.2 * h[0]["outer_loss"]
    assert h[1]["accepted"] is False
    assert h[2]["step_size"] == 150.0
    # the next candidate starts again from the accepted point, with half the step
    first_move = h[0]["step_size"] * h[0]["grad_norm"]
    assert h[1]["log_alpha"] == min(-5.0 + first_move, 10.0)
    assert h[2]["log_alpha"] == pytest.approx(min(-5.0 + first_move / 2, 10.0), rel=1e-12)
    # the tolerance is halved too: the third evaluation used half the scheduled tolerance
    assert used[:3] == pytest.approx([schedule(0), schedule(1), 0.5 * schedule(2)], rel=1e-12)
    # eventually a step is accepted and the loss decreases
    assert any(r["accepted"] for r in h[2:])
    assert result.value < h[0]["outer_loss"]


def test_history_inner_tol_is_tolerance_used(cancer, monkeypatch):
    inner, outer = cancer
    used = _record_tolerances(monkeypatch)
    result = solve_bilevel(
        inner, outer, -5.0, method="cg", step_size=300.0, bounds=(-10.0, 10.0), max_iter=4
    )
    assert result.history[1]["accepted"] is False
    assert len(used) == result.n_iter
    assert [r["inner_tol"] for r in result.history] == used


def test_inner_tol_follows_schedule(cancer, monkeypatch):
    inner, outer = cancer
    used = _record_tolerances(monkeypatch)
    schedule = ToleranceSchedule("quadratic", initial=1e-4)
    result = solve_bilevel(
        inner, outer, -2.0, method="shine", optimizer="gd", tol_schedule=schedule, max_iter=5
    )
    # The final re-evaluations (if any) use the tolerance after the last iteration.
    expected = [schedule(k) for k in range(result.n_iter)]
    expected += [schedule(result.n_iter)] * result.n_final_evaluations
    assert used == expected
    assert [r["inner_tol"] for r in result.history] == used[: result.n_iter]


def test_warm_start_saves_inner_iterations(cancer):
    inner, outer = cancer
    result = solve_bilevel(
        inner,
        outer,
        0.0,
        method="cg",
        optimizer="gd",
        step_size=1.0,
        xtol=0.0,
        max_iter=5,
        tol_schedule=ToleranceSchedule("constant", initial=1e-8),
    )
    assert result.n_iter == 5
    moves = np.abs(np.diff([r["log_alpha"] for r in result.history]))
    assert np.all(moves > 1e-3)
    iters = [r["inner_iter"] for r in result.history]
    assert all(k < 0.7 * iters[0] for k in iters[1:])
    cg_iters = [r["cg_iter"] for r in result.history]
    assert all(k < cg_iters[0] for k in cg_iters[1:])


@pytest.mark.parametrize("method", ["cg", "shine-opa"])
def test_warm_start_memory(cancer, cancer_optimum, method, monkeypatch):
    inner, outer = cancer
    best_value = cancer_optimum[1]
    calls = []
    original = hoag_shine.outer.hypergradient

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(hoag_shine.outer, "hypergradient", spy)
    result = solve_bilevel(
        inner,
        outer,
        -5.0,
        method=method,
        optimizer="hoag",
        trust_radius=None,
        max_iter=30,
        warm_start_memory=True,
    )
    check_history(result, 30)
    check_hoag_rule(result.history)
    assert abs(result.value - best_value) <= 0.01 * best_value
    assert "memory" not in calls[0]
    # later solves get the memory of the current point, tagged with its log_alpha
    assert len(calls) == result.n_iter + result.n_final_evaluations
    current = result.history[0]
    for kwargs, record in zip(calls[1 : result.n_iter], result.history[1:], strict=True):
        assert kwargs["memory"] is not None
        assert float(kwargs["memory_log_alpha"]) == current["log_alpha"]
        np.testing.assert_array_equal(kwargs["coef0"].shape, (inner.n_params,))
        if record["accepted"]:
            current = record


# --------------------------------------------------------------------------------------------
# ToleranceSchedule and argument validation
# --------------------------------------------------------------------------------------------
def test_tolerance_schedule_values():
    exp = ToleranceSchedule("exponential", initial=1e-2, rate=0.5)
    assert [exp(k) for k in range(4)] == pytest.approx([1e-2, 5e-3, 2.5e-3, 1.25e-3], rel=1e-14)
    quad = ToleranceSchedule("quadratic", initial=1e-2)
    assert [quad(k) for k in range(3)] == pytest.approx([1e-2, 1e-2 / 4, 1e-2 / 9], rel=1e-14)
    cubic = ToleranceSchedule("cubic", initial=1e-2)
    assert [cubic(k) for k in range(3)] == pytest.approx([1e-2, 1e-2 / 8, 1e-2 / 27], rel=1e-14)
    const = ToleranceSchedule("constant", initial=3e-4)
    assert {const(k) for k in range(10)} == {3e-4}
    floored = ToleranceSchedule("exponential", initial=1e-3, rate=0.1, floor=2e-6)
    assert floored(2) == pytest.approx(1e-5, rel=1e-14)
    assert floored(3) == 2e-6 and floored(50) == 2e-6
    assert ToleranceSchedule("cubic", initial=1.0, floor=1e-3)(100) == 1e-3
    default = ToleranceSchedule()
    assert default.kind == "exponential" and default(0) == 1e-3


def test_tolerance_schedule_default_for():
    assert ToleranceSchedule.default_for("cg").rate == 0.9
    assert ToleranceSchedule.default_for("jacobian-free").rate == 0.9
    for method in ("shine", "shine-opa", "shine-refine"):
        assert ToleranceSchedule.default_for(method).rate == 0.78
    assert ToleranceSchedule.default_for("cg").initial == 1e-3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "linear"},
        {"initial": 0.0},
        {"initial": -1e-3},
        {"rate": 0.0},
        {"rate": 1.5},
        {"floor": 0.0},
    ],
)
def test_tolerance_schedule_invalid(kwargs):
    with pytest.raises(ValueError):
        ToleranceSchedule(**kwargs)


def test_solve_bilevel_invalid_arguments(cancer):
    inner, outer = cancer
    with pytest.raises(ValueError, match="optimizer"):
        solve_bilevel(inner, outer, 0.0, optimizer="lbfgs")
    with pytest.raises(ValueError, match="Unknown hypergradient method"):
        solve_bilevel(inner, outer, 0.0, method="exact")
    for bounds in [(1.0, 1.0), (2.0, -2.0)]:
        with pytest.raises(ValueError, match="bounds"):
            solve_bilevel(inner, outer, 0.0, bounds=bounds)
    with pytest.raises(ValueError, match="max_iter"):
        solve_bilevel(inner, outer, 0.0, max_iter=0)
    with pytest.raises(ValueError, match="step_size"):
        solve_bilevel(inner, outer, 0.0, step_size=-1.0)
    with pytest.raises(ValueError, match="finite"):
        solve_bilevel(inner, outer, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="single log_alpha"):
            solve_bilevel(inner, outer, np.zeros(3))


def test_early_stopping_counts_iterations_without_progress(cancer):
    inner, outer = cancer

    # HOAG's steps: the secant search would also stop on its bracket's predicted decrease.
    def search(**options):
        return solve_bilevel(
            inner, outer, 0.0, method="cg", optimizer="hoag", max_iter=12, **options
        )

    full = search()
    # With outer_tol=1 no decrease counts as progress: stop after exactly n_iter_no_change trials.
    stopped = search(n_iter_no_change=3, outer_tol=1.0)
    assert stopped.n_iter == 4
    assert "no relative decrease" in stopped.message
    # The path up to the stop is the full run's.
    for a, b in zip(stopped.history, full.history[:4], strict=True):
        assert a["log_alpha"] == b["log_alpha"] and a["outer_loss"] == b["outer_loss"]
    # The counter restarts on progress: find where the full run's best stalls for 2 iterations.
    best, stall, expected = np.inf, 0, None
    for k, record in enumerate(full.history):
        if record["outer_loss"] < best - 1e-4 * abs(best):
            stall = 0
        elif k > 0:
            stall += 1
        best = min(best, record["outer_loss"])
        if stall == 2:
            expected = k + 1
            break
    patient = search(n_iter_no_change=2, outer_tol=1e-4)
    assert patient.n_iter == (expected if expected is not None else full.n_iter)
    with pytest.raises(ValueError, match="n_iter_no_change"):
        solve_bilevel(inner, outer, 0.0, n_iter_no_change=0)
    with pytest.raises(ValueError, match="outer_tol"):
        solve_bilevel(inner, outer, 0.0, outer_tol=-1.0)


@pytest.mark.parametrize(
    ("offset", "expected"),
    [(-3.0, "upper bound"), (2.0, "lower bound"), (None, None)],
)
def test_warning_when_the_search_ends_on_a_bound(cancer, cancer_optimum, offset, expected):
    inner, outer = cancer
    optimum = cancer_optimum[0]
    # The interval lies below the optimum (its upper bound is the best point), above it, or
    # around it.
    bounds = (optimum - 2.0, optimum + 2.0) if offset is None else (optimum + offset,) * 2
    if offset is not None:
        bounds = (bounds[0], bounds[0] + 1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = solve_bilevel(
            inner, outer, float(np.mean(bounds)), method="cg", max_iter=15, bounds=bounds
        )
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    at_bound = [m for m in messages if "ended on the bounds" in m]
    if expected is None:
        assert not at_bound
        assert bounds[0] < float(result.log_alpha) < bounds[1]
    else:
        assert len(at_bound) == 1 and expected in at_bound[0]
        edge = bounds[1] if expected == "upper bound" else bounds[0]
        assert float(result.log_alpha) == edge


# --------------------------------------------------------------------------------------------
# The secant search (the default for a scalar log_alpha)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("start", [-5.0, 4.0])
def test_secant_search_finds_the_minimizer(cancer, cancer_optimum, method, start):
    """From either side of the minimizer: a bracket narrower than xtol = 0.1 or one whose
    secant model promises less than outer_tol, at a held-out loss (evaluated again tightly)
    within 1% of the grid-and-scalar-search optimum's, in far fewer evaluations than HOAG's
    30."""
    inner, outer = cancer
    _, best_value, value = cancer_optimum
    result = solve_bilevel(inner, outer, start, method=method, max_iter=30)
    check_history(result, 30)
    assert result.message.startswith(("bracket narrower than xtol", "bracket's predicted"))
    assert result.n_iter <= 15
    # Near the minimizer the loss is flat: a loss within 1% is the criterion; the position is
    # checked against the bracket it ends in, twice its width for the minimizer's own error.
    if method in ("cg", "shine-opa", "shine-refine"):
        assert value(result.log_alpha) <= 1.01 * best_value
    else:  # estimates without an accuracy guarantee (see test_hypergradients.py)
        assert value(result.log_alpha) < value(start)


def test_secant_search_never_wanders(cancer):
    """Every trial lies one (growing) step beyond the best point so far, or inside the interval
    spanned by the points already evaluated: the search cannot jump away from what it found."""
    inner, outer = cancer
    result = solve_bilevel(inner, outer, -5.0, method="shine-opa", max_iter=30)
    history = result.history
    for k in range(1, len(history)):
        points = [float(r["log_alpha"]) for r in history[:k]]
        losses = [r["outer_loss"] for r in history[:k]]
        best = points[int(np.argmin(losses))]
        trial = float(history[k]["log_alpha"])
        inside = min(points) < trial < max(points)
        # the expansion step at most quadruples the last move (1 at first)
        moves = [abs(b - a) for a, b in itertools.pairwise(points)] or [1.0]
        assert inside or abs(trial - best) <= 4 * max(moves) + 1e-12


def test_secant_search_on_separable_data_goes_to_the_bound():
    """Separable classes: the held-out loss decreases with C all the way (no penalty is best),
    so the expansion grows its steps to the bound in a few evaluations, where HOAG's 1/L steps
    take tens. There the loss is ~0 (1e-30 and below) and its hypergradient round-off, so the
    search may stop on the bound (and warn) or in a last bracket anywhere in that region, whose
    secant model promises nothing (where depends on the round-off: from -23.9 to -25 on
    OpenBLAS's kernels); what counts is that its loss is below what counts as progress,
    ``outer_tol = 1e-4`` times the first loss, and that no point it found was lower by as
    much."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 2))
    y = (X @ np.array([3.0, -2.0]) > 0).astype(int)
    inner = LogisticRegressionProblem(X[:1500], y[:1500])
    outer = HeldOutLogLoss(X[1500:], y[1500:])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = solve_bilevel(inner, outer, 0.0, method="cg", max_iter=30)
    reached = next(k for k, r in enumerate(result.history) if r["log_alpha"] == -25.0)
    assert reached <= 7  # steps 1, then growing
    progress = 1e-4 * result.history[0]["outer_loss"]
    assert result.value < progress
    assert result.value - min(r["outer_loss"] for r in result.history) < progress
    warned = any(issubclass(w.category, SearchBoundWarning) for w in caught)
    assert warned == (float(result.log_alpha) == -25.0 and float(result.grad) > 0)


def test_secant_search_needs_a_scalar(cancer_data):
    X, y = cancer_data
    inner = LogisticRegressionProblem(X[:300], y[:300], per_feature=True)
    outer = HeldOutLogLoss(X[300:], y[300:])
    with pytest.raises(ValueError, match="scalar log_alpha"):
        solve_bilevel(inner, outer, np.zeros(X.shape[1]), optimizer="secant")
    auto = solve_bilevel(inner, outer, np.zeros(X.shape[1]), max_iter=3)  # "auto": HOAG
    assert auto.n_iter == 3


def test_trust_radius_keeps_hoag_near_the_best_point(cancer):
    """A huge HOAG step is clipped to the box of half-width trust_radius around the best
    point (not only to the bounds)."""
    inner, outer = cancer
    result = solve_bilevel(
        inner, outer, -5.0, method="cg", optimizer="hoag", step_size=1e4, max_iter=6
    )
    losses = [r["outer_loss"] for r in result.history]
    for k in range(1, len(result.history)):
        best = result.history[int(np.argmin(losses[:k]))]["log_alpha"]
        assert abs(result.history[k]["log_alpha"] - best) <= 2.0 + 1e-12
    with pytest.raises(ValueError, match="trust_radius"):
        solve_bilevel(inner, outer, 0.0, trust_radius=0.0)


def test_path_prediction_cuts_inner_iterations(cancer):
    """Warm starts predicted along the path of solutions (the secant of the two nearest
    evaluated points) against plain warm starts from the last solution, on the same search."""
    inner, outer = cancer
    options = dict(method="cg", max_iter=10, tol_schedule=ToleranceSchedule(initial=1e-8))
    predicted = solve_bilevel(inner, outer, -5.0, **options)
    plain = solve_bilevel(inner, outer, -5.0, predict_path=False, **options)
    assert [r["log_alpha"] for r in predicted.history[:3]] == pytest.approx(
        [r["log_alpha"] for r in plain.history[:3]], rel=1e-6
    )
    iterations = [sum(r["inner_iter"] for r in res.history[2:]) for res in (predicted, plain)]
    assert iterations[0] < iterations[1]


def test_path_prediction_interpolates_the_nearest_points():
    from hoag_shine.outer import _predicted_start

    path = [
        (np.array(0.0), [np.array([0.0, 0.0])], [np.array([1.0])]),
        (np.array(1.0), [np.array([1.0, 2.0])], [np.array([3.0])]),
        (np.array(5.0), [np.array([9.0, 9.0])], [np.array([9.0])]),
    ]
    coefs, adjoints, tangents = _predicted_start(path, 0.25)  # between the nearest: 0 and 1
    np.testing.assert_allclose(coefs[0], [0.25, 0.5])
    np.testing.assert_allclose(adjoints[0], [1.5])
    np.testing.assert_allclose(tangents[0], [1.0, 2.0])  # the secant's slope dw/dlog_alpha
    coefs, _, _ = _predicted_start(path, -10.0)  # far beyond: extrapolation capped at one step
    np.testing.assert_allclose(coefs[0], [-1.0, -2.0])
    assert _predicted_start(path[:1], 0.5) is None
    # Two close points on one side and a far one on the other: interpolate between the nearest
    # and the far one rather than extrapolate the close pair's difference.
    path = [
        (np.array(0.0), [np.array([0.0])], [np.array([0.0])]),
        (np.array(0.1), [np.array([1.0])], [np.array([1.0])]),
        (np.array(1.0), [np.array([2.0])], [np.array([2.0])]),
    ]
    coefs, _, tangents = _predicted_start(path, 0.3)  # nearest 0.1; 0.3 between 0.1 and 1.0
    np.testing.assert_allclose(coefs[0], [1.0 + (0.2 / 0.9) * 1.0])
    np.testing.assert_allclose(tangents[0], [1.0 / 0.9])


def test_worse_than_uses_both_errors():
    from hoag_shine.outer import _Evaluation

    a = _Evaluation(np.array(0.0), 1.00, np.array(0.0), [], 1e-3, error=0.02)
    b = _Evaluation(np.array(1.0), 1.03, np.array(0.0), [], 1e-3, error=0.02)
    assert not b.worse_than(a)  # 0.03 apart, within 0.04 of errors
    b.error = 0.005
    assert b.worse_than(a)  # beyond 0.025
    assert not b.worse_than(a, slack=0.01)


def test_secant_zoom_crosses_the_zero_after_a_slow_step():
    """Regula falsi keeps one end: after a step that did not halve the bracket, the zoom steps
    twice as far from the best point as the slopes' secant puts the zero (so the trial lands
    beyond the zero and moves the other end), still inside the middle 80% of the bracket; after
    two such steps in a row it bisects."""
    from hoag_shine.outer import _Bracketing, _Evaluation

    def point(x, slope):
        return _Evaluation(np.array(x), 0.0, np.array(slope), [], 1e-3)

    search = _Bracketing(step=1.0, low=-25.0, high=25.0, xtol=0.1)
    best, search.other = point(-5.0, 4e-3), point(-9.0, -2.8e-2)
    first = float(search.propose(best))  # first zoom step: the plain secant
    assert first == pytest.approx(-5.0 - 4e-3 * (-4.0) / (-2.8e-2 - 4e-3))
    best = point(first, 1.5e-3)  # it kept the far end: the bracket did not halve
    secant = first - 1.5e-3 * (-9.0 - first) / (-2.8e-2 - 1.5e-3)
    doubled = float(search.propose(best))
    assert doubled == pytest.approx(first + 2.0 * (secant - first))
    # A second slow step in a row (a wrong slope can make every secant step slow): bisect.
    search.other = point(-9.0 + 0.05 * (doubled + 9.0), -2.0e-2)  # shrank by 5% only
    assert float(search.propose(best)) == pytest.approx(
        0.5 * (first + float(search.other.log_alpha))
    )
    # A step that halved the bracket is followed by the plain secant again.
    best, search.other = point(-5.7, 1e-3), point(-5.9, -3e-3)
    assert float(search.propose(best)) == pytest.approx(-5.75)


def test_secant_search_stops_when_the_bracket_promises_less_than_outer_tol():
    """With ``g`` the best point's slope and ``h`` the secant curvature of the bracket's end
    slopes, the model's minimum lies ``g^2 / 2h`` below the best point: the search stops when
    that is below ``ftol`` times the best loss, and goes on just above it."""
    from hoag_shine.outer import _Bracketing, _Evaluation

    loss = 0.09
    other = _Evaluation(np.array(-5.0), loss + 1e-3, np.array(4e-3), [], 1e-3)
    curvature = (4e-3 + 2e-4) / 1.0  # slopes 4e-3 at -5 and -2e-4 at -6 (log_alpha)
    decrease = 0.5 * 2e-4**2 / curvature
    for ftol, stops in [(1.01 * decrease / loss, True), (0.99 * decrease / loss, False)]:
        search = _Bracketing(step=1.0, low=-25.0, high=25.0, xtol=0.1, ftol=ftol)
        best = _Evaluation(np.array(-6.0), loss, np.array(-2e-4), [], 1e-3)
        search.other = other
        proposal = search.propose(best)
        assert (proposal is None) == stops
        if stops:
            assert search.message.startswith("bracket's predicted decrease below outer_tol")
        else:
            assert -6.0 < float(proposal) < -5.0
    # Slopes of one sign (a bracket closed by a rise of the loss), or slopes whose secant
    # curves down (inexact slopes around a maximum): no model, no stop.
    for slope_b, slope_a in [(1e-3, 2e-4), (-4e-3, 2e-4)]:
        search = _Bracketing(step=1.0, low=-25.0, high=25.0, xtol=0.1, ftol=1.0)
        search.other = _Evaluation(np.array(-5.0), loss + 1e-3, np.array(slope_b), [], 1e-3)
        best = _Evaluation(np.array(-6.0), loss, np.array(slope_a), [], 1e-3)
        assert search.propose(best) is not None


def test_model_stop_first_measures_a_loosely_solved_best_point_again():
    """The model stop trusts the sign of the best point's slope. A best point solved at more
    than ten times the tolerance the search's rule asks for there, with a loss error above
    ftol times the loss, is evaluated again first (once); when its slope then leads away from
    the other end, the bracket is dropped and the expansion resumes from it with the first
    step. The 20news case: SHINE-OPA's point at -5, solved at 6e-4 with a small slope of the
    wrong sign and a loss error of 3.5e-3, closed a bracket with -1."""
    from hoag_shine.outer import _Bracketing, _Evaluation

    def point(x, value, slope, tol, error=3.5e-3):
        return _Evaluation(np.array(x), value, np.array(slope), [], tol, error)

    def stopped_search():
        search = _Bracketing(step=4.0, low=-25.0, high=25.0, xtol=0.1, ftol=1e-4, min_step=1.0)
        search.other = point(-1.0, 0.22, 6.5e-2, 8e-4)
        best = point(-5.0, 0.112, -1e-5, 6e-4)
        assert search.propose(best) is None and search.model_stop
        return search, best

    search, best = stopped_search()
    assert not search.needs_remeasure(best, required_tol=6.1e-5)  # within ten times: stop
    assert search.needs_remeasure(best, required_tol=5.9e-5)
    # A loss known to ftol: its slope's sign is trusted (the estimator on 20news seed 4).
    best.error = 0.99e-4 * 0.112
    assert not search.needs_remeasure(best, required_tol=1e-9)
    best.error = 1.01e-4 * 0.112
    assert search.needs_remeasure(best, required_tol=5.9e-5)
    # Measured again: the slope is positive, leading away from the other end (at -1).
    again = point(-5.0, 0.109, 3.5e-3, 5.9e-5)
    assert search.remeasured(again)
    assert search.other is None and search.step == 1.0
    assert float(search.propose(again)) == pytest.approx(-6.0)  # the expansion goes on
    # Once per point: a second model stop at the same point is taken.
    search.other = point(-6.0, 0.1095, -3e-3, 5e-5)
    flat = point(-5.0, 0.109, 1e-5, 5.9e-5)
    assert search.propose(flat) is None and search.model_stop
    assert not search.needs_remeasure(flat, required_tol=1e-9)
    # A slope that still leads toward the other end keeps the bracket.
    search, best = stopped_search()
    assert search.needs_remeasure(best, required_tol=1e-6)
    kept = point(-5.0, 0.109, -2e-6, 1e-6)
    assert search.remeasured(kept) and search.other is not None
    # Other stops (here a bracket narrower than xtol) never measure again.
    search.other = point(-5.05, 0.1095, 1e-3, 1e-3)
    assert search.propose(kept) is None and not search.model_stop
    assert not search.needs_remeasure(kept, required_tol=1e-12)


def test_expansion_is_cautious_only_when_the_slope_heads_for_a_zero():
    """The step after a move of 4 that cut the slope 15-fold: at least the last move (4) when
    log |slope| fell at the same rate as before (a tail), the first step (1) when the rate grew
    1.5-fold and the secant promises a decrease that counts, the last move when it promises
    less than ``ftol`` times the first loss (a loss already at its floor)."""
    from hoag_shine.outer import _Bracketing, _Evaluation

    def point(x, value, slope):
        return _Evaluation(np.array(x), value, np.array(slope), [], 1e-3)

    def step_after(previous_rate, loss_scale, ftol=1e-4):
        search = _Bracketing(
            step=4.0, low=-25.0, high=25.0, xtol=0.1, ftol=ftol, min_step=1.0, loss_scale=loss_scale
        )
        search.decay_rate = previous_rate
        # (positive slopes: the loss falls as log_alpha does)
        assert search.update(point(-1.0, 0.21, 6.5e-2), point(-5.0, 0.093, 4.5e-3))
        return search.step

    rate = np.log(6.5e-2 / 4.5e-3) / 4.0  # 0.67 per unit of log_alpha
    to_zero = 4.5e-3 * 4.0 / (6.5e-2 - 4.5e-3)  # 0.3: the secant's zero beyond -5
    assert step_after(previous_rate=rate, loss_scale=0.29) == 4.0  # steady rate: a tail
    assert step_after(previous_rate=None, loss_scale=0.29) == 4.0  # no rate known yet
    assert step_after(previous_rate=rate / 1.6, loss_scale=0.29) == 1.0  # toward a zero
    promised = 0.5 * 4.5e-3 * to_zero
    assert step_after(rate / 1.6, loss_scale=1.01 * promised / 1e-4) == 4.0  # nothing counts
    assert step_after(rate / 1.6, loss_scale=0.99 * promised / 1e-4) == 1.0
    # A looser stop (the estimator's outer_tol=1e-3) does not make the same minimum ahead
    # count less: the threshold is at most 1e-4 of the first loss.
    assert step_after(rate / 1.6, loss_scale=0.99 * promised / 1e-4, ftol=1e-3) == 1.0
    assert step_after(rate / 1.6, loss_scale=1.01 * promised / 1e-4, ftol=1e-3) == 4.0
    assert step_after(rate / 1.6, loss_scale=0.99 * promised / 1e-5, ftol=1e-5) == 1.0
    assert step_after(rate / 1.6, loss_scale=1.01 * promised / 1e-5, ftol=1e-5) == 4.0
