"""Backward strategies of an equilibrium layer: estimates of the adjoint ``w``.

At a fixed point ``z* = f(z*, x)`` and for an upstream gradient ``grad = dl/dz*`` (a row per
sample), the exact adjoint solves ``w = w J_f + grad``, i.e. ``w = grad (I - J_f)^{-1}``; the
gradient with respect to the parameters and the input is then ``w df/dtheta``, one
vector-Jacobian product through ``f``. The strategies differ in how they get ``w``:

- :class:`IFT` (``"ift"``): iterative solve of ``w = w J_f + grad`` with vector-Jacobian
  products (Broyden, Anderson or fixed-point iteration), to a tolerance relative to ``||grad||``.
- :class:`Shine` (``"shine"``): ``w = -B^T grad`` with the forward Broyden inverse
  ``B ~ J_g^{-1}``, ``g(z) = f(z) - z`` (so ``-B ~ (I - J_f)^{-1}``): no extra product.
- :class:`JacobianFree` (``"jacobian-free"``): ``w = grad``, i.e. ``(I - J_f)^{-1} ~ I``.
- :class:`Refine` (``"refine(k)"``): ``k`` backward solver steps started from SHINE's ``w``.
- :class:`Fallback` (``"fallback"``): SHINE, but per sample Jacobian-free where SHINE's
  ``||w||`` exceeds ``threshold * ||grad||`` (or is not finite).

A strategy is a callable ``strategy(grad, vjp, forward) -> BackwardResult`` where ``vjp(v)`` is
``v J_f`` per sample and ``forward`` is the :class:`~hoag_shine.deq.solvers.FixedPointResult` of
the forward pass. Custom strategies subclass :class:`BackwardStrategy`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from .solvers import FixedPointResult, FixedPointSolver, make_solver

__all__ = [
    "BACKWARD_METHODS",
    "IFT",
    "BackwardResult",
    "BackwardStrategy",
    "Fallback",
    "JacobianFree",
    "Refine",
    "Shine",
    "make_backward",
]

BACKWARD_METHODS = ("ift", "shine", "jacobian-free", "refine(k)", "fallback")

VJP = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class BackwardResult:
    """An adjoint estimate and how it was obtained.

    Attributes
    ----------
    w : Tensor of shape (batch, D)
        The estimate of ``grad (I - J_f)^{-1}``.
    method : str
        Name of the strategy that produced it.
    n_iter : int
        Backward solver iterations (vector-Jacobian products after the first), 0 if none.
    residual : float or None
        Largest per-sample ``||w - w J_f - grad|| / ||grad||`` when a solver ran, else None.
    fallback_rate : float or None
        Fraction of the samples that fell back to Jacobian-free (fallback strategies only).
    """

    w: torch.Tensor
    method: str
    n_iter: int = 0
    residual: float | None = None
    fallback_rate: float | None = None


class BackwardStrategy:
    """Base class: ``strategy(grad, vjp, forward) -> BackwardResult``."""

    name: ClassVar[str] = "base"
    #: True when the strategy reads the forward Broyden inverse (needs a Broyden forward).
    needs_inverse: ClassVar[bool] = False

    @property
    def method(self) -> str:
        """Name reported in the statistics."""
        return self.name

    def __call__(
        self, grad: torch.Tensor, vjp: VJP, forward: FixedPointResult
    ) -> BackwardResult:  # pragma: no cover - interface
        raise NotImplementedError


def solve_adjoint(
    grad: torch.Tensor,
    vjp: VJP,
    solver: FixedPointSolver,
    w0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int, float]:
    """Solve ``w = w J_f + grad`` per sample, with a tolerance relative to each ``||grad_i||``.

    The system is linear and per sample, so each sample is rescaled by ``||grad_i||``: the
    solver's absolute ``tol`` then reads as a relative one, and its iterates are unchanged up
    to the scaling.

    Parameters
    ----------
    grad : Tensor of shape (batch, D)
        Upstream gradient.
    vjp : callable
        ``v -> v J_f`` per sample.
    solver : FixedPointSolver
        Solver of the fixed point ``w = vjp(w) + grad``.
    w0 : Tensor, optional
        Starting point (default ``grad``).

    Returns
    -------
    w : Tensor of shape (batch, D)
    n_iter : int
    residual : float
        Largest relative residual ``||w - w J_f - grad|| / ||grad||``.
    """
    scale = torch.linalg.vector_norm(grad, dim=1, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    g = grad / scale
    start = g if w0 is None else w0 / scale
    result = solver.solve(lambda w: vjp(w) + g, start)
    return result.z * scale, result.n_iter, float(result.residual.max())


@dataclass
class IFT(BackwardStrategy):
    """Exact backward: iterative solve of ``w = w J_f + grad`` (implicit function theorem).

    Parameters
    ----------
    solver : str or FixedPointSolver
        ``"broyden"`` (default), ``"anderson"``, ``"fixed-point"`` or an instance; its ``tol``
        and ``max_iter`` are replaced by the ones below.
    tol : float
        Per-sample tolerance on ``||w - w J_f - grad||``, relative to ``||grad||``.
    max_iter : int
        Maximum solver iterations (vector-Jacobian products).
    """

    solver: str | FixedPointSolver = "broyden"
    tol: float = 1e-6
    max_iter: int = 50

    name: ClassVar[str] = "ift"

    def _solver(self, max_iter: int | None = None) -> FixedPointSolver:
        steps = self.max_iter if max_iter is None else max_iter
        if isinstance(self.solver, FixedPointSolver):
            return dataclasses.replace(self.solver, tol=self.tol, max_iter=steps)
        return make_solver(self.solver, tol=self.tol, max_iter=steps)

    def __call__(self, grad, vjp, forward) -> BackwardResult:
        w, n_iter, residual = solve_adjoint(grad, vjp, self._solver())
        return BackwardResult(w, self.method, n_iter=n_iter, residual=residual)


@dataclass
class Shine(BackwardStrategy):
    """SHINE: ``w = -B^T grad`` from the forward Broyden inverse ``B ~ J_g^{-1}``.

    With ``g(z) = f(z) - z``, ``J_g = J_f - I`` and the exact adjoint is
    ``w^T = grad^T (I - J_f)^{-1} = -grad^T J_g^{-1}``, i.e. ``w = -J_g^{-T} grad``. The estimate
    uses ``B``'s terms up to each sample's lowest-residual forward iterate.
    """

    name: ClassVar[str] = "shine"
    needs_inverse: ClassVar[bool] = True

    def __call__(self, grad, vjp, forward) -> BackwardResult:
        return BackwardResult(_shine(grad, forward), self.method)


@dataclass
class JacobianFree(BackwardStrategy):
    """Jacobian-free backward: ``w = grad`` (Fung et al., 2022)."""

    name: ClassVar[str] = "jacobian-free"

    def __call__(self, grad, vjp, forward) -> BackwardResult:
        return BackwardResult(grad, self.method)


@dataclass
class Fallback(BackwardStrategy):
    """SHINE with a per-sample Jacobian-free fallback.

    Parameters
    ----------
    threshold : float
        Sample ``i`` uses ``w_i = grad_i`` when SHINE's ``||w_i|| > threshold * ||grad_i||`` or
        ``w_i`` is not finite (1.8 in the SHINE reference code).
    """

    threshold: float = 1.8

    name: ClassVar[str] = "fallback"
    needs_inverse: ClassVar[bool] = True

    def __post_init__(self):
        if not self.threshold > 0:
            raise ValueError(f"threshold must be positive, got {self.threshold!r}.")

    def __call__(self, grad, vjp, forward) -> BackwardResult:
        w = _shine(grad, forward)
        w_norm = torch.linalg.vector_norm(w, dim=1)
        g_norm = torch.linalg.vector_norm(grad, dim=1)
        bad = ~torch.isfinite(w).all(dim=1) | (w_norm > self.threshold * g_norm)
        w = torch.where(bad[:, None], grad, w)
        rate = float(bad.to(torch.float64).mean()) if bad.numel() else 0.0
        return BackwardResult(w, self.method, fallback_rate=rate)


@dataclass
class Refine(BackwardStrategy):
    """``steps`` iterations of the backward solver started from another estimate (SHINE).

    Parameters
    ----------
    steps : int
        Solver iterations (each one vector-Jacobian product, plus one at the start).
    solver : str or FixedPointSolver
        Backward solver, as in :class:`IFT`.
    start : str or BackwardStrategy
        Starting estimate (default ``"shine"``; ``"fallback"`` starts from the guarded one).
    tol : float
        Relative tolerance at which the refinement stops early.
    """

    steps: int = 5
    solver: str | FixedPointSolver = "broyden"
    start: str | BackwardStrategy = "shine"
    tol: float = 1e-8

    def __post_init__(self):
        if not (isinstance(self.steps, int) and self.steps >= 0):
            raise ValueError(f"steps must be a non-negative integer, got {self.steps!r}.")
        self.start = make_backward(self.start)

    @property
    def name(self) -> str:  # type: ignore[override]
        """``"refine(k)"`` with ``k`` the number of steps."""
        return f"refine({self.steps})"

    @property
    def needs_inverse(self) -> bool:  # type: ignore[override]
        """True when the starting estimate reads the forward Broyden inverse."""
        return self.start.needs_inverse

    def __call__(self, grad, vjp, forward) -> BackwardResult:
        first = self.start(grad, vjp, forward)
        if self.steps == 0:
            return dataclasses.replace(first, method=self.method)
        solver = IFT(self.solver, tol=self.tol, max_iter=self.steps)._solver()
        w, n_iter, residual = solve_adjoint(grad, vjp, solver, w0=first.w)
        return BackwardResult(
            w, self.method, n_iter=n_iter, residual=residual, fallback_rate=first.fallback_rate
        )


def make_backward(
    spec: str | BackwardStrategy,
    *,
    tol: float = 1e-6,
    max_iter: int = 50,
    threshold: float = 1.8,
    refine_solver: str | FixedPointSolver = "broyden",
) -> BackwardStrategy:
    """A backward strategy from its name or an instance.

    Parameters
    ----------
    spec : str or BackwardStrategy
        ``"ift"``, ``"shine"``, ``"jacobian-free"`` (alias ``"jfb"``), ``"fallback"`` (alias
        ``"shine-fallback"``), ``"refine"`` or ``"refine(k)"`` (default ``k = 5``), or an
        instance (returned as is).
    tol, max_iter : float, int
        Relative tolerance and iteration cap of the ``ift`` solve.
    threshold : float
        Fallback threshold of ``"fallback"``.
    refine_solver : str or FixedPointSolver
        Solver of ``"refine(k)"``.

    Returns
    -------
    BackwardStrategy
    """
    if isinstance(spec, BackwardStrategy):
        return spec
    if isinstance(spec, str):
        key = spec.strip().lower().replace("_", "-").replace(" ", "")
        if key in ("ift", "exact", "implicit"):
            return IFT(tol=tol, max_iter=max_iter)
        if key == "shine":
            return Shine()
        if key in ("jacobian-free", "jfb"):
            return JacobianFree()
        if key in ("fallback", "shine-fallback"):
            return Fallback(threshold=threshold)
        match = re.fullmatch(r"(?:shine-)?refine(?:\((\d+)\))?", key)
        if match:
            steps = int(match.group(1)) if match.group(1) else 5
            return Refine(steps, solver=refine_solver)
    raise ValueError(
        f"Unknown backward strategy {spec!r}; use one of {list(BACKWARD_METHODS)} or a "
        "BackwardStrategy instance."
    )


def _shine(grad: torch.Tensor, forward: FixedPointResult) -> torch.Tensor:
    if forward.inverse is None:
        raise RuntimeError(
            "SHINE needs the forward Broyden inverse: use solver='broyden' for the forward pass."
        )
    return -forward.inverse.rmatvec(grad)
