"""Where the default BilevelEstimator's time goes on 20news (one split, one thread).

Fits ``BilevelEstimator(LogisticRegression(), cv=<the SHINE validation split>)`` once without
and once with :mod:`cProfile`, and attributes the profiled time to the parts of the library:
loss/gradient evaluations of the inner solver (line search and OPA), Hessian-vector products
(conjugate gradient fallbacks and the safeguard), the L-BFGS two-loop recursion, the final
re-evaluation of the search's result, and the refit on all the data. Writes
``results/profile_estimator_20news.json`` and prints a table.

Run::

    SCIKIT_LEARN_DATA=<writable copy of the 20news cache> taskset -c 1 \\
        python benchmarks/profile_estimator.py --seed 0
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from hoag_shine import BilevelEstimator  # noqa: E402
from hoag_shine.comparison import _split, _train_and_validation  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: Part of the fit -> (file suffix, function name) whose cumulative time measures it.
PARTS = {
    "fit (total)": ("estimator.py", "fit"),
    "search: solve_bilevel": ("outer.py", "solve_bilevel"),
    "  final re-evaluation of best and last": ("outer.py", "final_choice"),
    "  inner L-BFGS runs": ("lbfgs.py", "run"),
    "    loss and gradient evaluations": ("problems.py", "value_and_grad"),
    "    of which OPA's extra evaluations": ("lbfgs.py", "_opa_update"),
    "    two-loop recursion": ("lbfgs.py", "matvec"),
    "  conjugate gradient (fallbacks)": ("cg.py", "conjugate_gradient"),
    "  Hessian-vector products (all)": ("problems.py", "hvp"),
    "refit on all the data": ("estimator.py", "_refit"),
}


def _cumulative(stats: pstats.Stats, suffix: str, name: str) -> tuple[float, int]:
    total, calls = 0.0, 0
    for (filename, _, function), (_, ncalls, _, cumtime, _) in stats.stats.items():
        if filename.endswith(suffix) and function == name:
            total += cumtime
            calls += ncalls
    return total, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    data = _split("20news", args.seed, None, False)
    X, y, cv = _train_and_validation(data)
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        search = BilevelEstimator(LogisticRegression(), cv=cv).fit(X, y)
        wall = time.perf_counter() - start
        profiler = cProfile.Profile()
        profiler.enable()
        BilevelEstimator(LogisticRegression(), cv=cv).fit(X, y)
        profiler.disable()
    stats = pstats.Stats(profiler)
    history = search.history_
    parts = {}
    for label, (suffix, name) in PARTS.items():
        seconds, calls = _cumulative(stats, suffix, name)
        parts[label] = {"seconds": seconds, "calls": calls}
    profiled_total = parts["fit (total)"]["seconds"]
    counts = {
        key: int(sum(record[key] for record in history))
        for key in ("inner_iter", "n_fun_evals", "n_opa_evals", "n_hvp", "cg_iter", "n_fallbacks")
    }
    result = {
        "benchmark": "profile_estimator_20news",
        "seed": args.seed,
        "wall_time_s": wall,
        "profiled_time_s": profiled_total,
        "C": search.best_params_["C"],
        "n_outer_iter": search.n_outer_iter_,
        "stop_message": search.stop_message_,
        "history_counts": counts,
        "parts": parts,
        "machine": {
            "command": "python benchmarks/profile_estimator.py --seed " + str(args.seed),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "threads": 1,
            "numpy": np.__version__,
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "profile_estimator_20news.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"wall time {wall:.2f} s (unprofiled); profiled {profiled_total:.2f} s; "
        f"C = {search.best_params_['C']:.4g} after {search.n_outer_iter_} outer iterations"
    )
    print(f"counts over the search: {counts}")
    print(f"{'part':<42} {'seconds':>8} {'share':>6} {'calls':>7}")
    for label, entry in parts.items():
        share = entry["seconds"] / profiled_total if profiled_total else float("nan")
        print(f"{label:<42} {entry['seconds']:>8.2f} {share:>6.1%} {entry['calls']:>7d}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
