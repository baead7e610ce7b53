"""Exact held-out curves behind two of the benchmarks' loss targets (no timing).

``bench_hpo.py`` and ``bench_pipeline.py`` judge a search by its **test** loss, while a search
minimizes a **validation** (or cross-validated) loss. Where the two curves disagree, the search
that minimizes its own loss exactly cannot reach the test-loss target. This script computes the
exact curves, one solve per point:

- ``20news``: on one seed of the published split, the validation and test log-loss of the
  logistic regression solved by Newton-CG to a relative tolerance of 1e-8, over a grid of
  ``log_alpha = log(1/C)``;
- ``pipeline``: the text pipeline of ``bench_pipeline.py`` (TF-IDF, four categories, string
  labels), the 5-fold cross-validated log-loss with ``LogisticRegressionCV``'s folds
  (unshuffled stratified) and scikit-learn's ``LogisticRegression(tol=1e-10)``, and the test
  log-loss of a refit on the whole training set, over a grid of ``C``.

Writes ``exact_curves.json`` into ``--out`` and prints the tables::

    SCIKIT_LEARN_DATA=<writable copy of the 20news cache> python benchmarks/exact_curves.py \\
        --seed 4 --log-alphas -5 -5.4 -5.7 -5.85 -6 -6.2 --Cs 30 100 167 300 1000 3000 4500 10000
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def curve_20news(seed: int, log_alphas) -> list[dict]:
    """Validation and test log-loss at the exact inner solution, for each ``log_alpha``."""
    from hoag_shine import hypergradient
    from hoag_shine.criteria import HeldOutLogLoss
    from hoag_shine.datasets import split_dataset
    from hoag_shine.problems import LogisticRegressionProblem
    from hoag_shine.solvers import NewtonCG

    data = split_dataset("20news", seed, download_if_missing=False)
    inner = LogisticRegressionProblem(data["X_train"], data["y_train"], fit_intercept=True)
    validation = HeldOutLogLoss(data["X_val"], data["y_val"], classes=inner.classes_)
    test = HeldOutLogLoss(data["X_test"], data["y_test"], classes=inner.classes_)
    points, coef = [], None
    for log_alpha in log_alphas:
        result = hypergradient(
            inner, validation, log_alpha, method="cg", tol=1e-8, coef0=coef, solver=NewtonCG()
        )
        coef = result.coef
        points.append(
            {
                "log_alpha": float(log_alpha),
                "C": float(np.exp(-log_alpha)),
                "validation_loss": float(result.value),
                "hypergradient": float(result.grad),
                "test_loss": float(test.value(coef)),
            }
        )
        print(
            f"log_alpha {log_alpha:6.2f}  C {points[-1]['C']:8.1f}  validation "
            f"{result.value:.6f}  test {points[-1]['test_loss']:.5f}",
            flush=True,
        )
    return points


def curve_pipeline(Cs) -> list[dict]:
    """5-fold cross-validated and test log-loss of the text pipeline, for each ``C``."""
    from bench_pipeline import fetch_documents
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold

    train, test = fetch_documents()
    vectorizer = TfidfVectorizer()
    X, X_test = vectorizer.fit_transform(train.data), vectorizer.transform(test.data)
    y, y_test = train.target, test.target
    labels = np.unique(y)
    folds = list(StratifiedKFold(5).split(X, y))  # LogisticRegressionCV(cv=5)'s folds
    points = []
    for C in Cs:

        def fit(X_part, y_part, C=C):
            return LogisticRegression(C=C, tol=1e-10, max_iter=20000).fit(X_part, y_part)

        fold_losses = []
        for train_index, held_out in folds:
            model = fit(X[train_index], y[train_index])
            proba = model.predict_proba(X[held_out])
            fold_losses.append(float(log_loss(y[held_out], proba, labels=labels)))
        test_loss = float(log_loss(y_test, fit(X, y).predict_proba(X_test), labels=labels))
        points.append(
            {
                "C": float(C),
                "cv_loss": float(np.mean(fold_losses)),
                "fold_losses": fold_losses,
                "test_loss": test_loss,
            }
        )
        print(
            f"C {C:8g}  cv {points[-1]['cv_loss']:.5f}  test {test_loss:.5f}",
            flush=True,
        )
    return points


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=4, help="seed of the 20news split")
    parser.add_argument(
        "--log-alphas", type=float, nargs="+", default=[-5.0, -5.4, -5.7, -5.85, -6.0, -6.2]
    )
    parser.add_argument(
        "--Cs", type=float, nargs="+", default=[30, 100, 167, 300, 1000, 3000, 4500, 10000]
    )
    parser.add_argument("--curves", nargs="+", default=["20news", "pipeline"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    result = {"command": " ".join(["python", *sys.argv])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "20news" in args.curves:
            result["20news"] = {
                "seed": args.seed,
                "points": curve_20news(args.seed, args.log_alphas),
            }
        if "pipeline" in args.curves:
            result["pipeline"] = {"points": curve_pipeline(args.Cs)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "exact_curves.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
