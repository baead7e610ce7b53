"""Per-sample losses of a linear prediction ``z`` (numerically stable, numpy)."""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from ._validation import class_labels

__all__ = [
    "LogisticLoss",
    "SquaredLoss",
    "logistic_curvature",
    "logistic_loss",
    "logistic_loss_and_derivative",
    "logistic_loss_derivative",
    "softmax_cross_entropy",
    "softmax_hessian_product",
    "squared_loss",
    "squared_loss_derivative",
]


def logistic_loss(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``log(1 + exp(-y z))`` per sample, without overflow (labels in {-1, +1})."""
    return np.logaddexp(0.0, -y * z)


def logistic_loss_derivative(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Derivative of :func:`logistic_loss` in ``z``: ``-y sigma(-y z)``."""
    return -y * expit(-y * z)


def logistic_loss_and_derivative(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`logistic_loss` and :func:`logistic_loss_derivative` sharing one exponential."""
    margin = -y * z
    e = np.exp(-np.abs(margin))  # in (0, 1]: never overflows
    loss = np.maximum(margin, 0.0) + np.log1p(e)
    # sigma(margin) = 1 / (1 + exp(-margin)), written with e = exp(-|margin|)
    sigma = np.where(margin >= 0, 1.0, e) / (1.0 + e)
    return loss, -y * sigma


def logistic_curvature(z: np.ndarray) -> np.ndarray:
    """Second derivative of :func:`logistic_loss` in ``z``: ``sigma(z) (1 - sigma(z))``."""
    p = expit(z)
    return p * (1.0 - p)


def softmax_cross_entropy(z: np.ndarray, labels: np.ndarray):
    """Cross-entropy of the softmax of each row of ``z`` against integer ``labels``.

    Returns the per-sample loss ``logsumexp(z_i) - z_{i, y_i}``, its derivative
    ``softmax(z) - onehot(y)`` and the probabilities ``softmax(z)`` (stable for any ``z``).
    """
    shifted = z - z.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    proba = exp / total
    rows = np.arange(z.shape[0])
    loss = np.log(total[:, 0]) - shifted[rows, labels]
    derivative = proba.copy()
    derivative[rows, labels] -= 1.0
    return loss, derivative, proba


def softmax_hessian_product(proba: np.ndarray, dz: np.ndarray) -> np.ndarray:
    """Per-sample Hessian of the cross-entropy in ``z`` applied to ``dz``.

    ``(diag(p) - p p^T) dz = p * dz - p (p . dz)`` for each row.
    """
    pdz = proba * dz
    return pdz - proba * pdz.sum(axis=1, keepdims=True)


def squared_loss(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(y - z)^2 / 2`` per sample."""
    return 0.5 * (y - z) ** 2


def squared_loss_derivative(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Derivative of :func:`squared_loss` in ``z``."""
    return z - y


class LogisticLoss:
    """Mixin for the inner problem and the held-out criterion of logistic regression.

    Encodes the labels (``classes_``; ``n_outputs`` is 1 for two classes, else the number of
    classes) and gives the per-sample loss and its derivative (binary or softmax), so that the
    problem and the criterion cannot disagree. Expects ``self._classes_arg`` to be set.
    """

    def _encode_targets(self, y):
        targets, self.classes_ = class_labels(y, self._classes_arg)
        n_classes = self.classes_.shape[0]
        self.n_outputs = 1 if n_classes == 2 else n_classes
        return targets

    def _loss_and_derivative(self, z):
        if self.n_outputs == 1:
            return logistic_loss_and_derivative(z, self.y)
        loss, derivative, _ = softmax_cross_entropy(z, self.y)
        return loss, derivative


class SquaredLoss:
    """Mixin for the inner problem and the held-out criterion of least squares."""

    def _encode_targets(self, y):
        y = np.asarray(y, dtype=np.float64)
        if not np.all(np.isfinite(y)):
            raise ValueError("y must be finite.")
        return y

    def _loss_and_derivative(self, z):
        return squared_loss(z, self.y), squared_loss_derivative(z, self.y)
