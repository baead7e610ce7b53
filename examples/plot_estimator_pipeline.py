"""
BilevelEstimator in a scikit-learn pipeline
===========================================

:class:`hoag_shine.BilevelEstimator` tunes ``C`` of a ``LogisticRegression`` by gradient descent
on the cross-validated log-loss. It is the last step of a pipeline (scaling first: the penalty
acts on the scaled coefficients), and it is compared here with a grid search of ``C`` on the
same folds (:class:`~sklearn.model_selection.GridSearchCV` with the same scoring).
"""

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hoag_shine import BilevelEstimator
from hoag_shine.plotting import plot_history

X, y = load_breast_cancer(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.25, random_state=0, stratify=y
)
cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)

# %%
# The bi-level search; the starting ``C`` is the wrapped estimator's own.
start = time.perf_counter()
model = make_pipeline(
    StandardScaler(),
    BilevelEstimator(LogisticRegression(C=1.0), cv=cv, max_outer_iter=30),
)
model.fit(X_train, y_train)
bilevel_time = time.perf_counter() - start
search = model[-1]
print(
    f"BilevelEstimator: C = {search.best_params_['C']:.4g} after {search.n_outer_iter_} "
    f"outer iterations, {bilevel_time:.2f} s"
)

# %%
# A grid of 30 values of ``C`` on the same folds, scored by the same held-out log-loss.
start = time.perf_counter()
grid = GridSearchCV(
    make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
    {"logisticregression__C": np.logspace(-3, 3, 30)},
    cv=cv,
    scoring="neg_log_loss",
)
grid.fit(X_train, y_train)
grid_time = time.perf_counter() - start
print(f"GridSearchCV: C = {grid.best_params_['logisticregression__C']:.4g}, {grid_time:.2f} s")

for name, fitted in (("BilevelEstimator", model), ("GridSearchCV", grid)):
    loss = log_loss(y_test, fitted.predict_proba(X_test))
    accuracy = accuracy_score(y_test, fitted.predict(X_test))
    print(f"{name:<18} test log-loss {loss:.4f}, accuracy {accuracy:.4f}")

# %%
# ``best_params_`` is in the wrapped estimator's terms, ``C = exp(-log_alpha)``, and
# ``best_estimator_`` is an ordinary fitted ``LogisticRegression``.
assert np.isclose(search.best_params_["C"], np.exp(-search.best_log_alpha_))
print(type(search.best_estimator_).__name__, search.best_estimator_.C)

# %%
# The search, one record per outer iteration: a table with pandas, a plot with
# :func:`~hoag_shine.plotting.plot_history`. The dashed line is the best cross-validated loss
# of the grid.
columns = ["iteration", "log_alpha", "outer_loss", "grad_norm", "inner_iter", "backward"]
print(pd.DataFrame(search.history_)[columns].to_string(index=False))

fig, axes = plot_history(search)
axes[0].axhline(-grid.best_score_, color="gray", linestyle="--", label="best of the grid")
axes[0].legend()
plt.show()
