"""Solvers that expose their quasi-Newton inverse estimates, and a truncated Newton.

They take callables and arrays (numpy or torch) and know nothing of the problems they solve.
"""

from .broyden import Broyden, BroydenInverse, BroydenState
from .cg import CGResult, conjugate_gradient
from .lbfgs import LBFGS, LBFGSMemory, LBFGSState
from .linesearch import LineSearchResult, strong_wolfe
from .newton import NewtonCG, NewtonCGState

__all__ = [
    "LBFGS",
    "Broyden",
    "BroydenInverse",
    "BroydenState",
    "CGResult",
    "LBFGSMemory",
    "LBFGSState",
    "LineSearchResult",
    "NewtonCG",
    "NewtonCGState",
    "conjugate_gradient",
    "strong_wolfe",
]
