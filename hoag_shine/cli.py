"""Command line: ``hoag-shine`` (also ``python -m hoag_shine``).

- ``hoag-shine tune``: tune the C of an L2 logistic regression with each hypergradient method and
  print, side by side, the chosen C, the validation and test log-loss and accuracy, the number of
  outer iterations and the wall time. Data: ``--data`` names an embedded set (the default,
  breast_cancer, needs no network), ``20news``, a LIBSVM set known to libsvmdata, or a LIBSVM or
  CSV file.
- ``hoag-shine bench``: the comparison of :mod:`hoag_shine.comparison` (hypergradient methods
  against ``LogisticRegressionCV``, grid, random and TPE searches), written as JSON and PNG.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np

from .comparison import COMPETITORS
from .hypergradients import METHODS, hypergradient
from .outer import OPTIMIZERS

__all__ = ["main"]

DEFAULT_DATA = "breast_cancer"


def _split(args):
    from .datasets import split_dataset

    data = split_dataset(
        args.data,
        args.seed,
        data_home=args.data_home,
        download_if_missing=not args.offline,
        test_size=args.held_out,
    )
    return tuple(data[key] for key in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test"))


def _tune(args) -> int:
    from .criteria import HeldOutLogLoss
    from .outer import solve_bilevel
    from .problems import LogisticRegressionProblem

    start = time.perf_counter()
    X_train, y_train, X_val, y_val, X_test, y_test = _split(args)
    load_time = time.perf_counter() - start
    inner = LogisticRegressionProblem(X_train, y_train, fit_intercept=True)
    validation = HeldOutLogLoss(X_val, y_val, classes=inner.classes_)
    test = HeldOutLogLoss(X_test, y_test, classes=inner.classes_)
    methods = METHODS if args.method == "all" else (args.method,)
    kind = "sparse" if hasattr(X_train, "tocsr") else "dense, standardized"
    print(
        f"{args.data}: {X_train.shape[0]} train / {X_val.shape[0]} validation / "
        f"{X_test.shape[0]} test samples, {X_train.shape[1]} features ({kind}), "
        f"{len(inner.classes_)} classes; loaded in {load_time:.1f} s"
    )
    print(
        f"L2 logistic regression with intercept; start C = {np.exp(-args.log_alpha0):.4g}, "
        f"outer optimizer {args.optimizer}, at most {args.max_iter} outer iterations"
    )
    header = (
        f"{'method':<14} {'best C':>10} {'val loss':>9} {'test loss':>9} {'test acc':>8} "
        f"{'iters':>5} {'time':>8}"
    )
    print(header)
    print("-" * len(header))
    for method in methods:
        began = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = solve_bilevel(
                inner,
                validation,
                args.log_alpha0,
                method=method,
                optimizer=args.optimizer,
                max_iter=args.max_iter,
                time_budget=args.time_budget,
            )
        elapsed = time.perf_counter() - began
        final = hypergradient(
            inner,
            validation,
            result.log_alpha,
            method="jacobian-free",
            tol=1e-8,
            coef0=result.coef[0],
        )
        accuracy = _accuracy(inner, final.coef, X_test, y_test)
        print(
            f"{method:<14} {np.exp(-float(result.log_alpha)):>10.4g} {final.value:>9.5f} "
            f"{test.value(final.coef):>9.5f} {accuracy:>8.4f} {result.n_iter:>5d} "
            f"{elapsed:>7.2f}s"
        )
    print("(losses and accuracy of the inner solution at the chosen C, solved to tol 1e-8)")
    return 0


def _accuracy(inner, coef, X, y) -> float:
    n_features = X.shape[1]
    n_outputs = inner.n_outputs
    weights = np.asarray(coef)[: n_features * n_outputs].reshape(n_features, n_outputs)
    intercept = np.asarray(coef)[n_features * n_outputs :]
    scores = np.asarray(X @ weights) + (intercept if intercept.size else 0.0)
    if n_outputs == 1:
        predicted = inner.classes_[(scores[:, 0] > 0).astype(int)]
    else:
        predicted = inner.classes_[np.argmax(scores, axis=1)]
    return float(np.mean(predicted == y))


def _bench(args) -> int:
    from pathlib import Path

    from .comparison import format_summary, run_comparison, save_comparison

    competitors = COMPETITORS if args.competitors == ["all"] else args.competitors
    print(
        f"{args.data}: {len(args.seeds)} seeds x {len(competitors)} competitors, one process "
        f"each, threads pinned to 1, window {args.window} s"
    )
    result = run_comparison(
        args.data,
        seeds=args.seeds,
        competitors=competitors,
        window=args.window,
        max_iter=args.max_iter,
        data_home=args.data_home,
        download_if_missing=not args.offline,
        n_workers=args.workers,
        progress=True,
    )
    print(format_summary(result))
    name = args.name or f"comparison_{Path(args.data).stem}"
    json_path, png_path = save_comparison(result, args.out, name)
    print(f"wrote {json_path}" + (f" and {png_path}" if png_path else " (no matplotlib: no plot)"))
    return 0


def _add_data_arguments(parser):
    parser.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help="breast_cancer (default, embedded) or digits, 20news, a LIBSVM name known to "
        "libsvmdata (a9a, real-sim, ...), or the path of a LIBSVM or CSV file (label last)",
    )
    parser.add_argument(
        "--data-home",
        default=None,
        help="data folder of the loaders (SCIKIT_LEARN_DATA for 20news, LIBSVMDATA_HOME for "
        "LIBSVM sets)",
    )
    parser.add_argument(
        "--offline", action="store_true", help="never download; fail with a clear message"
    )
    parser.add_argument("--max-iter", type=int, default=30, help="outer iterations (default 30)")


def main(argv=None) -> int:
    """Entry point of the ``hoag-shine`` command (also ``python -m hoag_shine``).

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments without the program name; ``sys.argv[1:]`` by default. With no
        subcommand, ``tune`` is run.

    Returns
    -------
    int
        The exit status (0 on success, 2 for a usage or data error).
    """
    parser = argparse.ArgumentParser(
        prog="hoag-shine",
        description="Gradient-based tuning of regularization (HOAG, SHINE, OPA).",
    )
    sub = parser.add_subparsers(dest="command")
    tune = sub.add_parser(
        "tune",
        help="tune a logistic regression's C with each hypergradient method",
        description="Tune LogisticRegression's C on a train / validation / test split with "
        "each hypergradient method and print the results side by side.",
    )
    _add_data_arguments(tune)
    tune.add_argument("--method", default="all", choices=("all", *METHODS))
    tune.add_argument("--optimizer", default="auto", choices=OPTIMIZERS)
    tune.add_argument(
        "--log-alpha0", type=float, default=0.0, help="starting log(1/C) (default 0: C=1)"
    )
    tune.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    tune.add_argument(
        "--held-out",
        type=float,
        default=None,
        help="fraction held out for validation + test, halved (default 0.1, or 0.4 below "
        "5000 samples)",
    )
    tune.add_argument(
        "--time-budget", type=float, default=None, help="seconds per method (default: none)"
    )
    bench = sub.add_parser(
        "bench",
        help="compare the methods with LogisticRegressionCV, grid, random and TPE search",
        description="Test loss against wall time of every tuning method, each run in its own "
        "process with one thread, over several seeds; writes JSON and a PNG plot.",
    )
    _add_data_arguments(bench)
    bench.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split seeds")
    bench.add_argument(
        "--competitors",
        nargs="+",
        default=["all"],
        choices=("all", *COMPETITORS),
        help="which to run (default all)",
    )
    bench.add_argument(
        "--window", type=float, default=60.0, help="time limit of each search (default 60 s)"
    )
    bench.add_argument("--out", default=".", help="output folder (default: current)")
    bench.add_argument("--name", default=None, help="file name (default comparison_<data>)")
    bench.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes at once (default 1; more disturbs the timings)",
    )
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["tune", *(argv or [])])
    try:
        return _tune(args) if args.command == "tune" else _bench(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"hoag-shine {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
