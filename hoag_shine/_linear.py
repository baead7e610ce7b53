"""Products with a design matrix for linear models whose coefficient may end with an intercept."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["LinearDesign"]


class LinearDesign:
    """A design matrix ``X`` (dense or CSR) and the two products a linear model needs.

    A coefficient vector ``w`` has ``n_features`` entries, or ``n_features + 1`` when the model
    has an intercept, stored last.
    """

    def __init__(self, X):
        self.X = X
        self.n_samples, self.n_features = X.shape
        # X.T of a CSR matrix is CSC, whose product scatters; a CSR copy of the transpose
        # gathers and is faster (one extra copy of the nonzeros, still sparse).
        self._XT = X.T.tocsr() if sp.issparse(X) else X.T

    def has_intercept(self, w: np.ndarray) -> bool:
        if w.shape == (self.n_features,):
            return False
        if w.shape == (self.n_features + 1,):
            return True
        raise ValueError(
            f"Coefficient of shape {w.shape} does not fit {self.n_features} features "
            f"(expected ({self.n_features},) or ({self.n_features + 1},) with an intercept)."
        )

    def decision(self, w: np.ndarray) -> np.ndarray:
        """Linear prediction ``X coef + intercept``."""
        if self.has_intercept(w):
            return self.X @ w[:-1] + w[-1]
        return self.X @ w

    def transpose_product(self, r: np.ndarray, intercept: bool) -> np.ndarray:
        """``X^T r``, followed by ``sum(r)`` when the model has an intercept."""
        g = self._XT @ r
        if intercept:
            return np.append(g, r.sum())
        return np.asarray(g)
