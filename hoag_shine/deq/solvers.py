"""Batched fixed-point solvers for equilibrium layers: ``z = f(z)`` with ``z`` of shape (batch, D).

Three solvers share one interface, ``solver.solve(f, z0) -> FixedPointResult``:

- :class:`BroydenSolver` wraps the library's batched good Broyden
  (:class:`hoag_shine.solvers.Broyden`) on ``g(z) = f(z) - z`` and keeps its per-sample inverse
  estimate ``B = -I + U V^T`` of ``J_g^{-1}``, which SHINE reuses in the backward pass;
- :class:`Anderson` is Anderson acceleration (type II, regularized least squares);
- :class:`FixedPointIteration` is the damped Picard iteration ``z <- z + beta (f(z) - z)``.

Every solver returns, per sample, its lowest-residual iterate. Samples must be independent
(``f``'s sample ``i`` depends only on ``z``'s sample ``i``), as with group norm but not batch norm.
The same solvers also run the backward (adjoint) fixed point ``w = w J_f + grad``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..solvers import Broyden, BroydenInverse

__all__ = [
    "SOLVERS",
    "Anderson",
    "BroydenSolver",
    "FixedPointIteration",
    "FixedPointResult",
    "FixedPointSolver",
    "make_solver",
]

Map = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class FixedPointResult:
    """What a fixed-point solver returns.

    Attributes
    ----------
    z : Tensor of shape (batch, D)
        Lowest-residual iterate of each sample.
    residual : Tensor of shape (batch,)
        ``||f(z) - z||`` per sample at ``z``.
    n_iter : int
        Iterations (one evaluation of ``f`` each, after the evaluation at ``z0``).
    converged : bool
        True when every sample's residual is at most the solver's ``tol``.
    inverse : BroydenInverse or None
        Broyden only: per-sample estimate ``B`` of ``J_g^{-1}``, ``g(z) = f(z) - z``, built up to
        each sample's returned iterate. ``None`` for the other solvers.
    """

    z: torch.Tensor
    residual: torch.Tensor
    n_iter: int
    converged: bool
    inverse: BroydenInverse | None = field(default=None, repr=False)

    @property
    def relative_residual(self) -> torch.Tensor:
        """``||f(z) - z|| / ||z||`` per sample (``||z||`` floored at the dtype's tiny)."""
        scale = torch.linalg.vector_norm(self.z, dim=1).clamp_min(torch.finfo(self.z.dtype).tiny)
        return self.residual / scale


@dataclass
class FixedPointSolver:
    """Base class of the batched fixed-point solvers.

    Parameters
    ----------
    tol : float
        Absolute tolerance on each sample's residual norm ``||f(z) - z||``; the solver stops when
        every sample of the batch is below it.
    max_iter : int
        Maximum number of iterations (evaluations of ``f`` after the first).
    """

    tol: float = 1e-4
    max_iter: int = 30

    name = "base"
    provides_inverse = False

    def __post_init__(self):
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0):
            raise ValueError(f"tol must be a non-negative number, got {self.tol!r}.")
        if not (isinstance(self.max_iter, int) and self.max_iter >= 0):
            raise ValueError(f"max_iter must be a non-negative integer, got {self.max_iter!r}.")

    def solve(self, f: Map, z0: torch.Tensor) -> FixedPointResult:
        """Find ``z = f(z)`` for every sample of a batch.

        Parameters
        ----------
        f : callable
            Batched map ``(batch, D) -> (batch, D)``; row ``i`` of the output may only depend on
            row ``i`` of the input. Called without gradient tracking by :class:`DEQ`.
        z0 : Tensor of shape (batch, D)
            Starting point (not modified).

        Returns
        -------
        FixedPointResult
        """
        raise NotImplementedError


@dataclass
class BroydenSolver(FixedPointSolver):
    """Good Broyden on ``g(z) = f(z) - z`` (the library's :class:`~hoag_shine.solvers.Broyden`).

    Unit steps, no line search; the per-sample inverse estimate ``B = -I + U V^T`` of
    ``J_g^{-1}`` is returned in :attr:`FixedPointResult.inverse`.

    Parameters
    ----------
    tol : float
        Absolute tolerance on each sample's residual norm ``||f(z) - z||``; the solver stops when
        every sample of the batch is below it.
    max_iter : int
        Maximum number of iterations, also the largest rank of the inverse estimate.
    """

    name = "broyden"
    provides_inverse = True

    def solve(self, f: Map, z0: torch.Tensor) -> FixedPointResult:
        state = Broyden(tol=self.tol, max_iter=self.max_iter).run(lambda z: f(z) - z, z0)
        return FixedPointResult(
            z=state.x,
            residual=state.residual_norm,
            n_iter=state.n_iter,
            converged=state.converged,
            inverse=state.inverse,
        )


class _Best:
    """Per-sample lowest-residual iterate."""

    def __init__(self, z: torch.Tensor, res: torch.Tensor):
        self.z, self.res = z.clone(), _finite_or_inf(res)

    def update(self, z: torch.Tensor, res: torch.Tensor) -> None:
        better = _finite_or_inf(res) < self.res
        self.z = torch.where(better[:, None], z, self.z)
        self.res = torch.where(better, res, self.res)

    def done(self, tol: float) -> bool:
        return float(self.res.max()) <= tol


@dataclass
class FixedPointIteration(FixedPointSolver):
    """Damped fixed-point (Picard) iteration ``z <- z + damping (f(z) - z)``.

    Parameters
    ----------
    tol, max_iter
        See :class:`FixedPointSolver`.
    damping : float
        Step ``beta`` in (0, 1]; 1 is the plain iteration ``z <- f(z)``.
    """

    damping: float = 1.0

    name = "fixed-point"

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.damping <= 1:
            raise ValueError(f"damping must be in (0, 1], got {self.damping!r}.")

    def solve(self, f: Map, z0: torch.Tensor) -> FixedPointResult:
        z = z0.clone()
        g = f(z) - z
        best = _Best(z, _norm(g))
        n_iter = 0
        for k in range(self.max_iter):
            if best.done(self.tol):
                break
            z = z + self.damping * g
            g = f(z) - z
            best.update(z, _norm(g))
            n_iter = k + 1
        return FixedPointResult(best.z, best.res, n_iter, best.done(self.tol))


@dataclass
class Anderson(FixedPointSolver):
    """Anderson acceleration (type II) with a regularized least-squares mixing.

    Parameters
    ----------
    tol, max_iter
        See :class:`FixedPointSolver`.
    memory : int
        Number of past iterates mixed, ``m``.
    regularization : float
        Ridge term of the mixing problem, relative to the mean squared residual of the memory.
    damping : float
        Mixing ``beta`` in (0, 1] between the images ``f(z_j)`` (1) and the iterates ``z_j`` (0).
    """

    memory: int = 5
    regularization: float = 1e-4
    damping: float = 1.0

    name = "anderson"

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.memory, int) and self.memory >= 1):
            raise ValueError(f"memory must be a positive integer, got {self.memory!r}.")
        if not 0 < self.damping <= 1:
            raise ValueError(f"damping must be in (0, 1], got {self.damping!r}.")

    def solve(self, f: Map, z0: torch.Tensor) -> FixedPointResult:
        batch, n = z0.shape
        m = self.memory
        xs = z0.new_zeros((batch, m, n))
        fs = z0.new_zeros((batch, m, n))
        xs[:, 0] = z0
        fs[:, 0] = f(z0)
        best = _Best(z0, _norm(fs[:, 0] - z0))
        n_iter = 0
        for k in range(1, self.max_iter + 1):
            if best.done(self.tol):
                break
            size = min(k, m)
            if size == 1:
                mixed_f, mixed_x = fs[:, 0], xs[:, 0]
            else:
                g = (fs[:, :size] - xs[:, :size]).to(torch.float64)
                gram = g @ g.transpose(1, 2)
                scale = torch.diagonal(gram, dim1=1, dim2=2).mean(dim=1)
                scale = scale.clamp_min(torch.finfo(torch.float64).tiny)
                eye = torch.eye(size, dtype=torch.float64, device=z0.device)
                gram = gram + (self.regularization * scale)[:, None, None] * eye
                ones = torch.ones((batch, size, 1), dtype=torch.float64, device=z0.device)
                coef = torch.linalg.solve(gram, ones)
                alpha = (coef / coef.sum(dim=1, keepdim=True)).to(z0.dtype)
                mixed_f = (alpha.transpose(1, 2) @ fs[:, :size])[:, 0]
                mixed_x = (alpha.transpose(1, 2) @ xs[:, :size])[:, 0]
            z = self.damping * mixed_f + (1 - self.damping) * mixed_x
            fz = f(z)
            slot = k % m
            xs[:, slot], fs[:, slot] = z, fz
            best.update(z, _norm(fz - z))
            n_iter = k
        return FixedPointResult(best.z, best.res, n_iter, best.done(self.tol))


SOLVERS: dict[str, type[FixedPointSolver]] = {
    "broyden": BroydenSolver,
    "anderson": Anderson,
    "fixed-point": FixedPointIteration,
}


def make_solver(spec: str | FixedPointSolver, **params) -> FixedPointSolver:
    """A solver from its name (``"broyden"``, ``"anderson"``, ``"fixed-point"``) or an instance.

    Parameters
    ----------
    spec : str or FixedPointSolver
        Name or instance. An instance is returned as is (``params`` are ignored).
    **params
        Constructor arguments (``tol``, ``max_iter``, ...) when ``spec`` is a name.

    Returns
    -------
    FixedPointSolver
    """
    if isinstance(spec, FixedPointSolver):
        return spec
    if isinstance(spec, str):
        key = spec.strip().lower().replace("_", "-")
        key = {"picard": "fixed-point", "fixedpoint": "fixed-point"}.get(key, key)
        if key in SOLVERS:
            return SOLVERS[key](**params)
    raise ValueError(
        f"Unknown fixed-point solver {spec!r}; use one of {sorted(SOLVERS)} or a "
        "FixedPointSolver instance."
    )


def _norm(g: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(g, dim=1)


def _finite_or_inf(res: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(res), res, torch.full_like(res, math.inf))
