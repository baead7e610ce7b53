"""Per-sample losses of a linear prediction ``z`` (numerically stable, numpy)."""

from __future__ import annotations

import numpy as np
from scipy.special import expit

__all__ = [
    "logistic_curvature",
    "logistic_loss",
    "logistic_loss_and_derivative",
    "logistic_loss_derivative",
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


def squared_loss(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(y - z)^2 / 2`` per sample."""
    return 0.5 * (y - z) ** 2


def squared_loss_derivative(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Derivative of :func:`squared_loss` in ``z``."""
    return z - y
