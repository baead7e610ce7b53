"""Array backends: numpy/scipy (the default) and torch (CPU or CUDA).

The algorithms (L-BFGS with OPA, Broyden, CG, every hypergradient strategy, the outer loop) are
written once against the array API (:mod:`hoag_shine._array`) and run on whatever arrays the
inner problem works with. A backend is therefore chosen by choosing the problem and criterion
classes:

- ``"numpy"``: :class:`~hoag_shine.problems.LogisticRegressionProblem`,
  :class:`~hoag_shine.problems.RidgeProblem`, :class:`~hoag_shine.criteria.HeldOutLogLoss`,
  :class:`~hoag_shine.criteria.HeldOutMSE` (dense or scipy.sparse ``X``, float64);
- ``"torch"``: :class:`TorchLogisticRegressionProblem`, :class:`TorchRidgeProblem`,
  :class:`TorchHeldOutLogLoss`, :class:`TorchHeldOutMSE` (dense or torch sparse CSR ``X`` on
  any device, float64 or float32), and :class:`TorchProblem` / :class:`TorchCriterion` for
  user-defined differentiable objectives (autograd supplies the second derivatives).

:func:`make_problem` and :func:`make_criterion` build either from a name and a ``backend``
(what :class:`~hoag_shine.BilevelEstimator` does with its ``backend``, ``device`` and ``dtype``
parameters). The torch classes are imported lazily: torch is an optional dependency
(``pip install hoag_shine[torch]``).
"""

from __future__ import annotations

import importlib

__all__ = [
    "BACKENDS",
    "TorchCriterion",
    "TorchHeldOutLogLoss",
    "TorchHeldOutMSE",
    "TorchLogisticRegressionProblem",
    "TorchProblem",
    "TorchRidgeProblem",
    "check_backend",
    "make_criterion",
    "make_problem",
]

#: Names accepted by ``backend``.
BACKENDS = ("numpy", "torch")

#: Problem kinds accepted by :func:`make_problem` and :func:`make_criterion`.
KINDS = ("logistic", "ridge")

_TORCH_NAMES = {
    "TorchCriterion",
    "TorchHeldOutLogLoss",
    "TorchHeldOutMSE",
    "TorchLogisticRegressionProblem",
    "TorchProblem",
    "TorchRidgeProblem",
}


def _torch_module():
    try:
        return importlib.import_module(".torch", __name__)
    except ImportError as error:
        if error.name != "torch":
            raise
        raise ImportError(
            "backend='torch' needs PyTorch, which is not installed: "
            "pip install 'hoag_shine[torch]' (or see https://pytorch.org)."
        ) from error


def __getattr__(name):
    if name in _TORCH_NAMES:
        return getattr(_torch_module(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_backend(backend="numpy", device=None, dtype=None) -> dict:
    """Validate a backend choice and return the options for the torch classes.

    Parameters
    ----------
    backend : {"numpy", "torch"}, default="numpy"
        Array backend of the problems and criteria.
    device : None, str or torch.device, default=None
        Torch device (e.g. ``"cuda"``); with ``"numpy"`` only None or ``"cpu"``.
    dtype : None, str, numpy dtype or torch.dtype, default=None
        Floating dtype: float64 (the default) or float32; the numpy backend computes in
        float64 only.

    Returns
    -------
    dict
        ``{}`` for numpy; ``{"device": torch.device, "dtype": torch.dtype}`` for torch.

    Raises
    ------
    ValueError
        For an unknown backend, or an option the backend does not support.
    ImportError
        For ``backend="torch"`` without torch installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose one of {BACKENDS}.")
    if backend == "numpy":
        if device is not None and str(device) != "cpu":
            raise ValueError(
                f"device={device!r} needs backend='torch' (the numpy backend runs on the CPU)."
            )
        if dtype is not None:
            import numpy as np

            try:
                name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
            except TypeError:
                name = str(dtype)
            if name not in ("float64", "double"):
                raise ValueError(
                    f"dtype={dtype!r} needs backend='torch': the numpy backend computes in float64."
                )
        return {}
    module = _torch_module()
    return {"device": module.resolve_device(device), "dtype": module.resolve_dtype(dtype)}


def make_problem(kind, X, y, *, backend="numpy", device=None, dtype=None, **options):
    """An inner problem of kind ``"logistic"`` or ``"ridge"`` in the chosen backend.

    Parameters
    ----------
    kind : {"logistic", "ridge"}
        :class:`~hoag_shine.problems.LogisticRegressionProblem` or
        :class:`~hoag_shine.problems.RidgeProblem` (or their torch counterparts).
    X : {array-like, sparse matrix, Tensor} of shape (n_samples, n_features)
        Training data.
    y : array-like of shape (n_samples,)
        Targets.
    backend : {"numpy", "torch"}, default="numpy"
        Array backend.
    device : None, str or torch.device, default=None
        Torch device (torch backend only).
    dtype : None, str or dtype, default=None
        float64 (default) or float32 (torch backend only).
    **options
        Passed to the problem: ``fit_intercept``, ``per_feature``, ``sample_weight``, and
        ``classes`` for the logistic problem.

    Returns
    -------
    problem
    """
    _check_kind(kind)
    backend_options = check_backend(backend, device, dtype)
    if backend == "numpy":
        from ..problems import LogisticRegressionProblem, RidgeProblem

        cls = LogisticRegressionProblem if kind == "logistic" else RidgeProblem
    else:
        module = _torch_module()
        cls = (
            module.TorchLogisticRegressionProblem
            if kind == "logistic"
            else module.TorchRidgeProblem
        )
    if kind == "ridge":
        options.pop("classes", None)
    return cls(X, y, **options, **backend_options)


def make_criterion(kind, X, y, *, backend="numpy", device=None, dtype=None, **options):
    """A held-out criterion for problems of kind ``"logistic"`` or ``"ridge"``.

    Parameters
    ----------
    kind : {"logistic", "ridge"}
        :class:`~hoag_shine.criteria.HeldOutLogLoss` or :class:`~hoag_shine.criteria.HeldOutMSE`
        (or their torch counterparts).
    X : {array-like, sparse matrix, Tensor} of shape (n_samples, n_features)
        Held-out data.
    y : array-like of shape (n_samples,)
        Held-out targets.
    backend : {"numpy", "torch"}, default="numpy"
        Array backend (the inner problem's).
    device : None, str or torch.device, default=None
        Torch device (torch backend only).
    dtype : None, str or dtype, default=None
        float64 (default) or float32 (torch backend only).
    **options
        Passed to the criterion: ``sample_weight``, and ``classes`` for the log-loss.

    Returns
    -------
    criterion
    """
    _check_kind(kind)
    backend_options = check_backend(backend, device, dtype)
    if backend == "numpy":
        from ..criteria import HeldOutLogLoss, HeldOutMSE

        cls = HeldOutLogLoss if kind == "logistic" else HeldOutMSE
    else:
        module = _torch_module()
        cls = module.TorchHeldOutLogLoss if kind == "logistic" else module.TorchHeldOutMSE
    if kind == "ridge":
        options.pop("classes", None)
    return cls(X, y, **options, **backend_options)


def _check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"Unknown problem kind {kind!r}; choose one of {KINDS}.")
