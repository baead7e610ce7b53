"""A text pipeline tuned as a new user would: raw 20 Newsgroups documents, TF-IDF, then either
``BilevelEstimator(LogisticRegression())`` or ``LogisticRegressionCV(Cs=10)``, side by side.

The workload of the issue "SHINE delivers on real data": the four categories
``alt.atheism, comp.graphics, sci.space, talk.religion.misc`` (train 2034 documents, test
1353; string labels, four classes: the multinomial model), ``cv=5`` for both, scored by the
test log-loss. Each fit runs in a fresh process, ``--repeats`` times (medians reported):

- ``pinned``: BLAS and OpenMP limited to one thread (environment variables set before numpy
  loads), the setting of the other benchmarks;
- ``busy``: the default threads while a second process keeps the other core busy, what a
  user's laptop looks like.

Writes ``pipeline_20news.json`` (every run, the medians and the ratios) into ``--out``::

    SCIKIT_LEARN_DATA=<writable copy of the 20news cache> python benchmarks/bench_pipeline.py

Offline, ``SCIKIT_LEARN_DATA`` must point to a folder holding ``20news-bydate_py3.pkz`` (the
development machines: a writable copy of ``shared/data/scikit_learn_data``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CATEGORIES = ["alt.atheism", "comp.graphics", "sci.space", "talk.religion.misc"]
COMPETITORS = ("bilevel", "lrcv")
_PINNED = {
    name: "1"
    for name in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "NUMEXPR_NUM_THREADS",
    )
}


def fetch_documents():
    """The training and test documents of the four categories (scikit-learn's bunches)."""
    from sklearn.datasets import fetch_20newsgroups

    options = {"categories": CATEGORIES, "download_if_missing": False}
    return fetch_20newsgroups(subset="train", **options), fetch_20newsgroups(
        subset="test", **options
    )


def fit_once(competitor: str) -> dict:
    """Fit and score one pipeline in this process (the timed part is the fit)."""
    import warnings

    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.metrics import log_loss
    from sklearn.pipeline import make_pipeline

    from hoag_shine import BilevelEstimator

    train, test = fetch_documents()
    labels = np.asarray(train.target_names)
    y_train, y_test = labels[train.target], labels[test.target]  # string labels
    if competitor == "bilevel":
        model = BilevelEstimator(LogisticRegression(), cv=5, random_state=0)
    else:
        model = LogisticRegressionCV(
            Cs=10, cv=5, scoring="neg_log_loss", l1_ratios=(0.0,), use_legacy_attributes=False
        )
    pipeline = make_pipeline(TfidfVectorizer(), model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        pipeline.fit(train.data, y_train)
        elapsed = time.perf_counter() - start
        proba = pipeline.predict_proba(test.data)
    fitted = pipeline[-1]
    C = fitted.best_params_["C"] if competitor == "bilevel" else float(np.ravel(fitted.C_)[0])
    return {
        "competitor": competitor,
        "time": elapsed,
        "C": float(C),
        "test_log_loss": float(log_loss(y_test, proba, labels=pipeline.classes_)),
        "accuracy": float(np.mean(pipeline.predict(test.data) == y_test)),
        "n_outer_iter": int(getattr(fitted, "n_outer_iter_", 0)),
    }


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def run(competitor: str, setting: str) -> dict:
    """One fit in a fresh process, pinned, or with default threads beside a busy core."""
    env = dict(os.environ)
    if setting == "pinned":
        env.update(_PINNED)
    else:
        for name in _PINNED:
            env.pop(name, None)
    code = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
        f"from bench_pipeline import fit_once; print(json.dumps(fit_once({competitor!r})))"
    )
    spinner = None
    if setting == "busy":
        spinner = multiprocessing.get_context("spawn").Process(target=_spin, args=(3600.0,))
        spinner.start()
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
    finally:
        if spinner is not None:
            spinner.terminate()
            spinner.join()
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "setting": setting}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=["pinned", "busy"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    runs = []
    for _ in range(args.repeats):
        for setting in args.settings:
            for competitor in COMPETITORS:  # interleaved, so both see the same machine
                runs.append(run(competitor, setting))
                last = runs[-1]
                print(
                    f"{setting:>6} {competitor:<8} {last['time']:7.2f} s  C={last['C']:.4g}  "
                    f"test log-loss {last['test_log_loss']:.4f}",
                    flush=True,
                )
    medians = {}
    for setting in args.settings:
        for competitor in COMPETITORS:
            mine = [r for r in runs if r["setting"] == setting and r["competitor"] == competitor]
            medians[f"{competitor}_{setting}"] = {
                key: statistics.median(r[key] for r in mine)
                for key in ("time", "C", "test_log_loss", "accuracy")
            }
    ratios = {}
    for setting in args.settings:
        ours, theirs = medians[f"bilevel_{setting}"], medians[f"lrcv_{setting}"]
        ratios[f"time_bilevel_over_lrcv_{setting}"] = ours["time"] / theirs["time"]
        ratios[f"loss_bilevel_over_lrcv_{setting}"] = (
            ours["test_log_loss"] / theirs["test_log_loss"]
        )
    if {"pinned", "busy"} <= set(args.settings):
        ratios["bilevel_busy_over_pinned"] = (
            medians["bilevel_busy"]["time"] / medians["bilevel_pinned"]["time"]
        )
    result = {
        "benchmark": "pipeline_20news",
        "command": " ".join(["python", *sys.argv]),
        "categories": CATEGORIES,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "medians": medians,
        "ratios": ratios,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipeline_20news.json").write_text(json.dumps(result, indent=1) + "\n")
    for key, value in ratios.items():
        print(f"{key}: {value:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
