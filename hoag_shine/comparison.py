"""Tuning methods side by side: held-out test loss against wall time (SHINE's Fig. 1).

Each *competitor* tunes the C of an L2 logistic regression on one train / validation / test split
(:func:`~hoag_shine.datasets.make_splits`) and reports the test log-loss it reaches and when:

- ``estimator``: the default :class:`~hoag_shine.BilevelEstimator` (fit, refit included);
- ``cg``, ``shine``, ``shine-opa``, ``shine-refine``, ``jacobian-free``: :func:`~hoag_shine.
  solve_bilevel` with that hypergradient (its default outer search), a curve with one point
  per outer iteration: the test loss of the best point so far on the validation loss (the
  point a user would take if the search stopped there, as grid and random search are credited
  with their best-on-validation point), and a last point, after the search's final choice,
  with its result; each point also records the evaluation's inner iterations, gradient
  evaluations, Hessian-vector products and CG iterations;
- ``lrcv``: ``LogisticRegressionCV`` with 30 values of C on the same validation split,
  ``tol=1e-6`` (with scikit-learn's default ``tol=1e-4`` the fits at large C stop early and its
  choice is poor on 20news; that run is ``lrcv-default``);
- ``grid`` and ``random``: the fits ``GridSearchCV`` and ``RandomizedSearchCV`` make (one
  ``LogisticRegression`` per C on the training part, scored on the validation part), run one
  after the other so that they give curves: the test loss of the best C so far;
- ``optuna``: Optuna's TPE sampler on log C, the same fits (when optuna is installed).

Every (competitor, seed) runs in its own fresh process with BLAS and OpenMP pinned to one thread;
time spent computing test losses for the curves is not counted. :func:`run_comparison` returns
(and :func:`save_comparison` writes) every curve, a summary with medians over seeds and the ratios
the project tracks, and a plot.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import multiprocessing
import os
import platform
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "COMPETITORS",
    "GRADIENT_COMPETITORS",
    "format_summary",
    "plot_comparison",
    "run_comparison",
    "run_one",
    "save_comparison",
    "summarize",
]

#: Competitors that give one point per outer iteration (hypergradient methods).
GRADIENT_COMPETITORS = ("cg", "shine", "shine-opa", "shine-refine", "jacobian-free")
#: Every competitor :func:`run_one` knows.
COMPETITORS = (
    "estimator",
    *GRADIENT_COMPETITORS,
    "lrcv",
    "lrcv-default",
    "grid",
    "random",
    "optuna",
)
_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
#: Competitors whose final model is refit on training plus validation.
REFIT_COMPETITORS = ("estimator", "lrcv", "lrcv-default")
#: The grid of C of ``lrcv``, ``grid`` and the range of ``random`` and ``optuna``.
C_RANGE = (1e-4, 1e4)
_SEARCH_TOL = 1e-6


def _split(dataset: str, seed: int, data_home, download_if_missing: bool) -> dict[str, Any]:
    from .datasets import split_dataset

    data = split_dataset(
        dataset, seed, data_home=data_home, download_if_missing=download_if_missing
    )
    n_classes = len(np.unique(np.concatenate([data["y_train"], data["y_val"], data["y_test"]])))
    if n_classes != 2:
        raise ValueError(f"The comparison needs two classes; {dataset} has {n_classes}.")
    return data


def _train_and_validation(data):
    """Training and validation parts stacked, with the one split sklearn's ``cv`` accepts."""
    import scipy.sparse as sp

    stack = sp.vstack if sp.issparse(data["X_train"]) else np.vstack
    X = stack([data["X_train"], data["X_val"]])
    if sp.issparse(X):
        X = X.tocsr()
    y = np.concatenate([data["y_train"], data["y_val"]])
    n_train = data["X_train"].shape[0]
    return X, y, [(np.arange(n_train), np.arange(n_train, X.shape[0]))]


class _LastCoefCriterion:
    """Delegates to a held-out criterion and remembers the last coefficients it was given."""

    def __init__(self, criterion):
        self._criterion = criterion
        self.last_coef = None

    def __getattr__(self, name):
        return getattr(self._criterion, name)

    def value(self, w):
        self.last_coef = w
        return self._criterion.value(w)

    def grad(self, w):
        self.last_coef = w
        return self._criterion.grad(w)

    def value_and_grad(self, w):
        self.last_coef = w
        return self._criterion.value_and_grad(w)


class _Curve:
    """Points (time, C, validation loss, test loss), with the clock paused while recording."""

    def __init__(self):
        self.start = time.perf_counter()
        self.paused = 0.0
        self.points: list[dict[str, float]] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.paused

    def add(self, C, validation_loss, test_loss_fn, at=None):
        at = self.elapsed() if at is None else at
        began = time.perf_counter()
        point = {"time": at, "C": float(C), "val_loss": float(validation_loss)}
        point["test_loss"] = float(test_loss_fn())
        self.points.append(point)
        self.paused += time.perf_counter() - began


#: Per-evaluation counts recorded with each point of a gradient method's curve.
_COUNTS = (
    "inner_iter",
    "n_fun_evals",
    "n_opa_evals",
    "n_hvp",
    "cg_iter",
    "inner_tol",
    "time_inner",
    "time_backward",
)


def _run_gradient(method, data, window, max_iter):
    from .criteria import HeldOutLogLoss
    from .outer import solve_bilevel
    from .problems import LogisticRegressionProblem

    curve = _Curve()  # building the problems (a transposed copy of X) counts too
    inner = LogisticRegressionProblem(data["X_train"], data["y_train"], fit_intercept=True)
    validation = _LastCoefCriterion(
        HeldOutLogLoss(data["X_val"], data["y_val"], classes=inner.classes_)
    )
    test = HeldOutLogLoss(data["X_test"], data["y_test"], classes=inner.classes_)
    best = {"val_loss": math.inf, "C": None, "coef": None}

    def callback(record):
        # Credited with the best point so far on the validation loss, not the last trial.
        if record["outer_loss"] < best["val_loss"]:
            best.update(
                val_loss=record["outer_loss"],
                C=math.exp(-float(np.asarray(record["log_alpha"]))),
                coef=validation.last_coef,
            )
        coef = best["coef"]
        curve.add(best["C"], best["val_loss"], lambda: test.value(coef))
        curve.points[-1].update({key: record[key] for key in _COUNTS})

    result = solve_bilevel(
        inner,
        validation,
        0.0,
        method=method,
        max_iter=max_iter,
        time_budget=window,
        callback=callback,
    )
    # The search's own choice (after its final re-evaluations), at the time it is returned.
    C = math.exp(-float(np.asarray(result.log_alpha)))
    test_loss = float(test.value(result.coef[0]))
    curve.add(C, result.value, lambda: test_loss)
    return curve, {
        "C": C,
        "test_loss": test_loss,
        "n_iter": result.n_iter,
        "message": result.message,
        "inner_iter": int(sum(r["inner_iter"] for r in result.history)),
        "median_inner_iter": float(np.median([r["inner_iter"] for r in result.history])),
        # What a free backward pass could save at most (SHINE's promise): its share of the time
        "time_backward": float(sum(r["time_backward"] for r in result.history)),
        "time_inner": float(sum(r["time_inner"] for r in result.history)),
    }


def _run_estimator(data):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    from .estimator import BilevelEstimator

    X, y, cv = _train_and_validation(data)
    curve = _Curve()
    search = BilevelEstimator(LogisticRegression(), cv=cv).fit(X, y)
    elapsed = curve.elapsed()
    proba = search.predict_proba(data["X_test"])
    test_loss = log_loss(data["y_test"], proba, labels=search.classes_)
    curve.add(search.best_params_["C"], search.best_score_, lambda: test_loss, elapsed)
    return curve, {
        "C": float(search.best_params_["C"]),
        "test_loss": float(test_loss),
        "n_iter": search.n_outer_iter_,
        "message": search.stop_message_,
    }


def _run_lrcv(data, tol):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import log_loss

    X, y, cv = _train_and_validation(data)
    curve = _Curve()
    model = LogisticRegressionCV(
        Cs=np.geomspace(*C_RANGE, 30),
        cv=cv,
        scoring="neg_log_loss",
        tol=tol,
        max_iter=10_000,
        l1_ratios=(0.0,),
        use_legacy_attributes=False,
    ).fit(X, y)
    elapsed = curve.elapsed()
    test_loss = log_loss(data["y_test"], model.predict_proba(data["X_test"]), labels=model.classes_)
    curve.add(float(np.ravel(model.C_)[0]), np.nan, lambda: test_loss, elapsed)
    return curve, {"C": float(np.ravel(model.C_)[0]), "test_loss": float(test_loss), "n_iter": 30}


def _run_sequential(kind, data, seed, window, n_candidates):
    """Grid, random or TPE search: one fit per C on the training part, scored on validation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    log_low, log_high = (math.log(c) for c in C_RANGE)
    if kind == "grid":
        candidates = iter(np.geomspace(*C_RANGE, n_candidates))
        next_C = lambda trial: next(candidates)  # noqa: E731
    elif kind == "random":
        rng = np.random.default_rng(seed)
        next_C = lambda trial: math.exp(rng.uniform(log_low, log_high))  # noqa: E731
    else:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
        next_C = lambda trial: math.exp(trial.suggest_float("log_C", log_low, log_high))  # noqa: E731
    curve = _Curve()
    best = (np.inf, None, None)
    for _ in range(n_candidates):
        trial = study.ask() if kind == "optuna" else None
        C = next_C(trial)
        model = LogisticRegression(C=C, tol=_SEARCH_TOL, max_iter=10_000)
        model.fit(data["X_train"], data["y_train"])
        val_loss = log_loss(
            data["y_val"], model.predict_proba(data["X_val"]), labels=model.classes_
        )
        if kind == "optuna":
            study.tell(trial, val_loss)
        if val_loss < best[0]:
            best = (val_loss, C, model)
        best_model = best[2]
        curve.add(
            best[1],
            best[0],
            lambda m=best_model: log_loss(
                data["y_test"], m.predict_proba(data["X_test"]), labels=m.classes_
            ),
        )
        if window is not None and curve.elapsed() > window:
            break
    return curve, {
        "C": float(best[1]),
        "test_loss": curve.points[-1]["test_loss"],
        "n_iter": len(curve.points),
    }


def run_one(
    competitor: str,
    dataset: str = "breast_cancer",
    seed: int = 0,
    *,
    window: float | None = 60.0,
    max_iter: int = 30,
    data_home: str | None = None,
    download_if_missing: bool = True,
) -> dict[str, Any]:
    """Run one competitor on one split, in this process, with threads pinned to one.

    Parameters
    ----------
    competitor : str
        One of :data:`COMPETITORS`.
    dataset : str, default="breast_cancer"
        Any name :func:`~hoag_shine.datasets.load_dataset` accepts, with two classes.
    seed : int, default=0
        Seed of the split (and of random search and TPE).
    window : float or None, default=60.0
        Time limit in seconds of the searches that give curves (``None``: no limit).
    max_iter : int, default=30
        Outer iterations of the hypergradient methods, and candidates of the other searches.
    data_home : str, optional
        Passed to the loader.
    download_if_missing : bool, default=True
        Passed to the loader.

    Returns
    -------
    dict
        ``competitor``, ``seed``, ``curve`` (list of points with ``time``, ``C``,
        ``val_loss``, ``test_loss``), ``final`` (``C``, ``test_loss``, ``time``, ``n_iter``...)
        and ``skipped`` (a reason, or None).
    """
    from threadpoolctl import threadpool_limits

    if competitor not in COMPETITORS:
        raise ValueError(f"Unknown competitor {competitor!r}; choose among {COMPETITORS}.")
    out = {"competitor": competitor, "seed": seed, "dataset": dataset, "skipped": None}
    if competitor == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            return {**out, "skipped": "optuna is not installed", "curve": [], "final": None}
    data = _split(dataset, seed, data_home, download_if_missing)
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarnings of loose searches are expected
        if competitor in GRADIENT_COMPETITORS:
            curve, final = _run_gradient(competitor, data, window, max_iter)
        elif competitor == "estimator":
            curve, final = _run_estimator(data)
        elif competitor in ("lrcv", "lrcv-default"):
            curve, final = _run_lrcv(data, _SEARCH_TOL if competitor == "lrcv" else 1e-4)
        else:
            curve, final = _run_sequential(competitor, data, seed, window, max_iter)
    final["time"] = curve.points[-1]["time"]
    return {**out, "curve": curve.points, "final": final}


def _pinned_environment():
    for variable in _THREAD_VARIABLES:
        os.environ[variable] = "1"


def run_comparison(
    dataset: str = "breast_cancer",
    seeds: Sequence[int] = (0, 1, 2),
    competitors: Sequence[str] = COMPETITORS,
    *,
    window: float | None = 60.0,
    max_iter: int = 30,
    data_home: str | None = None,
    download_if_missing: bool = True,
    n_workers: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Run every competitor on every seed, each in a fresh process, and summarize.

    Parameters
    ----------
    dataset : str, default="breast_cancer"
        Dataset name or path (see :func:`~hoag_shine.datasets.load_dataset`).
    seeds : sequence of int, default=(0, 1, 2)
        Seeds of the splits.
    competitors : sequence of str, default=COMPETITORS
        Which to run.
    window : float or None, default=60.0
        Time limit of each curve, in seconds.
    max_iter : int, default=30
        Outer iterations / candidates per search.
    data_home : str, optional
        Passed to the loader.
    download_if_missing : bool, default=True
        Passed to the loader.
    n_workers : int, default=1
        Processes running at the same time. Keep 1 for timings you report: concurrent
        processes share memory bandwidth.
    progress : bool, default=False
        Print one line per finished run.

    Returns
    -------
    dict
        ``settings``, ``machine``, ``runs`` (the outputs of :func:`run_one`) and ``summary``
        (see :func:`summarize`).
    """
    unknown = set(competitors) - set(COMPETITORS)
    if unknown:
        raise ValueError(f"Unknown competitors {sorted(unknown)}; choose among {COMPETITORS}.")
    _pinned_environment()  # inherited by the worker processes before they import numpy
    tasks = [(c, dataset, int(s)) for s in seeds for c in competitors]
    options = {
        "window": window,
        "max_iter": max_iter,
        "data_home": None if data_home is None else str(data_home),
        "download_if_missing": download_if_missing,
    }
    runs = []
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=n_workers, mp_context=context, max_tasks_per_child=1
    ) as pool:
        futures = [pool.submit(run_one, *task, **options) for task in tasks]
        for future in futures:
            run = future.result()
            runs.append(run)
            if progress:
                final = run["final"]
                detail = (
                    run["skipped"]
                    if final is None
                    else f"C={final['C']:.4g} test loss {final['test_loss']:.5f} "
                    f"in {final['time']:.2f} s"
                )
                print(f"{run['competitor']:<14} seed {run['seed']}: {detail}", flush=True)
    settings = {"dataset": dataset, "seeds": list(seeds), "competitors": list(competitors)}
    settings.update(options)
    return {
        "settings": settings,
        "machine": _machine(),
        "runs": runs,
        "summary": summarize(runs),
    }


def _machine() -> dict[str, Any]:
    import scipy
    import sklearn

    from . import __version__

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "sklearn": sklearn.__version__,
        "hoag_shine": __version__,
        "threads": 1,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _time_to_reach(curve, threshold) -> float:
    for point in curve:
        if point["test_loss"] <= threshold:
            return point["time"]
    return math.inf


def _inner_iter_to_reach(curve, threshold) -> float:
    """Inner iterations spent until the first point within ``threshold`` (inf: never). The
    point of the search's final choice records none (its re-evaluations are not counted)."""
    spent = 0
    for point in curve:
        spent += point.get("inner_iter", 0)
        if point["test_loss"] <= threshold:
            return float(spent)
    return math.inf


def _reference_losses(runs) -> dict[int, float]:
    """Per seed, the lowest test loss of the competitors whose models see the training part only.

    ``estimator`` and the ``lrcv`` runs refit on training plus validation (5% more data on the
    published split), which lowers the test loss by more than the differences between tuning
    methods; they are compared with this reference but do not set it (unless nothing else ran).
    """
    best: dict[int, float] = {}
    for only_train in (True, False):
        for run in runs:
            if only_train and run["competitor"] in REFIT_COMPETITORS:
                continue
            lowest = min(point["test_loss"] for point in run["curve"])
            best[run["seed"]] = min(best.get(run["seed"], math.inf), lowest)
        if best:
            break
    return best


def summarize(runs: Sequence[dict[str, Any]], suboptimality: float = 0.01) -> dict[str, Any]:
    """Medians over seeds and the tracked ratios.

    Parameters
    ----------
    runs : sequence of dict
        Outputs of :func:`run_one`.
    suboptimality : float, default=0.01
        Threshold of the time-to-reach figures, relative: a test loss at most
        ``(1 + suboptimality)`` times the reference of that seed, the lowest test loss that a
        competitor whose models are fitted on the training part only was credited with (all but
        ``estimator`` and the ``lrcv`` runs, which refit on more data).

    Returns
    -------
    dict
        ``per_competitor``: median final test loss, time, C, median time to reach the
        suboptimality, how many seeds reach it and end within it, how many end worse than
        the best point they were credited with (by more than 0.1%), and for the gradient
        methods the median inner iterations per outer iteration, the inner iterations spent
        until the suboptimality was reached (per seed) and the median share of the
        time spent in backward passes (``median_backward_share``); ``ratios``:
        ``estimator_time_over_lrcv`` and ``_lrcv_default``, ``estimator_loss_over_lrcv`` and
        ``_lrcv_default``, ``shine_opa_over_cg_time_to_reach`` (medians of per-seed ratios,
        when both ran; a seed on which neither reaches the threshold is left out, one on which
        only SHINE-OPA does counts as 0).
    """
    done = [run for run in runs if run["skipped"] is None]
    best = _reference_losses(done)
    per = {}
    for run in done:
        threshold = best[run["seed"]] * (1 + suboptimality)
        entry = per.setdefault(
            run["competitor"],
            {"seeds": [], "final": [], "reach": [], "reach_iter": [], "ends": [], "worse": []},
        )
        entry["seeds"].append(run["seed"])
        entry["final"].append(run["final"])
        entry["reach"].append(_time_to_reach(run["curve"], threshold))
        entry["reach_iter"].append(_inner_iter_to_reach(run["curve"], threshold))
        entry["ends"].append(run["final"]["test_loss"] <= threshold)
        lowest = min(point["test_loss"] for point in run["curve"])
        entry["worse"].append(run["final"]["test_loss"] > lowest * 1.001)
    per_competitor = {}
    for name, entry in per.items():
        finals = entry["final"]
        per_competitor[name] = {
            "n_seeds": len(finals),
            "median_test_loss": float(np.median([f["test_loss"] for f in finals])),
            "median_time": float(np.median([f["time"] for f in finals])),
            "median_C": float(np.median([f["C"] for f in finals])),
            "median_time_to_reach": float(np.median(entry["reach"])),
            "n_reached": int(np.sum(np.isfinite(entry["reach"]))),
            "n_ends_within": int(np.sum(entry["ends"])),
            "n_ends_worse_than_its_best": int(np.sum(entry["worse"])),
        }
        if "median_inner_iter" in finals[0]:
            per_competitor[name]["median_inner_iter_per_outer"] = float(
                np.median([f["median_inner_iter"] for f in finals])
            )
            # (the published figures of the issue are per seed: inner iterations to the target)
            per_competitor[name]["inner_iter_to_reach"] = entry["reach_iter"]
        if "time_backward" in finals[0]:
            per_competitor[name]["median_backward_share"] = float(
                np.median([f["time_backward"] / f["time"] for f in finals])
            )

    def per_seed(name):
        return {run["seed"]: run for run in done if run["competitor"] == name}

    ratios = {}
    estimator = per_seed("estimator")
    for reference, suffix in (("lrcv", "lrcv"), ("lrcv-default", "lrcv_default")):
        other = per_seed(reference)
        common = sorted(set(estimator) & set(other))
        if not common:
            continue
        ratios[f"estimator_time_over_{suffix}"] = float(
            np.median([estimator[s]["final"]["time"] / other[s]["final"]["time"] for s in common])
        )
        ratios[f"estimator_loss_over_{suffix}"] = float(
            np.median(
                [
                    estimator[s]["final"]["test_loss"] / other[s]["final"]["test_loss"]
                    for s in common
                ]
            )
        )
    opa, cg = per_seed("shine-opa"), per_seed("cg")
    common = sorted(set(opa) & set(cg))
    if common:
        values = []
        for s in common:
            threshold = best[s] * (1 + suboptimality)
            reach_opa = _time_to_reach(opa[s]["curve"], threshold)
            reach_cg = _time_to_reach(cg[s]["curve"], threshold)
            if math.isfinite(reach_cg):
                values.append(reach_opa / reach_cg)
            elif math.isfinite(reach_opa):
                values.append(0.0)  # only SHINE-OPA got there
            # neither got there: the seed says nothing about the ratio
        if values:
            ratios["shine_opa_over_cg_time_to_reach"] = float(np.median(values))
    return {
        "suboptimality": suboptimality,
        "per_competitor": per_competitor,
        "ratios": ratios,
    }


def plot_comparison(result: dict[str, Any], path: str | os.PathLike | None = None):
    """Test-loss suboptimality against time: median over seeds and the 10-90% band.

    Parameters
    ----------
    result : dict
        Output of :func:`run_comparison`.
    path : str or path-like, optional
        Where to save the figure (PNG).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    runs = [run for run in result["runs"] if run["skipped"] is None]
    best = _reference_losses(runs)
    floor = 3e-5
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    names = [
        name
        for name in result["settings"]["competitors"]
        if any(run["competitor"] == name for run in runs)
    ]
    t_max = max(point["time"] for run in runs for point in run["curve"])
    grid = np.geomspace(1e-2, t_max * 1.05, 200)
    for index, name in enumerate(names):
        color = plt.get_cmap("tab20")(index % 20)
        mine = [run for run in runs if run["competitor"] == name]
        if len(mine[0]["curve"]) == 1 and all(len(run["curve"]) == 1 for run in mine):
            times = [run["curve"][0]["time"] for run in mine]
            gaps = [max(run["curve"][0]["test_loss"] - best[run["seed"]], floor) for run in mine]
            ax.scatter(times, gaps, color=color, marker="D", label=name, zorder=3)
            continue
        rows = []
        for run in mine:
            times = np.array([point["time"] for point in run["curve"]])
            gaps = np.array(
                [max(point["test_loss"] - best[run["seed"]], floor) for point in run["curve"]]
            )
            index_at = np.searchsorted(times, grid, side="right") - 1
            row = np.where(index_at >= 0, gaps[np.maximum(index_at, 0)], np.nan)
            row[grid > times[-1]] = np.nan
            rows.append(row)
        rows = np.array(rows)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            median = np.nanmedian(rows, axis=0)
            low, high = np.nanpercentile(rows, [10, 90], axis=0)
        ax.plot(grid, median, color=color, label=name)
        ax.fill_between(grid, low, high, color=color, alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("wall time (s), one thread")
    ax.set_ylabel("test log-loss minus the reference")
    settings = result["settings"]
    ax.set_title(
        f"{settings['dataset']}: {len(settings['seeds'])} seeds, median and 10-90%\n"
        "(reference: best train-only model; refit points below it are drawn at 3e-5)",
        fontsize=9,
    )
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def save_comparison(
    result: dict[str, Any], out_dir: str | os.PathLike, name: str
) -> tuple[Path, Path | None]:
    """Write ``<name>.json`` and, when matplotlib is installed, ``<name>.png``.

    Parameters
    ----------
    result : dict
        Output of :func:`run_comparison`.
    out_dir : str or path-like
        Folder (created if needed).
    name : str
        Base name of the files.

    Returns
    -------
    json_path, png_path : Path, Path or None
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"
    # Strict JSON: infinite or undefined figures (a target never reached) are written as null.
    text = json.dumps(_finite(result), indent=1, default=_json_default, allow_nan=False)
    json_path.write_text(text + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        return json_path, None
    import matplotlib.pyplot as plt

    png_path = out_dir / f"{name}.png"
    plt.close(plot_comparison(result, png_path))
    return json_path, png_path


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Not JSON serializable: {type(value)}")


def format_summary(result: dict[str, Any]) -> str:
    """The summary as a plain-text table (what ``hoag-shine bench`` prints).

    Parameters
    ----------
    result : dict
        Output of :func:`run_comparison`.

    Returns
    -------
    str
    """
    summary = result["summary"]
    lines = [
        f"{'competitor':<14} {'seeds':>5} {'test loss':>10} {'time (s)':>9} {'C':>10} "
        f"{'reach (s)':>10} {'reached':>7} {'ends in':>7} {'worse':>5} {'inner/outer':>11} "
        f"{'backward':>8}",
    ]
    lines.append("-" * len(lines[0]))
    for name, entry in summary["per_competitor"].items():
        inner = entry.get("median_inner_iter_per_outer")
        backward = entry.get("median_backward_share")
        lines.append(
            f"{name:<14} {entry['n_seeds']:>5d} {entry['median_test_loss']:>10.5f} "
            f"{entry['median_time']:>9.2f} {entry['median_C']:>10.4g} "
            f"{entry['median_time_to_reach']:>10.2f} {entry['n_reached']:>7d} "
            f"{entry.get('n_ends_within', 0):>7d} {entry.get('n_ends_worse_than_its_best', 0):>5d} "
            f"{'' if inner is None else f'{inner:.0f}':>11} "
            f"{'' if backward is None else f'{backward:.0%}':>8}"
        )
    lines.append(
        f"(medians over seeds; reach: time to a test loss within {summary['suboptimality']:.0%} "
        "of the lowest test loss credited to the train-only competitors on that seed; "
        "backward: the share of the time spent in backward passes, all a free backward could "
        "save)"
    )
    for key, value in summary["ratios"].items():
        lines.append(f"{key}: {value:.4g}")
    skipped = {run["competitor"]: run["skipped"] for run in result["runs"] if run["skipped"]}
    for name, reason in skipped.items():
        lines.append(f"{name}: skipped ({reason})")
    return "\n".join(lines)
