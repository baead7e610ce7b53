"""Deep equilibrium models with implicit and SHINE backward passes.

- :class:`DEQ` turns a module ``f(z, x)`` into an equilibrium layer ``z* = f(z*, x)`` (state: a
  tensor or a list/tuple of tensors), solved by batched Broyden (:class:`BroydenSolver`, on the
  library's :class:`hoag_shine.solvers.Broyden`), :class:`Anderson` or
  :class:`FixedPointIteration`, and differentiated by a backward strategy: ``"ift"``,
  ``"shine"``, ``"jacobian-free"``, ``"refine(k)"`` or ``"fallback"``
  (:mod:`hoag_shine.deq.backward`).
- :class:`MDEQ` is a small multiscale equilibrium classifier built on it; ready-made sizes are in
  :mod:`hoag_shine.deq.configs`.
- :func:`compare_backward` measures the cosine and norm ratio of adjoint estimates against an
  exact solve.

Conventions: ``g(z) = f(z) - z``; Broyden's ``B`` estimates ``J_g^{-1}``; the exact adjoint is
``w = grad (I - J_f)^{-1}`` and SHINE's estimate is ``w = -B^T grad``.
"""

from ._state import StatePacker
from .backward import (
    BACKWARD_METHODS,
    IFT,
    BackwardResult,
    BackwardStrategy,
    Fallback,
    JacobianFree,
    Refine,
    Shine,
    make_backward,
)
from .layer import DEQ, BackwardComparison, compare_backward
from .mdeq import MDEQ, MDEQCell
from .solvers import (
    SOLVERS,
    Anderson,
    BroydenSolver,
    FixedPointIteration,
    FixedPointResult,
    FixedPointSolver,
    make_solver,
)

__all__ = [
    "BACKWARD_METHODS",
    "DEQ",
    "IFT",
    "MDEQ",
    "SOLVERS",
    "Anderson",
    "BackwardComparison",
    "BackwardResult",
    "BackwardStrategy",
    "BroydenSolver",
    "Fallback",
    "FixedPointIteration",
    "FixedPointResult",
    "FixedPointSolver",
    "JacobianFree",
    "MDEQCell",
    "Refine",
    "Shine",
    "StatePacker",
    "compare_backward",
    "make_backward",
    "make_solver",
]
