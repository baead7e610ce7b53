"""hoag_shine: gradient-based hyperparameter optimization (HOAG, SHINE, OPA).

The functional core:

- :func:`hypergradient` solves the inner problem and returns the hypergradient of a held-out
  criterion with respect to ``log_alpha`` by one of :data:`METHODS`;
- :func:`solve_bilevel` runs the outer optimization (HOAG, gradient descent or Adam);
- :func:`check_hypergradient` compares a hypergradient with finite differences;
- :class:`BilevelEstimator` is the scikit-learn meta-estimator built on them.

They run unchanged on numpy arrays and on torch tensors (CPU or CUDA): the backend is the inner
problem's, see :mod:`hoag_shine.backends` (``make_problem`` and ``make_criterion`` build either;
``TorchProblem`` tunes any differentiable torch objective).
"""

from .estimator import EXPECTED_FAILED_CHECKS, BilevelEstimator
from .hypergradients import (
    METHODS,
    HypergradientResult,
    check_hypergradient,
    finite_difference_hypergradient,
    hypergradient,
)
from .outer import (
    OPTIMIZERS,
    BilevelResult,
    SearchBoundWarning,
    ToleranceSchedule,
    solve_bilevel,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "EXPECTED_FAILED_CHECKS",
    "METHODS",
    "OPTIMIZERS",
    "BilevelEstimator",
    "BilevelResult",
    "HypergradientResult",
    "SearchBoundWarning",
    "ToleranceSchedule",
    "__version__",
    "check_hypergradient",
    "finite_difference_hypergradient",
    "hypergradient",
    "solve_bilevel",
]
