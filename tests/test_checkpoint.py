"""Checkpoints of :func:`hoag_shine.solve_bilevel`: written at every outer iteration, resumed.

A search resumed from its checkpoint must follow the path of the uninterrupted search exactly
(bitwise, wall times apart), whether it was stopped by ``max_iter``, interrupted, or killed in
another process; a checkpoint of other inputs or an unreadable file raises a ValueError.
"""

import os
import pickle
import signal
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import hoag_shine._checkpoint
from hoag_shine import solve_bilevel
from hoag_shine.criteria import HeldOutLogLoss
from hoag_shine.estimator import BilevelEstimator
from hoag_shine.problems import LogisticRegressionProblem

N_ITER = 8


def cancer_folds(n_folds=2, flip_label=None, backend="numpy"):
    """Two folds of standardized breast_cancer (logistic, intercept); ``flip_label``: the
    index of a sample whose label is flipped (other data)."""
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    if flip_label is not None:
        y = y.copy()
        y[flip_label] = 1 - y[flip_label]
    parts = np.array_split(np.random.RandomState(0).permutation(len(y)), n_folds)
    if backend == "torch":
        from hoag_shine.backends import TorchHeldOutLogLoss as Criterion
        from hoag_shine.backends import TorchLogisticRegressionProblem as Problem
    else:
        Problem, Criterion = LogisticRegressionProblem, HeldOutLogLoss
    inners, outers = [], []
    for k, val in enumerate(parts):
        train = np.concatenate([p for j, p in enumerate(parts) if j != k])
        inners.append(Problem(X[train], y[train], fit_intercept=True))
        outers.append(Criterion(X[val], y[val]))
    return inners, outers


def search(checkpoint=None, *, max_iter=N_ITER, kill_at=None, folds=None, **options):
    """The search of these tests; ``kill_at``: SIGKILL this process after that iteration."""
    inners, outers = folds if folds is not None else cancer_folds()
    callback = options.pop("callback", None)
    if kill_at is not None:

        def callback(entry):
            if entry["iteration"] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    options.setdefault("log_alpha0", 1.0)
    # Eight full iterations: the secant search (the default) would stop on its bracket first.
    options.setdefault("xtol", 0.0)
    options.setdefault("outer_tol", 0.0)
    return solve_bilevel(
        inners, outers, max_iter=max_iter, checkpoint=checkpoint, callback=callback, **options
    )


def bits(history) -> list:
    """A history with exact float bit patterns, wall times left out."""

    def exact(value):
        if isinstance(value, float):
            return value.hex()
        if isinstance(value, np.ndarray | np.generic):
            return (value.dtype.str, np.shape(value), value.tobytes())
        return value

    return [
        {key: exact(v) for key, v in record.items() if not key.startswith("time")}
        for record in history
    ]


def assert_same_search(result, reference):
    assert bits(result.history) == bits(reference.history)
    assert result.message == reference.message
    assert result.n_final_evaluations == reference.n_final_evaluations
    assert np.asarray(result.log_alpha).tobytes() == np.asarray(reference.log_alpha).tobytes()
    assert result.value == reference.value
    assert np.asarray(result.grad).tobytes() == np.asarray(reference.grad).tobytes()
    for a, b in zip(result.coef, reference.coef, strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    times = [record["time"] for record in result.history]
    assert times == sorted(times)


def saved_history(path) -> list:
    with open(path, "rb") as file:
        return pickle.load(file)["state"].history


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted search (no checkpoint)."""
    result = search()
    assert result.n_iter == N_ITER
    return result


# --------------------------------------------------------------------------------------------
# Resuming gives the uninterrupted path
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "optimizer"),
    [
        ("shine-opa", "secant"),
        ("cg", "secant"),
        ("shine-opa", "hoag"),
        ("cg", "hoag"),
        ("shine", "adam"),
        ("jacobian-free", "gd"),
    ],
)
def test_resumed_search_follows_the_uninterrupted_path(tmp_path, method, optimizer):
    options = {"method": method, "optimizer": optimizer}
    if optimizer == "gd":
        options["step_size"] = 0.5
    uninterrupted = search(**options)
    path = tmp_path / "search.ckpt"
    first = search(path, max_iter=3, **options)
    assert first.n_iter == 3 and len(saved_history(path)) == 3
    seen = []
    resumed = search(path, callback=lambda entry: seen.append(entry["iteration"]), **options)
    assert seen == list(range(3, N_ITER))  # it went on from the checkpoint
    assert_same_search(resumed, uninterrupted)
    assert len(saved_history(path)) == N_ITER
    # A finished search resumed again ends at once, with the same result.
    assert_same_search(search(path, callback=seen.append, **options), uninterrupted)
    assert len(seen) == N_ITER - 3


def test_checkpoint_is_written_before_each_callback(tmp_path):
    path = tmp_path / "search.ckpt"
    lengths = []

    def callback(entry):
        lengths.append((entry["iteration"], len(saved_history(path))))

    search(path, callback=callback)
    assert lengths == [(k, k + 1) for k in range(N_ITER)]


def test_a_finished_search_can_be_extended(tmp_path, reference):
    """max_iter is not part of the fingerprint: a search of 5 iterations resumed with 8."""
    path = tmp_path / "search.ckpt"
    search(path, max_iter=5)
    assert_same_search(search(path), reference)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_search_killed_in_a_subprocess_resumes(tmp_path, reference):
    """A search killed by SIGKILL (no cleanup at all) after its iteration 3 resumes from the
    checkpoint written at that iteration and ends as the uninterrupted one."""
    path = tmp_path / "search.ckpt"
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
        f"import test_checkpoint; test_checkpoint.search({str(path)!r}, kill_at=3)"
    )
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()
    assert len(saved_history(path)) == 4
    seen = []
    resumed = search(path, callback=lambda entry: seen.append(entry["iteration"]))
    assert seen == list(range(4, N_ITER))
    assert_same_search(resumed, reference)


def test_interrupt_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch, reference):
    """A KeyboardInterrupt between writing the temporary file and renaming it (the worst
    moment): the previous checkpoint is intact, the temporary file is removed, and the
    search resumes from the previous iteration."""
    path = tmp_path / "search.ckpt"
    replace = os.replace
    calls = []

    def interrupted_replace(src, dst):
        calls.append(src)
        if len(calls) == 3:
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(hoag_shine._checkpoint.os, "replace", interrupted_replace)
    with pytest.warns(RuntimeWarning, match="interrupted"):
        result = search(path)
    monkeypatch.undo()
    assert result.interrupted and result.n_iter == 3
    assert sorted(os.listdir(tmp_path)) == ["search.ckpt"]
    assert len(saved_history(path)) == 2
    assert_same_search(search(path), reference)


def test_stale_temporary_file_is_ignored(tmp_path, reference):
    """A process killed while writing leaves its temporary file; it does not matter."""
    path = tmp_path / "search.ckpt"
    search(path, max_iter=2)
    (tmp_path / "search.ckpt.x1y2z3.tmp").write_bytes(b"\x80\x05partial")
    assert_same_search(search(path), reference)


# --------------------------------------------------------------------------------------------
# Checkpoints of other searches, unreadable files
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "match"),
    [
        # The flipped label is in fold 0's training part and fold 1's validation part.
        ({"folds": "flip"}, "inner problem of fold 0; the data of the outer criterion of fold 1"),
        ({"folds": "three"}, "the number of folds"),
        ({"method": "cg"}, r"method \('shine-opa' in the checkpoint, 'cg' now\)"),
        ({"log_alpha0": 0.0}, "log_alpha0"),
        ({"tol_schedule": hoag_shine.ToleranceSchedule(rate=0.5)}, "tol_schedule"),
        ({"hypergradient_options": {"safeguard": False}}, "hypergradient_options"),
    ],
)
def test_checkpoint_of_another_search_is_refused(tmp_path, change, match):
    path = tmp_path / "search.ckpt"
    search(path, max_iter=2, method="shine-opa")
    before = path.read_bytes()
    change = dict(change)
    folds = change.pop("folds", None)
    if folds == "flip":
        permutation = np.random.RandomState(0).permutation(569)  # as in cancer_folds
        change["folds"] = cancer_folds(flip_label=int(np.array_split(permutation, 2)[1][0]))
    elif folds == "three":
        change["folds"] = cancer_folds(n_folds=3)
    options = {"method": "shine-opa", **change}
    with pytest.raises(ValueError, match=match):
        search(path, **options)
    assert path.read_bytes() == before  # not overwritten


@pytest.mark.parametrize("content", ["garbage", "truncated", "other pickle"])
def test_unreadable_checkpoint_raises(tmp_path, content):
    path = tmp_path / "search.ckpt"
    if content == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif content == "truncated":
        search(path, max_iter=2)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(pickle.dumps({"a": 1}))
    match = "not a checkpoint" if content == "other pickle" else "Cannot read the checkpoint"
    with pytest.raises(ValueError, match=match):
        search(path)


# --------------------------------------------------------------------------------------------
# Torch tensors and the estimator
# --------------------------------------------------------------------------------------------
def test_torch_search_resumes_with_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    folds = cancer_folds(backend="torch")
    uninterrupted = search(folds=folds, max_iter=5)
    path = tmp_path / "search.ckpt"
    search(path, folds=folds, max_iter=2)
    with open(path, "rb") as file:
        raw = file.read()
    assert b"torch._utils" not in raw  # tensors are stored as numpy arrays
    state = pickle.loads(raw)["state"]
    assert isinstance(state.warm[0]["coef0"], torch.Tensor)
    assert state.warm[0]["coef0"].dtype == torch.float64
    resumed = search(path, folds=folds, max_iter=5)
    assert_same_search(resumed, uninterrupted)


def test_estimator_with_checkpoint_resumes(tmp_path):
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)

    def fit(max_outer_iter, checkpoint=None, random_state=0):
        est = BilevelEstimator(
            LogisticRegression(),
            cv=3,
            max_outer_iter=max_outer_iter,
            random_state=random_state,
            checkpoint=checkpoint,
            outer_tol=0.0,  # no stop on the bracket's model: a search longer than the cut
        )
        return est.fit(X, y)

    reference = fit(6)
    assert reference.n_outer_iter_ > 3  # (the secant search may stop on its bracket at 5)
    path = tmp_path / "estimator.ckpt"
    assert fit(3, path).n_outer_iter_ == 3
    resumed = fit(6, str(path))
    assert bits(resumed.history_) == bits(reference.history_)
    assert resumed.best_log_alpha_ == reference.best_log_alpha_
    assert resumed.best_estimator_.coef_.tobytes() == reference.best_estimator_.coef_.tobytes()
    with pytest.raises(ValueError, match="fold 0"):  # other shuffled folds
        fit(6, path, random_state=1)
