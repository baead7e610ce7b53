"""Outer criteria: held-out losses of a linear model's coefficient vector.

Values are plain (weighted) means, equal to scikit-learn's ``log_loss`` and
``mean_squared_error`` on the held-out data. A coefficient ending with an intercept (one entry
more than there are features) is understood as such.
"""

from __future__ import annotations

import numpy as np

from ._linear import LinearDesign
from ._losses import logistic_loss, logistic_loss_derivative, squared_loss, squared_loss_derivative
from ._validation import binary_labels, check_data, check_sample_weight

__all__ = ["HeldOutLogLoss", "HeldOutMSE"]


class _HeldOutCriterion:
    """Weighted mean of a per-sample loss over held-out data."""

    #: Factor between the per-sample loss helper and the reported loss.
    _scale = 1.0

    def __init__(self, X, y, *, sample_weight=None):
        X, y = check_data(X, y)
        self.design = LinearDesign(X)
        self.n_samples, self.n_features = X.shape
        weights = check_sample_weight(sample_weight, self.n_samples, np.float64)
        if weights is None:
            weights = np.ones(self.n_samples)
        self._weights = weights / weights.sum()
        self.y = self._encode_targets(y)

    def _encode_targets(self, y):
        raise NotImplementedError

    def _loss(self, z):
        raise NotImplementedError

    def _loss_derivative(self, z):
        raise NotImplementedError

    def value(self, w) -> float:
        """Held-out loss of the coefficient ``w``."""
        z = self.design.decision(np.asarray(w, dtype=np.float64))
        return self._scale * float(np.dot(self._weights, self._loss(z)))

    def grad(self, w) -> np.ndarray:
        """Gradient of the held-out loss in ``w``."""
        return self.value_and_grad(w)[1]

    def value_and_grad(self, w) -> tuple[float, np.ndarray]:
        """Held-out loss and its gradient in ``w``."""
        w = np.asarray(w, dtype=np.float64)
        intercept = self.design.has_intercept(w)
        z = self.design.decision(w)
        value = self._scale * float(np.dot(self._weights, self._loss(z)))
        residual = self._scale * self._weights * self._loss_derivative(z)
        return value, self.design.transpose_product(residual, intercept)


class HeldOutLogLoss(_HeldOutCriterion):
    """Mean held-out logistic loss ``mean_i log(1 + exp(-y_i x_i . w))``.

    Equal to :func:`sklearn.metrics.log_loss` of the model's probabilities.

    Parameters
    ----------
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Held-out data.
    y : array-like of shape (n_samples,)
        Held-out labels.
    classes : array-like of length 2, optional
        The two classes in scikit-learn's order (``classes[1]`` positive). Needed when ``y``
        holds a single class; must match the inner problem's ``classes_``.
    sample_weight : array-like of shape (n_samples,), optional
        Weights of the mean.
    """

    def __init__(self, X, y, *, classes=None, sample_weight=None):
        self._classes_arg = classes
        super().__init__(X, y, sample_weight=sample_weight)

    def _encode_targets(self, y):
        signs, self.classes_ = binary_labels(y, self._classes_arg)
        return signs

    def _loss(self, z):
        return logistic_loss(z, self.y)

    def _loss_derivative(self, z):
        return logistic_loss_derivative(z, self.y)


class HeldOutMSE(_HeldOutCriterion):
    """Mean held-out squared error ``mean_i (y_i - x_i . w)^2`` (no factor 1/2).

    Equal to :func:`sklearn.metrics.mean_squared_error`.

    Parameters
    ----------
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Held-out data.
    y : array-like of shape (n_samples,)
        Held-out targets.
    sample_weight : array-like of shape (n_samples,), optional
        Weights of the mean.
    """

    _scale = 2.0

    def _encode_targets(self, y):
        y = np.asarray(y, dtype=np.float64)
        if not np.all(np.isfinite(y)):
            raise ValueError("y must be finite.")
        return y

    def _loss(self, z):
        return squared_loss(z, self.y)

    def _loss_derivative(self, z):
        return squared_loss_derivative(z, self.y)
