"""
Tuning a text classifier on 20 Newsgroups inside a pipeline
===========================================================

The pipeline a user writes for text: raw documents, a TF-IDF vectorizer, then a
``LogisticRegression`` whose ``C`` is tuned by :class:`hoag_shine.BilevelEstimator` on a held-out
split (the split of the published SHINE experiments: 90% train, 5% validation, 5% test, by
:func:`hoag_shine.datasets.make_splits`). The task is binary, as in SHINE: newsgroups 10 to 19
against 0 to 9. The features stay sparse all the way.

For comparison, ``LogisticRegressionCV`` scans 30 values of ``C`` on the same validation split.

Data: scikit-learn's ``fetch_20newsgroups`` (14 MB download on first use). Offline, point
``SCIKIT_LEARN_DATA`` at a writable folder holding ``20news-bydate_py3.pkz``. Not part of the
executed gallery: the vectorizer and the two searches take one to two minutes on one core.

Run::

    python examples/tune_20news_pipeline.py
"""

# %%
import time
import warnings

import numpy as np
from sklearn.datasets import fetch_20newsgroups
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import accuracy_score, log_loss
from sklearn.pipeline import make_pipeline

from hoag_shine import BilevelEstimator
from hoag_shine.datasets import make_splits

parts = [fetch_20newsgroups(subset=subset) for subset in ("train", "test")]
documents = np.array([text for part in parts for text in part.data], dtype=object)
labels = (np.concatenate([part.target for part in parts]) >= 10).astype(int)
train, validation, test = make_splits(len(labels), seed=0)
print(f"{len(train)} training, {len(validation)} validation, {len(test)} test documents")

# %%
# The search sees training and validation documents; ``cv`` names the one split. The vectorizer
# is fitted inside the pipeline, on those documents only.
fit_documents = documents[np.concatenate([train, validation])]
fit_labels = labels[np.concatenate([train, validation])]
split = [(np.arange(len(train)), np.arange(len(train), len(fit_documents)))]

start = time.perf_counter()
model = make_pipeline(
    TfidfVectorizer(sublinear_tf=True, min_df=2),
    BilevelEstimator(LogisticRegression(), cv=split, verbose=1),
)
model.fit(fit_documents, fit_labels)
bilevel_time = time.perf_counter() - start
search = model[-1]
print(
    f"BilevelEstimator: C = {search.best_params_['C']:.4g}, validation log-loss "
    f"{-search.best_score_:.4f}, {search.n_outer_iter_} outer iterations, {bilevel_time:.1f} s"
)

# %%
# The same pipeline with a grid of 30 values of ``C``.
start = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.8+ parameter transitions
    grid = make_pipeline(
        TfidfVectorizer(sublinear_tf=True, min_df=2),
        LogisticRegressionCV(Cs=30, cv=split, scoring="neg_log_loss", tol=1e-6, max_iter=10_000),
    )
    grid.fit(fit_documents, fit_labels)
grid_time = time.perf_counter() - start
print(f"LogisticRegressionCV: C = {float(np.ravel(grid[-1].C_)[0]):.4g}, {grid_time:.1f} s")

# %%
# Both, judged on the test documents.
for name, fitted in (("BilevelEstimator", model), ("LogisticRegressionCV", grid)):
    proba = fitted.predict_proba(documents[test])
    accuracy = accuracy_score(labels[test], fitted.predict(documents[test]))
    print(f"{name:<22} test log-loss {log_loss(labels[test], proba):.4f}, accuracy {accuracy:.4f}")
