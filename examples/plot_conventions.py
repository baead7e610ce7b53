"""
The conventions, checked against scikit-learn
=============================================

The library's hyperparameter is ``log_alpha``, with ``alpha = exp(log_alpha)``:

- the logistic inner problem is ``LogisticRegression(C=1/alpha)``'s objective, so
  ``C = exp(-log_alpha)``; the ridge inner problem has ``Ridge(alpha=alpha)``'s minimizer;
- the outer criteria are scikit-learn's ``log_loss`` and ``mean_squared_error``;
- the hypergradient is ``d outer / d log_alpha``: positive means that more regularization
  raises the held-out loss, and in terms of ``C``, ``d outer / d log C = -grad``.

This example checks each of them numerically and draws the held-out loss against ``C`` with the
tangent that the hypergradient predicts.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from hoag_shine import hypergradient
from hoag_shine.criteria import HeldOutLogLoss
from hoag_shine.problems import LogisticRegressionProblem

X, y = load_breast_cancer(return_X_y=True)
X_train, X_val, y_train, y_val = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
scaler = StandardScaler().fit(X_train)
X_train, X_val = scaler.transform(X_train), scaler.transform(X_val)
inner = LogisticRegressionProblem(X_train, y_train, fit_intercept=True)
outer = HeldOutLogLoss(X_val, y_val, classes=inner.classes_)

# %%
# The inner solution at ``log_alpha`` is ``LogisticRegression(C=exp(-log_alpha))``'s, and the
# outer value is its validation ``log_loss``.
log_alpha = np.log(4.0)
res = hypergradient(inner, outer, log_alpha, method="cg", tol=1e-10)
clf = LogisticRegression(C=np.exp(-log_alpha), tol=1e-10, max_iter=10_000).fit(X_train, y_train)
coef_sklearn = np.r_[clf.coef_.ravel(), clf.intercept_]
print("max |coef - sklearn coef|:", np.max(np.abs(res.coef - coef_sklearn)))
print("outer value:", res.value, " sklearn log_loss:", log_loss(y_val, clf.predict_proba(X_val)))
assert np.allclose(res.coef, coef_sklearn, atol=1e-5)
assert np.isclose(res.value, log_loss(y_val, clf.predict_proba(X_val)))

# %%
# The hypergradient is the slope of the held-out loss in ``log_alpha`` and equals
# ``-alpha * coef . q`` (the intercept is not penalized).
h = 1e-4
up = hypergradient(inner, outer, log_alpha + h, method="cg", tol=1e-12).value
down = hypergradient(inner, outer, log_alpha - h, method="cg", tol=1e-12).value
finite_difference = (up - down) / (2 * h)
n = X_train.shape[1]
formula = -np.exp(log_alpha) * res.coef[:n] @ res.q[:n]
print(
    f"hypergradient {float(res.grad):.6g}, finite difference {finite_difference:.6g}, "
    f"-alpha coef.q {formula:.6g}"
)
assert np.isclose(res.grad, finite_difference, rtol=1e-4)
assert np.isclose(res.grad, formula)

# %%
# The held-out loss against ``C`` and the tangent at ``C = 1/4``: in ``log C`` its slope is
# ``-grad``.
Cs = np.logspace(-2, 2, 41)
losses = [hypergradient(inner, outer, -np.log(C), method="cg", tol=1e-10).value for C in Cs]
C0 = np.exp(-log_alpha)
fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
ax.semilogx(Cs, losses, label="held-out log-loss")
local = np.logspace(np.log10(C0) - 0.5, np.log10(C0) + 0.5, 11)
ax.semilogx(
    local,
    res.value - float(res.grad) * np.log(local / C0),
    "--",
    label="tangent: slope -grad in log C",
)
ax.plot([C0], [res.value], "o", color="black")
ax.set_xlabel("C = exp(-log_alpha)")
ax.set_ylabel("validation log-loss")
ax.legend()
plt.show()
