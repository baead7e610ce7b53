"""Outer criteria: held-out losses of a linear model's coefficient vector.

Values are plain (weighted) means, equal to scikit-learn's ``log_loss`` and
``mean_squared_error`` on the held-out data. A coefficient ending with an intercept (one entry
more than there are features) is understood as such.
"""

from __future__ import annotations

import numpy as np

from ._linear import LinearDesign
from ._losses import LogisticLoss, SquaredLoss
from ._validation import check_data, check_sample_weight

__all__ = ["HeldOutLogLoss", "HeldOutMSE"]


class _HeldOutCriterion:
    """Weighted mean of a per-sample loss over held-out data."""

    #: Factor between the per-sample loss helper and the reported loss.
    _scale = 1.0
    #: Number of linear outputs of the model (see :class:`~hoag_shine._linear.LinearDesign`).
    n_outputs = 1

    def __init__(self, X, y, *, sample_weight=None):
        X, y = check_data(X, y)
        self.n_samples, self.n_features = X.shape
        weights = check_sample_weight(sample_weight, self.n_samples, np.float64)
        if weights is None:
            weights = np.ones(self.n_samples)
        self._weights = weights / weights.sum()
        self.y = self._encode_targets(y)
        self.design = LinearDesign(X, self.n_outputs)

    def _encode_targets(self, y):
        raise NotImplementedError

    def _loss_and_derivative(self, z):
        raise NotImplementedError

    def value(self, w) -> float:
        """Held-out loss of the coefficient ``w``.

        Parameters
        ----------
        w : ndarray of shape (n_params,)
            Coefficient vector in the layout of the inner problem (an intercept, when the model
            has one, at the end).

        Returns
        -------
        float
        """
        z = self.design.decision(np.asarray(w, dtype=np.float64))
        return self._scale * float(np.dot(self._weights, self._loss_and_derivative(z)[0]))

    def grad(self, w) -> np.ndarray:
        """Gradient of the held-out loss in ``w``.

        Parameters
        ----------
        w : ndarray of shape (n_params,)
            Coefficient vector in the layout of the inner problem (an intercept, when the model
            has one, at the end).

        Returns
        -------
        ndarray of the shape of ``w``
        """
        return self.value_and_grad(w)[1]

    def value_and_grad(self, w) -> tuple[float, np.ndarray]:
        """Held-out loss and its gradient in ``w``.

        Parameters
        ----------
        w : ndarray of shape (n_params,)
            Coefficient vector in the layout of the inner problem (an intercept, when the model
            has one, at the end).

        Returns
        -------
        value : float
        grad : ndarray of the shape of ``w``
        """
        w = np.asarray(w, dtype=np.float64)
        intercept = self.design.has_intercept(w)
        z = self.design.decision(w)
        loss, derivative = self._loss_and_derivative(z)
        value = self._scale * float(np.dot(self._weights, loss))
        weights = self._weights if derivative.ndim == 1 else self._weights[:, np.newaxis]
        residual = self._scale * weights * derivative
        return value, self.design.transpose_product(residual, intercept)


class HeldOutLogLoss(LogisticLoss, _HeldOutCriterion):
    """Mean held-out logistic loss ``mean_i log(1 + exp(-y_i x_i^T w))``.

    Equal to :func:`sklearn.metrics.log_loss` of the model's probabilities. With three or more
    classes it is the multinomial cross-entropy of the softmax, for the coefficient layout of
    :class:`~hoag_shine.problems.LogisticRegressionProblem`.

    Parameters
    ----------
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Held-out data.
    y : array-like of shape (n_samples,)
        Held-out labels.
    classes : array-like, optional
        The classes in scikit-learn's order (with two, ``classes[1]`` is positive). Needed
        when ``y`` lacks some class; must match the inner problem's ``classes_``.
    sample_weight : array-like of shape (n_samples,), optional
        Weights of the mean.
    """

    def __init__(self, X, y, *, classes=None, sample_weight=None):
        self._classes_arg = classes
        super().__init__(X, y, sample_weight=sample_weight)


class HeldOutMSE(SquaredLoss, _HeldOutCriterion):
    """Mean held-out squared error ``mean_i (y_i - x_i^T w)^2`` (no factor 1/2).

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
