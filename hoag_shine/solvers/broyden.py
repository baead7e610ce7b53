"""Batched "good" Broyden method on the inverse Jacobian, for root problems ``g(z) = 0``.

Each sample of the batch keeps its own low-rank inverse estimate ``B = -I + U V^T`` of
``J_g^{-1}`` (for a fixed point ``z = f(z)``, ``g(z) = f(z) - z`` and ``J_g = J_f - I``, hence the
``-I`` start), updated by Sherman-Morrison rank-one steps. The solver returns, per sample, the
lowest-residual iterate and the inverse estimate built up to that iterate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._array import is_numpy, namespace

__all__ = ["Broyden", "BroydenInverse", "BroydenState"]


class BroydenInverse:
    """Per-sample inverse-Jacobian estimate ``B = -I + U V^T``.

    Parameters
    ----------
    u, v : array of shape (batch, rank, n)
        Low-rank factors (rows are the rank-one terms).
    counts : array of int, shape (batch,)
        Number of leading terms that are valid for each sample.
    squeeze : bool
        True when the problem was a single vector: products then take and return 1-D arrays.
    """

    def __init__(self, u, v, counts, *, squeeze: bool = False):
        self.u, self.v, self.counts, self.squeeze = u, v, counts, squeeze
        xp = namespace(u)
        rank = u.shape[1]
        positions = xp.arange(rank, device=_device(u))
        self._mask = xp.astype(positions[None, :] < counts[:, None], u.dtype)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, n)``: the shape of each sample's estimate."""
        n = self.u.shape[2]
        return (n, n)

    def _apply(self, x, left, right):
        xp = namespace(x)
        batch = x[None, :] if self.squeeze else x
        coef = xp.matmul(right, batch[:, :, None]) * self._mask[:, :, None]
        out = -batch + xp.matmul(xp.matrix_transpose(left), coef)[:, :, 0]
        return out[0, :] if self.squeeze else out

    def matvec(self, x):
        """``B x`` per sample.

        Parameters
        ----------
        x : array of shape (batch, n), or (n,) for a single problem
            The vectors to multiply, one per sample.

        Returns
        -------
        array of the shape of ``x``
        """
        return self._apply(x, self.u, self.v)

    def rmatvec(self, x):
        """``B^T x`` per sample; SHINE's backward for equilibrium models is ``-rmatvec``.

        Parameters
        ----------
        x : array of shape (batch, n), or (n,) for a single problem
            The vectors to multiply, one per sample.

        Returns
        -------
        array of the shape of ``x``
        """
        return self._apply(x, self.v, self.u)

    __call__ = matvec

    def __matmul__(self, x):
        return self.matvec(x)

    def as_linear_operator(self):
        """A :class:`scipy.sparse.linalg.LinearOperator` (single numpy problem only)."""
        from scipy.sparse.linalg import LinearOperator

        if not (self.squeeze and is_numpy(namespace(self.u))):
            raise TypeError("as_linear_operator needs a single (unbatched) numpy problem.")
        return LinearOperator(
            self.shape, matvec=self.matvec, rmatvec=self.rmatvec, dtype=self.u.dtype
        )


@dataclass
class BroydenState:
    """What :meth:`Broyden.run` returns.

    Attributes
    ----------
    x : array
        Lowest-residual iterate of each sample (same shape as ``z0``).
    residual_norm : array of shape (batch,)
        ``||g(x)||`` per sample (a 0-d array for a single problem).
    n_iter : int
        Iterations (one evaluation of ``g`` each, plus the initial one).
    converged : bool
        True when every sample's residual is at most ``tol``.
    inverse : BroydenInverse
        Inverse-Jacobian estimate at ``x`` (the terms up to each sample's best iterate).
    """

    x: Any
    residual_norm: Any
    n_iter: int
    converged: bool
    inverse: BroydenInverse = field(repr=False)

    @property
    def inverse_jacobian(self):
        """The estimate of ``J_g^{-1}``: a LinearOperator for a single numpy problem."""
        if self.inverse.squeeze and is_numpy(namespace(self.x)):
            return self.inverse.as_linear_operator()
        return self.inverse


@dataclass
class Broyden:
    """Good Broyden's method with unit steps.

    Parameters
    ----------
    tol : float
        Absolute tolerance on each sample's residual norm ``||g(z)||``.
    max_iter : int
        Maximum iterations; also the maximum rank of the inverse estimate.
    """

    tol: float = 1e-6
    max_iter: int = 50

    def run(self, g: Callable[[Any], Any], z0) -> BroydenState:
        """Solve ``g(z) = 0`` from ``z0``, each sample of the batch on its own.

        Parameters
        ----------
        g : callable
            ``z -> g(z)`` on arrays of the shape of ``z0`` (row ``i`` of the output may only
            depend on row ``i`` of the input).
        z0 : array of shape (batch, n), or (n,) for one problem
            Starting point (not modified).

        Returns
        -------
        BroydenState
        """
        xp = namespace(z0)
        squeeze = z0.ndim == 1
        z = (z0[None, :] if squeeze else z0) * 1.0
        batch, n = z.shape

        def residual(point):
            out = g(point[0, :] if squeeze else point)
            return out[None, :] if squeeze else out

        dev = _device(z)
        u = xp.zeros((batch, self.max_iter, n), dtype=z.dtype, device=dev)
        v = xp.zeros((batch, self.max_iter, n), dtype=z.dtype, device=dev)
        gz = residual(z)
        res = xp.linalg.vector_norm(gz, axis=-1)
        best_z, best_res = z * 1.0, res * 1.0
        best_count = xp.zeros((batch,), dtype=xp.int64, device=dev)
        n_iter = 0

        for k in range(self.max_iter):
            if float(xp.max(best_res)) <= self.tol:
                break
            current = BroydenInverse(u[:, :k], v[:, :k], xp.full((batch,), k, device=dev))
            dz = -current.matvec(gz)
            z_new = z + dz
            g_new = residual(z_new)
            dg = g_new - gz
            b_dg = current.matvec(dg)
            denom = xp.sum(dz * b_dg, axis=-1)
            safe = xp.abs(denom) > 1e-30
            denom = xp.where(safe, denom, xp.ones_like(denom))
            u[:, k, :] = xp.where(safe[:, None], (dz - b_dg) / denom[:, None], 0.0)
            v[:, k, :] = current.rmatvec(dz)
            z, gz = z_new, g_new
            res = xp.linalg.vector_norm(gz, axis=-1)
            res = xp.where(xp.isnan(res), xp.full_like(res, math.inf), res)
            better = res < best_res
            best_z = xp.where(better[:, None], z, best_z)
            best_res = xp.where(better, res, best_res)
            best_count = xp.where(better, xp.full_like(best_count, k + 1), best_count)
            n_iter = k + 1

        inverse = BroydenInverse(u[:, :n_iter], v[:, :n_iter], best_count, squeeze=squeeze)
        return BroydenState(
            x=best_z[0, :] if squeeze else best_z,
            residual_norm=best_res[0] if squeeze else best_res,
            n_iter=n_iter,
            converged=bool(float(xp.max(best_res)) <= self.tol),
            inverse=inverse,
        )


def _device(a):
    from array_api_compat import device

    return device(a)
