"""Command line: ``python -m hoag_shine`` (or ``hoag-shine``).

``hoag-shine tune`` tunes the L2 penalty of a logistic regression on the embedded
breast_cancer data (no network needed) with every hypergradient method and prints, side by
side, the chosen C, the validation and test log-loss, the number of outer iterations and the
wall time.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np

from .criteria import HeldOutLogLoss
from .hypergradients import METHODS, hypergradient
from .outer import OPTIMIZERS, solve_bilevel
from .problems import LogisticRegressionProblem

__all__ = ["main"]


def _embedded_split(seed: int):
    """breast_cancer, standardized on the training part, split 60/20/20."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_rest, y_train, y_rest = train_test_split(
        X, y, test_size=0.4, random_state=seed, stratify=y
    )
    X_test, X_val, y_test, y_val = train_test_split(
        X_rest, y_rest, test_size=0.5, random_state=seed, stratify=y_rest
    )
    scaler = StandardScaler().fit(X_train)
    return (
        scaler.transform(X_train),
        y_train,
        scaler.transform(X_val),
        y_val,
        scaler.transform(X_test),
        y_test,
    )


def _tune(args) -> int:
    X_train, y_train, X_val, y_val, X_test, y_test = _embedded_split(args.seed)
    inner = LogisticRegressionProblem(X_train, y_train, fit_intercept=True)
    validation = HeldOutLogLoss(X_val, y_val, classes=inner.classes_)
    test = HeldOutLogLoss(X_test, y_test, classes=inner.classes_)
    methods = METHODS if args.method == "all" else (args.method,)
    print(
        f"breast_cancer: {X_train.shape[0]} train / {X_val.shape[0]} validation / "
        f"{X_test.shape[0]} test samples, {X_train.shape[1]} features; "
        f"start C = {np.exp(-args.log_alpha0):.4g}, optimizer {args.optimizer}"
    )
    header = (
        f"{'method':<14} {'best C':>10} {'val loss':>9} {'test loss':>9} {'iters':>5} {'time':>8}"
    )
    print(header)
    print("-" * len(header))
    for method in methods:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = solve_bilevel(
                inner,
                validation,
                args.log_alpha0,
                method=method,
                optimizer=args.optimizer,
                max_iter=args.max_iter,
            )
        elapsed = time.perf_counter() - start
        final = hypergradient(
            inner, validation, result.log_alpha, method="jacobian-free", tol=1e-10
        )
        print(
            f"{method:<14} {np.exp(-float(result.log_alpha)):>10.4g} {final.value:>9.5f} "
            f"{test.value(final.coef):>9.5f} {result.n_iter:>5d} {elapsed:>7.3f}s"
        )
    return 0


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
        The exit status (0 on success).
    """
    parser = argparse.ArgumentParser(
        prog="hoag-shine",
        description="Gradient-based tuning of regularization (HOAG, SHINE, OPA).",
    )
    sub = parser.add_subparsers(dest="command")
    tune = sub.add_parser(
        "tune",
        help="tune a logistic regression's C on the embedded breast_cancer data",
        description="Tune LogisticRegression's C on breast_cancer with each hypergradient method.",
    )
    tune.add_argument("--method", default="all", choices=("all", *METHODS))
    tune.add_argument("--optimizer", default="hoag", choices=OPTIMIZERS)
    tune.add_argument("--max-iter", type=int, default=30, help="outer iterations (default 30)")
    tune.add_argument(
        "--log-alpha0", type=float, default=0.0, help="starting log(1/C) (default 0: C=1)"
    )
    tune.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["tune", *(argv or [])])
    return _tune(args)


if __name__ == "__main__":
    sys.exit(main())
