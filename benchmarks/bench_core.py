"""Core benchmark on 20news: L-BFGS iteration cost, hypergradient backward cost and accuracy.

Measures, on the training split of 20news (logistic regression, scalar penalty):

1. the time of one L-BFGS iteration (``hoag_shine.solvers.LBFGS``, memory 10) against the time
   of the two sparse products a gradient needs, ``X @ w`` and ``X.T @ r`` written as a user
   would with the CSR matrix and timed as a pair (target: at most 1.5x);
2. the time of one hypergradient backward by ``cg``, ``shine`` and ``shine-opa`` relative to the
   inner solve (target: SHINE under 5%), and the inner-solve overhead of OPA;
3. the accuracy of each hypergradient against a tight ``cg`` reference.

Run ``python benchmarks/bench_core.py --help``; see ``benchmarks/README.md``.
"""

# Threads are pinned before numpy is imported (BLAS reads these once, at load time).
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

# ruff: noqa: E402
import argparse
import contextlib
import datetime
import hashlib
import json
import platform
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path
from statistics import median

import matplotlib
import numpy as np
import scipy
import sklearn
from threadpoolctl import threadpool_info, threadpool_limits

import hoag_shine
from hoag_shine import hypergradient
from hoag_shine.criteria import HeldOutLogLoss
from hoag_shine.datasets import split_dataset
from hoag_shine.problems import LogisticRegressionProblem
from hoag_shine.solvers import LBFGS, LBFGSMemory, conjugate_gradient

matplotlib.use("Agg")
import matplotlib.pyplot as plt

METHODS = ("cg", "shine", "shine-opa")
SHINE_METHODS = ("shine", "shine-opa")
MEMORY_SIZE = 10
TARGET_ITER_RATIO = 1.5
TARGET_SHINE_BACKWARD = 0.05
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# -- data --------------------------------------------------------------------------------------
def load_20news_split(seed, data_home=None, *, download_if_missing=True):
    """20news (train and test stacked), binary label ``target >= 10``, split 90/5/5.

    The split is the published SHINE code's: ``train_test_split(test_size=0.1)`` for
    (train, rest), then the rest halved with the same seed, the first half the test set and the
    second half the validation set.

    Parameters
    ----------
    seed : int
        ``random_state`` of both splits.
    data_home : str or Path, optional
        scikit-learn data folder (writable: the vectorized cache is written there). Defaults to
        scikit-learn's (``SCIKIT_LEARN_DATA`` or ``~/scikit_learn_data``).
    download_if_missing : bool
        Passed to :func:`hoag_shine.datasets.load_20news`.

    Returns
    -------
    dict
        ``X_train, y_train, X_val, y_val, X_test, y_test`` (CSR matrices, 0/1 labels).
    """
    return split_dataset(
        "20news", seed, data_home=data_home, download_if_missing=download_if_missing
    )


# -- machine -----------------------------------------------------------------------------------
def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args):
    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _source_digest():
    """SHA-1 of the package's Python sources: identifies the code measured, edits included."""
    digest = hashlib.sha1()
    package = Path(hoag_shine.__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def machine_info():
    """CPU, library versions, thread settings and the exact command."""
    status = _git("status", "--porcelain", "--", "hoag_shine")
    return {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "sklearn": sklearn.__version__,
        "hoag_shine": hoag_shine.__version__,
        "git_commit": _git("rev-parse", "HEAD"),
        "hoag_shine_modified": None if status is None else bool(status),
        "hoag_shine_source_sha1": _source_digest(),
        "env": {
            k: os.environ.get(k)
            for k in (
                "OMP_NUM_THREADS",
                "OPENBLAS_NUM_THREADS",
                "MKL_NUM_THREADS",
                "OPENBLAS_CORETYPE",
            )
        },
        "threadpools": [
            {k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
            for p in threadpool_info()
        ],
    }


# -- timing helpers ----------------------------------------------------------------------------
def _timed(fn, n):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _summary(times):
    return {"median_s": median(times), "min_s": min(times), "times_s": times}


def _product_timers(X, n_calls):
    """Timers of ``X @ w`` and ``X.T @ r`` as a user writes them (CSR ``X``; ``X.T`` is a CSC
    view, as in the library), of a CSR copy of the transpose, and of the pair ``X @ w`` then
    ``X.T @ r`` that a gradient runs (the second product reads the nonzeros the first has just
    brought into the cache)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(X.shape[1])
    r = rng.standard_normal(X.shape[0])
    XT_csr = X.T.tocsr()
    return {
        "X @ w": lambda: _timed(lambda: X @ w, n_calls),
        "X.T @ r": lambda: _timed(lambda: X.T @ r, n_calls),
        "X.T(csr copy) @ r": lambda: _timed(lambda: XT_csr @ r, n_calls),
        "X @ w, X.T @ r": lambda: _timed(lambda: (X @ w, X.T @ r), n_calls),
        "X @ w, X.T(csr copy) @ r": lambda: _timed(lambda: (X @ w, XT_csr @ r), n_calls),
    }


def bench_products(inner, log_alpha, n_calls):
    """The gradient's floor: the two sparse products, and one ``value_and_grad`` for reference."""
    w = np.random.default_rng(1).standard_normal(inner.n_params) * 1e-2
    out = {name: _summary(timer()) for name, timer in _product_timers(inner.X, n_calls).items()}
    out["value_and_grad"] = _summary(_timed(lambda: inner.value_and_grad(w, log_alpha), n_calls))
    # The floor is the pair of products the library runs, X @ w then X.T @ r, timed together.
    out["floor_s"] = out["X @ w, X.T @ r"]["median_s"]
    return out


@contextlib.contextmanager
def _timed_two_loop(total):
    """Accumulate the time of the memory's products and updates (:meth:`LBFGSMemory.matvec`,
    :meth:`~LBFGSMemory.push` and :meth:`~LBFGSMemory.push_and_matvec`, the "two-loop" part of
    an iteration) in ``total[0]`` while the context is open (restored after)."""
    names = ("matvec", "push", "push_and_matvec")
    originals = {name: getattr(LBFGSMemory, name) for name in names}

    def timed(original):
        def method(self, *args, **kwargs):
            start = time.perf_counter()
            out = original(self, *args, **kwargs)
            total[0] += time.perf_counter() - start
            return out

        return method

    for name in names:
        setattr(LBFGSMemory, name, timed(originals[name]))
    try:
        yield
    finally:
        for name in names:
            setattr(LBFGSMemory, name, originals[name])


def _lbfgs_run(inner, log_alpha, tol):
    """One cold L-BFGS solve; returns its wall time, the time spent in evaluations and in the
    two-loop recursion, and the final state."""
    solver = LBFGS(memory_size=MEMORY_SIZE, tol=tol * inner.gradient_scale)
    eval_time, two_loop_time = [0.0], [0.0]

    def value_and_grad(w):
        start = time.perf_counter()
        out = inner.value_and_grad(w, log_alpha)
        eval_time[0] += time.perf_counter() - start
        return out

    with _timed_two_loop(two_loop_time):
        start = time.perf_counter()
        state = solver.run(value_and_grad, inner.init_coef())
        elapsed = time.perf_counter() - start
    return elapsed, eval_time[0], two_loop_time[0], state


def bench_lbfgs(inner, log_alpha, tol, repeats, n_calls):
    """Time per L-BFGS iteration against the two products (timed between the repeats), with a
    breakdown timed inside the runs: evaluations, two-loop recursion, and the rest of the
    solver's vector operations (line search, memory update, norms)."""
    timers = _product_timers(inner.X, max(n_calls // repeats, 5))
    products = {"X @ w, X.T @ r": []}
    runs, evals, two_loops = [], [], []
    for _ in range(repeats):
        for name in products:
            products[name].extend(timers[name]())
        elapsed, eval_time, two_loop_time, state = _lbfgs_run(inner, log_alpha, tol)
        runs.append(elapsed)
        evals.append(eval_time)
        two_loops.append(two_loop_time)
    n_iter = max(state.n_iter, 1)
    floor_s = median(products["X @ w, X.T @ r"])
    t_iter = median(runs) / n_iter
    t_evals = median(evals) / n_iter
    t_two_loop = median(two_loops) / n_iter
    return {
        "tol": tol,
        "n_iter": state.n_iter,
        "n_fun_evals": state.n_fun_evals,
        "converged": bool(state.converged),
        "evals_per_iter": state.n_fun_evals / n_iter,
        "time_solve_s": _summary(runs),
        "time_per_iter_s": t_iter,
        "products_s": {name: _summary(t) for name, t in products.items()},
        "floor_s": floor_s,
        "ratio_to_products": t_iter / floor_s,
        "breakdown_per_iter_s": {
            "evaluations": t_evals,
            "two_loop": t_two_loop,
            "other_vector_ops": t_iter - t_evals - t_two_loop,
        },
        "time_per_evaluation_s": median(evals) / state.n_fun_evals,
    }


def _run_hypergradient(inner, outer, log_alpha, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = hypergradient(inner, outer, log_alpha, **kwargs)
    return res, [str(w.message) for w in caught]


def bench_hypergradients(inner, outer, log_alpha, tol, repeats):
    """Inner and backward times of each method (methods interleaved within each repeat)."""
    times = {m: {"time_inner": [], "time_backward": []} for m in METHODS}
    first = {}
    for _ in range(repeats):
        for method in METHODS:
            res, caught = _run_hypergradient(inner, outer, log_alpha, method=method, tol=tol)
            times[method]["time_inner"].append(res.info["time_inner"])
            times[method]["time_backward"].append(res.info["time_backward"])
            first.setdefault(method, (res, caught))
    plain_inner = median(times["cg"]["time_inner"] + times["shine"]["time_inner"])
    records = []
    for method in METHODS:
        res, caught = first[method]
        t_inner = median(times[method]["time_inner"])
        t_backward = median(times[method]["time_backward"])
        info = {k: v for k, v in res.info.items() if not k.startswith("time_")}
        records.append(
            {
                "tol": tol,
                "method": method,
                "time_inner_s": _summary(times[method]["time_inner"]),
                "time_backward_s": _summary(times[method]["time_backward"]),
                "backward_over_inner": t_backward / t_inner,
                "inner_over_plain_lbfgs": t_inner / plain_inner,
                "total_over_plain_lbfgs": (t_inner + t_backward) / plain_inner,
                "info": info,
                "warnings": caught,
                "_result": res,
            }
        )
    return records


# -- accuracy ----------------------------------------------------------------------------------
def _cosine(a, b):
    return float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), np.finfo(float).tiny))


def _norm_ratio(a, b):
    return float(np.linalg.norm(a) / max(np.linalg.norm(b), np.finfo(float).tiny))


def reference(inner, outer, log_alpha, ref_tol):
    """A tight ``cg`` hypergradient (inner and CG tolerances ``ref_tol``)."""
    start = time.perf_counter()
    res, caught = _run_hypergradient(
        inner,
        outer,
        log_alpha,
        method="cg",
        tol=ref_tol,
        solver=LBFGS(memory_size=MEMORY_SIZE, max_iter=20000),
        cg_max_iter=20000,
    )
    elapsed = time.perf_counter() - start
    record = {
        "tol": ref_tol,
        "grad": float(res.grad),
        "value": res.value,
        "time_s": elapsed,
        "info": {k: v for k, v in res.info.items()},
        "warnings": caught,
    }
    return record, res


class _ExactAdjoint:
    """``H(w)^{-1} grad outer(w)`` by a tight CG at a given ``w`` (cached per ``w``)."""

    def __init__(self, inner, outer, log_alpha, rtol):
        self.inner, self.outer, self.log_alpha, self.rtol = inner, outer, log_alpha, rtol
        self._cache = {}

    def __call__(self, w):
        key = w.tobytes()
        if key not in self._cache:
            _, v = self.outer.value_and_grad(w)
            hvp = self.inner.hessian_operator(w, self.log_alpha)
            cg = conjugate_gradient(hvp, v, rtol=self.rtol, max_iter=20000)
            self._cache = {key: (cg.x, v, hvp)}  # keep one: the vectors are large
        return self._cache[key]


def accuracy(record, ref, exact_adjoint, inner, log_alpha):
    """Errors of a hypergradient (and, for SHINE, of its raw estimate) against the reference."""
    res = record["_result"]
    q_exact, v, hvp = exact_adjoint(res.coef)

    def metrics(q, grad):
        return {
            "grad": float(grad),
            "grad_rel_error": abs(float(grad) - float(ref.grad)) / abs(float(ref.grad)),
            "grad_sign_ok": bool(np.sign(grad) == np.sign(ref.grad)),
            "q_cosine_vs_ref": _cosine(q, ref.q),
            "q_norm_ratio_vs_ref": _norm_ratio(q, ref.q),
            "q_cosine_same_w": _cosine(q, q_exact),
            "q_norm_ratio_same_w": _norm_ratio(q, q_exact),
            "adjoint_residual": float(np.linalg.norm(hvp(q) - v) / np.linalg.norm(v)),
        }

    out = {"returned": metrics(res.q, res.grad)}
    if record["method"] in SHINE_METHODS:
        # The estimate before the safeguard (which may have replaced it by a CG solve).
        q_raw = res.inner_state.inverse_hessian.matvec(v)
        grad_raw = -float(inner.cross_vjp(res.coef, log_alpha, q_raw))
        out["raw_estimate"] = metrics(q_raw, grad_raw)
    # And the exact adjoint at the same w: the error due to the inner tolerance alone.
    out["exact_backward_same_w"] = metrics(
        q_exact, -float(inner.cross_vjp(res.coef, log_alpha, q_exact))
    )
    return out


def shine_backward_parts(record, inner, outer, log_alpha, n_calls):
    """What SHINE's backward is made of (medians, on the stored result): the outer gradient,
    the two-loop product with the inverse estimate, the safeguard's Hessian-vector product
    (building the operator included) and the cross term."""
    res = record["_result"]
    w = res.coef
    _, v = outer.value_and_grad(w)
    inverse = res.inner_state.inverse_hessian
    q = inverse.matvec(v)
    parts = {
        "outer_grad": lambda: outer.value_and_grad(w),
        "inverse_matvec": lambda: inverse.matvec(v),
        "safeguard_hvp": lambda: inner.hessian_operator(w, log_alpha)(q),
        "cross_vjp": lambda: inner.cross_vjp(w, log_alpha, q),
    }
    return {name: median(_timed(fn, n_calls)) for name, fn in parts.items()}


# -- report ------------------------------------------------------------------------------------
def _fmt_tol(tol):
    return f"{tol:.0e}"


def print_tables(results):
    prod = results["products"]
    print()
    print(
        f"Sparse products (CSR, as a user writes them): X @ w {prod['X @ w']['median_s'] * 1e3:.2f}"
        f" ms, X.T @ r {prod['X.T @ r']['median_s'] * 1e3:.2f} ms, the pair (floor) "
        f"{prod['floor_s'] * 1e3:.2f} ms; with a CSR copy of X.T: "
        f"{prod['X.T(csr copy) @ r']['median_s'] * 1e3:.2f} ms alone, "
        f"{prod['X @ w, X.T(csr copy) @ r']['median_s'] * 1e3:.2f} ms the pair (library's "
        f"value_and_grad {prod['value_and_grad']['median_s'] * 1e3:.2f} ms)"
    )
    print()
    print(f"1. L-BFGS (memory {MEMORY_SIZE}) time per iteration vs the two products")
    head = (
        f"{'C':>6} {'tol':>6} {'iters':>6} {'evals/it':>8} {'ms/iter':>8} {'floor ms':>8} "
        f"{'ratio':>6} "
        f"{'target':>7} | {'evals ms':>8} {'2-loop ms':>9} {'other ms':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in results["lbfgs"]:
        b = r["breakdown_per_iter_s"]
        met = "met" if r["ratio_to_products"] <= TARGET_ITER_RATIO else "MISSED"
        print(
            f"{r['C']:>6g} {_fmt_tol(r['tol']):>6} {r['n_iter']:>6d} {r['evals_per_iter']:>8.2f} "
            f"{r['time_per_iter_s'] * 1e3:>8.2f} {r['floor_s'] * 1e3:>8.2f} "
            f"{r['ratio_to_products']:>6.2f} {met:>7} | "
            f"{b['evaluations'] * 1e3:>8.2f} {b['two_loop'] * 1e3:>9.2f} "
            f"{b['other_vector_ops'] * 1e3:>8.2f}"
        )
    print()
    print("2-3. Hypergradients: cost (medians) and accuracy vs the tight CG reference")
    head = (
        f"{'C':>6} {'tol':>6} {'method':>10} {'inner s':>8} {'bwd s':>7} {'bwd/inner':>9} "
        f"{'inner/LBFGS':>11} {'iters':>5} {'opa':>4} {'cg':>4} {'backward':>22} | "
        f"{'grad':>10} {'rel err':>8} {'cos q':>6} {'|q|/|qr|':>8} {'raw cos':>7} "
        f"{'raw err':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in results["hypergradients"]:
        info, acc = r["info"], r["accuracy"]["returned"]
        raw = r["accuracy"].get("raw_estimate")
        raw_cos = f"{raw['q_cosine_vs_ref']:>7.3f}" if raw else f"{'':>7}"
        raw_err = f"{raw['grad_rel_error']:>8.2g}" if raw else f"{'':>8}"
        print(
            f"{r['C']:>6g} {_fmt_tol(r['tol']):>6} {r['method']:>10} "
            f"{r['time_inner_s']['median_s']:>8.3f} {r['time_backward_s']['median_s']:>7.3f} "
            f"{100 * r['backward_over_inner']:>8.1f}% {r['inner_over_plain_lbfgs']:>11.2f} "
            f"{info['inner_iter']:>5d} {info['n_opa_evals']:>4d} {info['cg_iter']:>4d} "
            f"{info['backward']:>22} | {acc['grad']:>10.3e} {acc['grad_rel_error']:>8.2g} "
            f"{acc['q_cosine_vs_ref']:>6.3f} {acc['q_norm_ratio_vs_ref']:>8.3f} "
            f"{raw_cos} {raw_err}"
        )
    for ref in results["reference"]:
        print(
            f"reference C={ref['C']:g}: cg at tol {_fmt_tol(ref['tol'])}, grad "
            f"{ref['grad']:.6e}, outer loss {ref['value']:.6f}, {ref['info']['inner_iter']} "
            f"L-BFGS iterations, {ref['info']['cg_iter']} CG iterations, {ref['time_s']:.1f} s"
        )
    print()
    for name, t in results["targets"].items():
        line = f"target {name}: {t['description']}: {'met' if t['met'] else 'MISSED'}"
        if "met_without_fallback" in t:
            n_fallback = sum(b != "shine" for b in t["backward"])
            line += (
                f" ({n_fallback} of {len(t['backward'])} fell back to CG; without them: "
                f"{'met' if t['met_without_fallback'] else 'MISSED'})"
            )
        print(line)
    parts = [
        (r, r["shine_backward_parts_s"])
        for r in results["hypergradients"]
        if r["method"] == "shine" and "shine_backward_parts_s" in r
    ]
    if parts:
        print()
        print("SHINE backward parts (ms): outer grad, two-loop H_qN v, safeguard HVP, cross term")
        for r, p in parts:
            print(
                f"  C={r['C']:g} tol {_fmt_tol(r['tol'])}: "
                + ", ".join(f"{k} {1e3 * t:.2f}" for k, t in p.items())
            )


def plot(results, path):
    """Four bar panels: iteration cost, backward/inner, gradient error, cosine of q."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0, 0]
    lbfgs = results["lbfgs"]
    labels = ["X@w + X.T@r"] + [f"iter C={r['C']:g}\ntol {_fmt_tol(r['tol'])}" for r in lbfgs]
    parts = {
        name: [0.0] + [max(r["breakdown_per_iter_s"][key], 0.0) / r["floor_s"] for r in lbfgs]
        for name, key in (
            ("evaluations", "evaluations"),
            ("two-loop recursion", "two_loop"),
            ("other vector ops", "other_vector_ops"),
        )
    }
    x = np.arange(len(labels))
    ax.bar(x[:1], [1.0], color="0.6", label="two sparse products")
    bottom = np.zeros(len(labels))
    for color, (name, vals) in zip(("C0", "C1", "C2"), parts.items(), strict=True):
        ax.bar(x, vals, bottom=bottom, color=color, label=name)
        bottom += vals
    ax.axhline(TARGET_ITER_RATIO, color="k", ls="--", lw=1, label="target 1.5x")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("time / (X@w + X.T@r)")
    ax.set_ylim(0, max(bottom.max(), TARGET_ITER_RATIO) * 1.4)
    ax.set_title(f"L-BFGS (memory {MEMORY_SIZE}) time per iteration")
    ax.legend(fontsize=7, ncol=2)

    records = results["hypergradients"]
    groups = list(dict.fromkeys((r["C"], r["tol"]) for r in records))  # in run order
    returned = [(m, m, "returned", "") for m in METHODS]
    raw = [("shine-opa", "shine-opa raw (before safeguard)", "raw_estimate", "//")]

    def grouped(ax, series, key, title, ylabel, log=True, target=None):
        width = 0.8 / len(series)
        top = 0.0
        for i, (method, label, which, hatch) in enumerate(series):
            vals = []
            for g in groups:
                (r,) = [r for r in records if (r["C"], r["tol"]) == g and r["method"] == method]
                vals.append(key(r, which))
            top = max(top, *vals)
            offset = (i - (len(series) - 1) / 2) * width
            color = f"C{METHODS.index(method)}"
            ax.bar(
                np.arange(len(groups)) + offset,
                vals,
                width,
                label=label,
                color="white" if hatch else color,
                edgecolor=color,
                hatch=hatch,
            )
        if target is not None:
            ax.axhline(target[0], color="k", ls="--", lw=1, label=target[1])
        ticks = [f"C={c:g}\ntol {_fmt_tol(t)}" for c, t in groups]
        ax.set_xticks(np.arange(len(groups)), ticks, fontsize=8)
        if log:
            ax.set_yscale("log")
            ax.set_ylim(top=top * 30)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)

    grouped(
        axes[0, 1],
        returned,
        lambda r, _: 100 * r["backward_over_inner"],
        "backward time / inner solve time",
        "%",
        target=(100 * TARGET_SHINE_BACKWARD, "target 5% (SHINE)"),
    )
    grouped(
        axes[1, 0],
        returned + raw,
        lambda r, which: r["accuracy"][which]["grad_rel_error"],
        "hypergradient relative error vs tight CG",
        "|g - g_ref| / |g_ref|",
    )
    grouped(
        axes[1, 1],
        returned + raw,
        lambda r, which: r["accuracy"][which]["q_cosine_vs_ref"],
        "cosine(q, q_ref)",
        "cosine",
        log=False,
    )
    axes[1, 1].set_ylim(min(0.0, axes[1, 1].get_ylim()[0]), 1.3)
    fig.suptitle(
        f"20news train split (seed {results['config']['seed']}), "
        f"{results['machine']['cpu_model']}, 1 thread",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-home",
        default=os.environ.get("SCIKIT_LEARN_DATA"),
        help="scikit-learn data folder, writable (default: $SCIKIT_LEARN_DATA or sklearn's)",
    )
    parser.add_argument("--offline", action="store_true", help="never download 20news")
    parser.add_argument("--seed", type=int, default=0, help="random_state of the split")
    parser.add_argument("--repeats", type=int, default=5, help="repetitions (medians quoted)")
    parser.add_argument(
        "--C",
        type=float,
        nargs="+",
        default=[300.0, 1.0],
        help="log_alpha = log(1/C) (default 300 1)",
    )
    parser.add_argument(
        "--tols", type=float, nargs="+", default=[1e-3, 1e-5], help="relative inner tolerances"
    )
    parser.add_argument(
        "--ref-tol", type=float, default=1e-10, help="inner and CG tolerance of the reference"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR / "core_20news.json",
        help="JSON output; the plot is written beside it with the suffix .png",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    start_all = time.perf_counter()
    with threadpool_limits(1):
        machine = machine_info()
        t0 = time.perf_counter()
        data = load_20news_split(args.seed, args.data_home, download_if_missing=not args.offline)
        print(f"loaded 20news in {time.perf_counter() - t0:.1f} s", flush=True)
        inner = LogisticRegressionProblem(data["X_train"], data["y_train"])
        outer = HeldOutLogLoss(data["X_val"], data["y_val"], classes=inner.classes_)
        _ = inner.gradient_scale  # computed once, outside the timings
        n_calls = max(20, 10 * args.repeats)
        results = {
            "benchmark": "core_20news",
            "machine": machine,
            "config": {
                "seed": args.seed,
                "data_home": None if args.data_home is None else str(args.data_home),
                "repeats": args.repeats,
                "C": args.C,
                "tols": args.tols,
                "ref_tol": args.ref_tol,
                "methods": list(METHODS),
                "lbfgs_memory_size": MEMORY_SIZE,
                "product_calls": n_calls,
            },
            "data": {
                "n_train": data["X_train"].shape[0],
                "n_val": data["X_val"].shape[0],
                "n_test": data["X_test"].shape[0],
                "n_features": data["X_train"].shape[1],
                "nnz_train": int(data["X_train"].nnz),
                "positive_fraction_train": float(np.mean(data["y_train"])),
            },
            "products": bench_products(inner, np.log(1.0 / args.C[0]), n_calls),
            "lbfgs": [],
            "hypergradients": [],
            "reference": [],
        }
        for C in args.C:
            log_alpha = float(np.log(1.0 / C))
            ref_record, ref = reference(inner, outer, log_alpha, args.ref_tol)
            results["reference"].append({"C": C, "log_alpha": log_alpha, **ref_record})
            print(f"C={C:g}: reference in {ref_record['time_s']:.1f} s", flush=True)
            exact = _ExactAdjoint(inner, outer, log_alpha, rtol=args.ref_tol)
            for tol in args.tols:
                rec = bench_lbfgs(inner, log_alpha, tol, args.repeats, n_calls)
                results["lbfgs"].append({"C": C, "log_alpha": log_alpha, **rec})
                for rec in bench_hypergradients(inner, outer, log_alpha, tol, args.repeats):
                    rec["accuracy"] = accuracy(rec, ref, exact, inner, log_alpha)
                    if rec["method"] in SHINE_METHODS:
                        rec["shine_backward_parts_s"] = shine_backward_parts(
                            rec, inner, outer, log_alpha, n_calls
                        )
                    del rec["_result"]
                    results["hypergradients"].append({"C": C, "log_alpha": log_alpha, **rec})
                print(f"C={C:g} tol={_fmt_tol(tol)} done", flush=True)
            del ref, exact

    shine = [r for r in results["hypergradients"] if r["method"] == "shine"]
    results["targets"] = {
        "lbfgs_iter_over_products": {
            "description": f"L-BFGS iteration <= {TARGET_ITER_RATIO}x (X @ w + X.T @ r)",
            "values": [r["ratio_to_products"] for r in results["lbfgs"]],
            "met": all(r["ratio_to_products"] <= TARGET_ITER_RATIO for r in results["lbfgs"]),
        },
        "shine_backward_over_inner": {
            "description": f"SHINE backward < {100 * TARGET_SHINE_BACKWARD:g}% of the inner solve",
            "values": [r["backward_over_inner"] for r in shine],
            "backward": [r["info"]["backward"] for r in shine],
            "met": all(r["backward_over_inner"] < TARGET_SHINE_BACKWARD for r in shine),
            # The same where SHINE's own estimate was used (no fallback to CG).
            "met_without_fallback": all(
                r["backward_over_inner"] < TARGET_SHINE_BACKWARD
                for r in shine
                if r["info"]["backward"] == "shine"
            ),
        },
    }
    results["total_time_s"] = time.perf_counter() - start_all

    print_tables(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1, default=_json_default)
    png = args.out.with_suffix(".png")
    plot(results, png)
    print(f"\nwrote {args.out} and {png} ({results['total_time_s']:.0f} s in all)")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, type):  # warning categories in info["warnings"]
        return obj.__name__
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


if __name__ == "__main__":
    main()
