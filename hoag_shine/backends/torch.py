"""The torch backend: inner problems and outer criteria on torch tensors, CPU or CUDA.

The solvers, the hypergradient strategies and the outer loop are shared with the numpy backend
(they only use the vector operations of :mod:`hoag_shine._array`); what differs is here, in the
problem classes, which own the products with ``X``:

- :class:`TorchLogisticRegressionProblem` and :class:`TorchRidgeProblem` are the same objectives,
  with the same coefficient layout, as :class:`~hoag_shine.problems.LogisticRegressionProblem`
  and :class:`~hoag_shine.problems.RidgeProblem` (binary and multinomial logistic, scalar or
  per-feature penalty, optional intercepts, sample weights), computed with torch on a device.
  ``X`` may be dense or sparse: scipy.sparse and torch sparse inputs become a torch sparse CSR
  tensor (with a CSR copy of ``X^T``; the numpy backend uses the CSC view ``X.T``, see
  ``docs/decisions.rst``).
- :class:`TorchHeldOutLogLoss` and :class:`TorchHeldOutMSE` mirror
  :class:`~hoag_shine.criteria.HeldOutLogLoss` and :class:`~hoag_shine.criteria.HeldOutMSE`.
- :class:`TorchProblem` and :class:`TorchCriterion` turn any differentiable torch function
  ``loss(w, log_alpha)`` (and ``outer(w)``) into an inner problem (and a criterion): autograd
  supplies the gradient, the Hessian-vector products and the cross derivative, so models the
  library does not ship can be tuned with every hypergradient strategy.

Everything a solver touches (``w``, gradients, Hessian-vector products, the L-BFGS memory) stays
on the problem's device; only Python floats (objective values, dot products) and, once per
hypergradient, the small vector of the size of ``log_alpha`` cross to the host. ``log_alpha``
itself is a numpy array on the host (it is validated there), converted to the device once per
new value and cached. The default dtype is float64 (the numpy backend's); float32 is accepted
(faster on GPUs) with tolerances above its round-off (relative ``tol`` of about ``1e-6`` at
best).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch

from .._array import to_numpy
from .._validation import check_data, check_sample_weight, class_labels
from ..problems import LOG_ALPHA_LIMIT, _BlockTolerance

__all__ = [
    "TorchCriterion",
    "TorchHeldOutLogLoss",
    "TorchHeldOutMSE",
    "TorchLogisticRegressionProblem",
    "TorchProblem",
    "TorchRidgeProblem",
]

_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "double": torch.float64,
    "float": torch.float32,
}


# -- conversions -------------------------------------------------------------------------------
def resolve_dtype(dtype) -> torch.dtype:
    """The torch floating dtype for ``dtype`` (None: float64).

    Parameters
    ----------
    dtype : None, str, numpy dtype or torch.dtype
        ``None``, ``"float64"``/``"float32"``, ``np.float64``/``np.float32`` or
        ``torch.float64``/``torch.float32``.

    Returns
    -------
    torch.dtype
    """
    if dtype is None:
        return torch.float64
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif isinstance(dtype, str):
        resolved = _DTYPES.get(dtype)
    else:
        try:
            resolved = _DTYPES.get(np.dtype(dtype).name)
        except TypeError:
            resolved = None
    if resolved not in (torch.float64, torch.float32):
        raise ValueError(f"dtype must be float64 or float32, got {dtype!r}.")
    return resolved


def resolve_device(device, like=None) -> torch.device:
    """The torch device for ``device`` (None: the device of ``like`` if it is a tensor, else CPU).

    Parameters
    ----------
    device : None, str or torch.device
        E.g. ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
    like : object, optional
        Input data whose device is used when ``device`` is None.

    Returns
    -------
    torch.device
        With an index for CUDA (``cuda:0`` for ``"cuda"``), so devices compare equal.
    """
    if device is None:
        device = like.device if isinstance(like, torch.Tensor) else "cpu"
    try:
        device = torch.device(device)
    except (TypeError, RuntimeError) as error:
        raise ValueError(f"Invalid torch device {device!r}: {error}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r} was asked for but CUDA is not available.")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


@contextlib.contextmanager
def _quiet_sparse():
    """Silence torch's notices that sparse CSR support is in beta (not the user's concern)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*[Ss]parse CSR tensor support", category=UserWarning
        )
        warnings.filterwarnings(
            "ignore", message=".*[Ss]parse invariant checks", category=UserWarning
        )
        yield


def _csr(crow, col, values, shape, device, dtype) -> torch.Tensor:
    """A torch CSR tensor; int32 indices when they fit (twice as fast products on a CPU)."""
    index_dtype = torch.int32 if max(values.shape[0], *shape) < 2**31 - 1 else torch.int64
    with _quiet_sparse():
        return torch.sparse_csr_tensor(
            torch.as_tensor(crow).to(device=device, dtype=index_dtype),
            torch.as_tensor(col).to(device=device, dtype=index_dtype),
            torch.as_tensor(values).to(device=device, dtype=dtype),
            size=tuple(shape),
            check_invariants=False,
        )


def _torch_design(X, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``X`` and a product-friendly ``X^T`` as torch tensors (dense, or both sparse CSR)."""
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        XT = X.T.tocsr()
        return (
            _csr(X.indptr, X.indices, X.data, X.shape, device, dtype),
            _csr(XT.indptr, XT.indices, XT.data, XT.shape, device, dtype),
        )
    if isinstance(X, torch.Tensor) and X.layout != torch.strided:
        with _quiet_sparse():
            X = X.detach().to(device=device)
            if X.layout == torch.sparse_coo:
                X = X.coalesce()
            X = X.to_sparse_csr()
            XT = X.t().to_sparse_csr()
            return (
                _csr(X.crow_indices(), X.col_indices(), X.values(), X.shape, device, dtype),
                _csr(XT.crow_indices(), XT.col_indices(), XT.values(), XT.shape, device, dtype),
            )
    X = torch.as_tensor(X).detach().to(device=device, dtype=dtype).contiguous()
    return X, X.T


def _check_design(X, y):
    """Validate ``(X, y)``; scipy/numpy input goes through scikit-learn's checks, tensors stay."""
    if isinstance(X, torch.Tensor):
        y = to_numpy(y) if isinstance(y, torch.Tensor) else np.asarray(y)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D, got a tensor of shape {tuple(X.shape)}.")
        n_samples, n_features = X.shape
        if n_samples == 0 or n_features == 0:
            raise ValueError(f"X is empty (shape {tuple(X.shape)}).")
        if not X.dtype.is_floating_point:
            X = X.to(torch.float64)
        values = X.detach()
        if X.layout == torch.sparse_coo:
            values = values.coalesce().values()
        elif X.layout in (torch.sparse_csr, torch.sparse_csc):
            values = values.values()
        if not bool(torch.isfinite(values).all()):
            raise ValueError("X contains NaN or infinity.")
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D, got an array of shape {y.shape}.")
        if y.shape[0] != n_samples:
            raise ValueError(f"X has {n_samples} samples but y has {y.shape[0]}.")
        return X, y
    if isinstance(y, torch.Tensor):
        y = to_numpy(y)
    return check_data(X, y)


def _host(a):
    """A tensor as a numpy array (None stays None)."""
    return to_numpy(a) if isinstance(a, torch.Tensor) else a


def _check_log_alpha(log_alpha, per_feature: bool, n_features) -> np.ndarray:
    """The numpy problems' validation of ``log_alpha`` (see ``check_log_alpha``)."""
    la = np.asarray(to_numpy(log_alpha), dtype=np.float64)
    if per_feature:
        if la.shape != (n_features,):
            raise ValueError(
                f"per_feature=True needs log_alpha of shape ({n_features},), got {la.shape}."
            )
    elif la.size != 1 or la.ndim > 1:
        raise ValueError(
            f"A scalar penalty needs a single log_alpha, got an array of shape {la.shape}."
        )
    else:
        la = la.reshape(())
    if not np.all(np.isfinite(la)):
        raise ValueError("log_alpha must be finite.")
    if np.any(np.abs(la) > LOG_ALPHA_LIMIT):
        raise ValueError(
            f"log_alpha must lie in [-{LOG_ALPHA_LIMIT:g}, {LOG_ALPHA_LIMIT:g}] "
            f"(alpha = exp(log_alpha)); got values up to {np.max(np.abs(la)):g}."
        )
    return la


# -- per-sample losses (the maths of hoag_shine._losses, on tensors) ---------------------------
def _logistic_loss_and_derivative(z, y):
    margin = -y * z
    e = torch.exp(-torch.abs(margin))  # in (0, 1]: never overflows
    loss = torch.clamp_min(margin, 0.0) + torch.log1p(e)
    sigma = torch.where(margin >= 0, 1.0, e) / (1.0 + e)
    return loss, -y * sigma


def _logistic_curvature(z):
    p = torch.sigmoid(z)
    return p * (1.0 - p)


def _softmax_cross_entropy(z, labels, onehot):
    shifted = z - z.amax(dim=1, keepdim=True)
    exp = torch.exp(shifted)
    total = exp.sum(dim=1, keepdim=True)
    proba = exp / total
    loss = torch.log(total[:, 0]) - torch.gather(shifted, 1, labels[:, None])[:, 0]
    return loss, proba - onehot, proba


def _softmax_hessian_product(proba, dz):
    pdz = proba * dz
    return pdz - proba * pdz.sum(dim=1, keepdim=True)


# -- design ------------------------------------------------------------------------------------
class _TorchLogisticLoss:
    """Mixin: labels and loss of logistic regression, shared by the problem and the criterion."""

    def _encode_targets(self, y):
        targets, self.classes_ = class_labels(y, self._classes_arg)
        n_classes = self.classes_.shape[0]
        self.n_outputs = 1 if n_classes == 2 else n_classes
        if self.n_outputs == 1:
            self.y = self._tensor(targets)
        else:
            self.y = torch.as_tensor(targets, dtype=torch.int64, device=self.device)
            self._onehot = torch.nn.functional.one_hot(self.y, n_classes).to(self.dtype)

    def _loss_and_derivative(self, z):
        if self.n_outputs == 1:
            return _logistic_loss_and_derivative(z, self.y)
        loss, derivative, _ = _softmax_cross_entropy(z, self.y, self._onehot)
        return loss, derivative


class _TorchSquaredLoss:
    """Mixin: targets and loss of least squares, shared by the problem and the criterion."""

    def _encode_targets(self, y):
        y = np.asarray(y, dtype=np.float64)
        if not np.all(np.isfinite(y)):
            raise ValueError("y must be finite.")
        self.y = self._tensor(y)

    def _loss_and_derivative(self, z):
        residual = z - self.y
        return 0.5 * residual**2, residual


class _TorchDesign:
    """Torch counterpart of :class:`hoag_shine._linear.LinearDesign` (same coefficient layout)."""

    def __init__(self, X, XT, n_outputs: int):
        self.X, self._XT = X, XT
        self.n_samples, self.n_features = X.shape
        self.n_outputs = int(n_outputs)
        self.n_coef = self.n_features * self.n_outputs

    def has_intercept(self, w) -> bool:
        if w.shape == (self.n_coef,):
            return False
        if w.shape == (self.n_coef + self.n_outputs,):
            return True
        raise ValueError(
            f"Coefficient of shape {tuple(w.shape)} does not fit {self.n_features} features and "
            f"{self.n_outputs} output(s) (expected ({self.n_coef},), or "
            f"({self.n_coef + self.n_outputs},) with intercepts)."
        )

    def decision(self, w):
        intercept = self.has_intercept(w)
        if self.n_outputs == 1:
            return self.X @ w[:-1] + w[-1] if intercept else self.X @ w
        z = self.X @ w[: self.n_coef].reshape(self.n_features, self.n_outputs)
        if intercept:
            z = z + w[self.n_coef :]
        return z

    def transpose_product(self, r, intercept: bool):
        g = (self._XT @ r).reshape(-1)
        if intercept:
            return torch.cat([g, r.sum(dim=0).reshape(-1)])
        return g


class _TorchTensors:
    """Where a torch problem or criterion keeps its tensors, and the conversions into them."""

    device: torch.device
    dtype: torch.dtype

    def _tensor(self, a, dtype=None):
        return torch.as_tensor(np.asarray(a), dtype=dtype or self.dtype, device=self.device)

    def _check_coef(self, w, n):
        if not isinstance(w, torch.Tensor):
            w = torch.as_tensor(np.asarray(w), dtype=self.dtype, device=self.device)
        elif w.dtype != self.dtype or w.device != self.device:
            w = w.detach().to(device=self.device, dtype=self.dtype)
        if n is not None and w.shape != (n,):
            raise ValueError(f"w must have shape ({n},), got {tuple(w.shape)}.")
        return w


# -- inner problems ----------------------------------------------------------------------------
class _TorchPenalizedLinearProblem(_BlockTolerance, _TorchTensors):
    """Common part of the torch L2-penalized linear problems (mirrors ``problems``)."""

    n_outputs = 1

    def __init__(
        self,
        X,
        y,
        *,
        fit_intercept=False,
        per_feature=False,
        sample_weight=None,
        device=None,
        dtype=None,
    ):
        self.device = resolve_device(device, like=X)
        self.dtype = resolve_dtype(dtype)
        X, y = _check_design(X, y)
        self.n_samples, self.n_features = X.shape
        self.fit_intercept = bool(fit_intercept)
        self.per_feature = bool(per_feature)
        weights = check_sample_weight(_host(sample_weight), self.n_samples, np.float64)
        self.sample_weight = None if weights is None else self._tensor(weights)
        self._encode_targets(y)  # sets y and n_outputs
        self.design = _TorchDesign(*_torch_design(X, self.device, self.dtype), self.n_outputs)
        self._penalty_cache = (None, None, None)

    def _encode_targets(self, y):
        raise NotImplementedError

    def _loss_and_derivative(self, z):
        raise NotImplementedError

    def _loss_hessian(self, z):
        raise NotImplementedError

    @property
    def X(self):
        """The training design matrix (a torch tensor, dense or sparse CSR)."""
        return self.design.X

    @property
    def n_params(self) -> int:
        """Length of the flat coefficient vector (as in the numpy problems)."""
        return self.design.n_coef + self.n_outputs * int(self.fit_intercept)

    @property
    def hyper_shape(self) -> tuple[int, ...]:
        """Shape of ``log_alpha``: ``()`` for a scalar penalty, ``(n_features,)`` per feature."""
        return (self.n_features,) if self.per_feature else ()

    def init_coef(self) -> torch.Tensor:
        """A zero coefficient vector on the problem's device, in its dtype.

        Returns
        -------
        Tensor of shape (n_params,)
        """
        return torch.zeros(self.n_params, dtype=self.dtype, device=self.device)

    def check_log_alpha(self, log_alpha) -> np.ndarray:
        """Validate ``log_alpha`` and return it as a float64 numpy array of shape ``hyper_shape``.

        ``log_alpha`` lives on the host (as in the numpy backend); a tensor is accepted.

        Parameters
        ----------
        log_alpha : float, array-like or Tensor
            Log of the penalty: one value, or one per feature for a per-feature problem.

        Returns
        -------
        ndarray of shape ``hyper_shape``
        """
        return _check_log_alpha(log_alpha, self.per_feature, self.n_features)

    def _penalty(self, log_alpha):
        """``(weights, alpha)``: the penalty tensor and, for a scalar penalty, alpha as a float.

        Cached for the last ``log_alpha``: one transfer to the device per new value.
        """
        la = self.check_log_alpha(log_alpha)
        key = la.tobytes()
        if self._penalty_cache[0] != key:
            weights = np.zeros(self.n_params)  # intercepts are not penalized
            alpha = np.exp(la)
            weights[: self.design.n_coef] = (
                np.repeat(alpha, self.n_outputs) if self.per_feature else alpha
            )
            scalar = None if self.per_feature else float(alpha)
            self._penalty_cache = (key, self._tensor(weights), scalar)
        return self._penalty_cache[1], self._penalty_cache[2]

    def penalty_weights(self, log_alpha) -> torch.Tensor:
        """``alpha`` broadcast to the coefficient vector (0 for the intercepts), on the device.

        Cached for the last ``log_alpha``; do not modify it.

        Parameters
        ----------
        log_alpha : float or ndarray of shape ``hyper_shape``
            Log of the penalty, ``alpha = exp(log_alpha)``.

        Returns
        -------
        Tensor of shape (n_params,)
        """
        return self._penalty(log_alpha)[0]

    def _weighted(self, values):
        if self.sample_weight is None:
            return values
        if values.ndim == 2:
            return self.sample_weight[:, None] * values
        return self.sample_weight * values

    def value(self, w, log_alpha) -> float:
        """Objective ``r(w, log_alpha)``.

        Parameters
        ----------
        w : Tensor of shape (n_params,)
            Flat coefficient vector (``coef`` then the intercepts).
        log_alpha : float or ndarray of shape ``hyper_shape``
            Log of the penalty, ``alpha = exp(log_alpha)``.

        Returns
        -------
        float
        """
        return self.value_and_grad(w, log_alpha)[0]

    def grad(self, w, log_alpha) -> torch.Tensor:
        """Gradient of the objective in ``w``.

        Parameters
        ----------
        w : Tensor of shape (n_params,)
            Flat coefficient vector (``coef`` then the intercepts).
        log_alpha : float or ndarray of shape ``hyper_shape``
            Log of the penalty, ``alpha = exp(log_alpha)``.

        Returns
        -------
        Tensor of shape (n_params,)
        """
        return self.value_and_grad(w, log_alpha)[1]

    def value_and_grad(self, w, log_alpha) -> tuple[float, torch.Tensor]:
        """Objective and its gradient in ``w`` (two products with X, one scalar to the host).

        Parameters
        ----------
        w : Tensor of shape (n_params,)
            Flat coefficient vector (``coef`` then the intercepts).
        log_alpha : float or ndarray of shape ``hyper_shape``
            Log of the penalty, ``alpha = exp(log_alpha)``.

        Returns
        -------
        value : float
        grad : Tensor of shape (n_params,)
        """
        w = self._check_coef(w, self.n_params)
        penalty, alpha = self._penalty(log_alpha)
        z = self.design.decision(w)
        loss, derivative = self._loss_and_derivative(z)
        data_term = self._weighted(loss).sum()
        grad = self.design.transpose_product(self._weighted(derivative), self.fit_intercept)
        n_coef = self.design.n_coef
        coef = w[:n_coef]
        if alpha is None:
            penalty_grad = penalty[:n_coef] * coef
            grad[:n_coef] += penalty_grad
            penalty_value = penalty_grad.dot(coef)
        else:  # scalar alpha: in place, no temporary of the size of w
            grad[:n_coef].add_(coef, alpha=alpha)
            penalty_value = alpha * coef.dot(coef)
        return float(data_term + 0.5 * penalty_value), grad

    def hessian_operator(self, w, log_alpha) -> Callable[[torch.Tensor], torch.Tensor]:
        """``v -> H v`` at ``w``, with the loss curvature computed once for many products.

        Parameters
        ----------
        w : Tensor of shape (n_params,)
            Flat coefficient vector (``coef`` then the intercepts).
        log_alpha : float or ndarray of shape ``hyper_shape``
            Log of the penalty, ``alpha = exp(log_alpha)``.

        Returns
        -------
        callable
            ``v -> H(w) v`` for tensors ``v`` of shape (n_params,).
        """
        w = self._check_coef(w, self.n_params)
        penalty = self._penalty(log_alpha)[0]
        loss_hessian = self._loss_hessian(self.design.decision(w))
        design, intercept, weighted = self.design, self.fit_intercept, self._weighted

        def hvp(v):
            dz = weighted(loss_hessian(design.decision(v)))
            return design.transpose_product(dz, intercept) + penalty * v

        return hvp

    def hvp(self, w, log_alpha, v) -> torch.Tensor:
        """Hessian-vector product ``H(w) v``.

        Parameters
        ----------
        w : Tensor of shape (n_params,)
            Flat coefficient vector (``coef`` then the intercepts).
        log_alpha : float or ndarray of shape ``hyper_shape``
            Log of the penalty, ``alpha = exp(log_alpha)``.
        v : Tensor or array-like of shape (n_params,)
            The vector to multiply.

        Returns
        -------
        Tensor of shape (n_params,)
        """
        return self.hessian_operator(w, log_alpha)(self._check_coef(v, self.n_params))

    def cross_vjp(self, w, log_alpha, q) -> torch.Tensor:
        """``(d^2 r / d log_alpha d w)^T q``, of the shape of ``log_alpha`` (on the device).

        Parameters
        ----------
        w : Tensor of shape (n_params,)
            Flat coefficient vector (``coef`` then the intercepts).
        log_alpha : float or ndarray of shape ``hyper_shape``
            Log of the penalty, ``alpha = exp(log_alpha)``.
        q : Tensor or array-like of shape (n_params,)
            The adjoint.

        Returns
        -------
        Tensor of shape ``hyper_shape``
        """
        w = self._check_coef(w, self.n_params)
        q = self._check_coef(q, self.n_params)
        n_coef = self.design.n_coef
        per_coord = self._penalty(log_alpha)[0][:n_coef] * w[:n_coef] * q[:n_coef]
        if not self.per_feature:
            return per_coord.sum()
        return per_coord.reshape(self.n_features, self.n_outputs).sum(dim=1)


class TorchLogisticRegressionProblem(_TorchLogisticLoss, _TorchPenalizedLinearProblem):
    """L2-regularized logistic regression on torch tensors (scikit-learn's, ``C = 1/alpha``).

    The objective, the label encoding and the coefficient layout are those of
    :class:`~hoag_shine.problems.LogisticRegressionProblem` (binary with labels mapped to
    {-1, +1}, multinomial for three or more classes with ``coef`` of shape
    ``(n_features, n_classes)`` flattened row-major then the intercepts).

    Parameters
    ----------
    X : {array-like, sparse matrix, Tensor} of shape (n_samples, n_features)
        Training data: numpy, scipy.sparse, or a torch tensor (dense, or sparse COO/CSR/CSC).
        Sparse input becomes a torch sparse CSR tensor on ``device``.
    y : array-like or Tensor of shape (n_samples,)
        Labels of any type; with two classes ``classes_[1]`` is the positive class.
    fit_intercept : bool, default=False
        Add an unpenalized intercept, stored as the last coefficient(s).
    per_feature : bool, default=False
        One penalty per feature instead of a single one.
    sample_weight : array-like of shape (n_samples,), optional
        Per-sample weights of the loss.
    classes : array-like, optional
        The classes in scikit-learn's order; ``np.unique(y)`` by default.
    device : str or torch.device, optional
        Where the tensors live: the device of ``X`` when it is a tensor, else the CPU.
    dtype : {None, "float64", "float32"} or torch.dtype, default=None
        Floating dtype of the computation (None: float64).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The labels, in scikit-learn's order.
    n_outputs : int
        1 for two classes, ``n_classes`` for the multinomial model.
    """

    def __init__(
        self,
        X,
        y,
        *,
        fit_intercept=False,
        per_feature=False,
        sample_weight=None,
        classes=None,
        device=None,
        dtype=None,
    ):
        self._classes_arg = classes
        super().__init__(
            X,
            y,
            fit_intercept=fit_intercept,
            per_feature=per_feature,
            sample_weight=sample_weight,
            device=device,
            dtype=dtype,
        )

    def _loss_hessian(self, z):
        if self.n_outputs == 1:
            curvature = _logistic_curvature(z)
            return lambda dz: curvature * dz
        proba = _softmax_cross_entropy(z, self.y, self._onehot)[2]
        return lambda dz: _softmax_hessian_product(proba, dz)


class TorchRidgeProblem(_TorchSquaredLoss, _TorchPenalizedLinearProblem):
    """L2-regularized least squares on torch tensors, half of scikit-learn's ``Ridge(alpha)``.

    The objective and layout of :class:`~hoag_shine.problems.RidgeProblem`.

    Parameters
    ----------
    X : {array-like, sparse matrix, Tensor} of shape (n_samples, n_features)
        Training data: numpy, scipy.sparse, or a torch tensor (dense, or sparse COO/CSR/CSC).
    y : array-like or Tensor of shape (n_samples,)
        Real targets.
    fit_intercept : bool, default=False
        Add an unpenalized intercept, stored as the last coefficient.
    per_feature : bool, default=False
        One penalty per feature instead of a single one.
    sample_weight : array-like of shape (n_samples,), optional
        Per-sample weights of the loss.
    device : str or torch.device, optional
        Where the tensors live: the device of ``X`` when it is a tensor, else the CPU.
    dtype : {None, "float64", "float32"} or torch.dtype, default=None
        Floating dtype of the computation (None: float64).
    """

    def _loss_hessian(self, z):
        return lambda dz: dz


# -- outer criteria ----------------------------------------------------------------------------
class _TorchHeldOutCriterion(_TorchTensors):
    """Weighted mean of a per-sample loss over held-out data (mirrors ``criteria``)."""

    _scale = 1.0
    n_outputs = 1

    def __init__(self, X, y, *, sample_weight=None, device=None, dtype=None):
        self.device = resolve_device(device, like=X)
        self.dtype = resolve_dtype(dtype)
        X, y = _check_design(X, y)
        self.n_samples, self.n_features = X.shape
        weights = check_sample_weight(_host(sample_weight), self.n_samples, np.float64)
        if weights is None:
            weights = np.ones(self.n_samples)
        self._weights = self._tensor(weights / weights.sum())
        self._encode_targets(y)
        self.design = _TorchDesign(*_torch_design(X, self.device, self.dtype), self.n_outputs)

    def _encode_targets(self, y):
        raise NotImplementedError

    def _loss_and_derivative(self, z):
        raise NotImplementedError

    def value(self, w) -> float:
        """Held-out loss of the coefficient ``w``.

        Parameters
        ----------
        w : Tensor of shape (n_params,)
            Coefficient vector in the layout of the inner problem (intercepts at the end).

        Returns
        -------
        float
        """
        w = self._check_coef(w, None)
        loss = self._loss_and_derivative(self.design.decision(w))[0]
        return self._scale * float(self._weights.dot(loss))

    def grad(self, w) -> torch.Tensor:
        """Gradient of the held-out loss in ``w``.

        Parameters
        ----------
        w : Tensor of shape (n_params,)
            Coefficient vector in the layout of the inner problem (intercepts at the end).

        Returns
        -------
        Tensor of the shape of ``w``
        """
        return self.value_and_grad(w)[1]

    def value_and_grad(self, w) -> tuple[float, torch.Tensor]:
        """Held-out loss and its gradient in ``w``.

        Parameters
        ----------
        w : Tensor of shape (n_params,)
            Coefficient vector in the layout of the inner problem (intercepts at the end).

        Returns
        -------
        value : float
        grad : Tensor of the shape of ``w``
        """
        w = self._check_coef(w, None)
        intercept = self.design.has_intercept(w)
        loss, derivative = self._loss_and_derivative(self.design.decision(w))
        value = self._scale * float(self._weights.dot(loss))
        weights = self._weights if derivative.ndim == 1 else self._weights[:, None]
        residual = self._scale * weights * derivative
        return value, self.design.transpose_product(residual, intercept)


class TorchHeldOutLogLoss(_TorchLogisticLoss, _TorchHeldOutCriterion):
    """Mean held-out logistic loss on torch tensors.

    The criterion of :class:`~hoag_shine.criteria.HeldOutLogLoss` (binary or multinomial).

    Parameters
    ----------
    X : {array-like, sparse matrix, Tensor} of shape (n_samples, n_features)
        Held-out data.
    y : array-like or Tensor of shape (n_samples,)
        Held-out labels.
    classes : array-like, optional
        The classes in scikit-learn's order; must match the inner problem's ``classes_``.
    sample_weight : array-like of shape (n_samples,), optional
        Weights of the mean.
    device : str or torch.device, optional
        Where the tensors live: the device of ``X`` when it is a tensor, else the CPU.
    dtype : {None, "float64", "float32"} or torch.dtype, default=None
        Floating dtype of the computation (None: float64).
    """

    def __init__(self, X, y, *, classes=None, sample_weight=None, device=None, dtype=None):
        self._classes_arg = classes
        super().__init__(X, y, sample_weight=sample_weight, device=device, dtype=dtype)


class TorchHeldOutMSE(_TorchSquaredLoss, _TorchHeldOutCriterion):
    """Mean held-out squared error on torch tensors.

    The criterion of :class:`~hoag_shine.criteria.HeldOutMSE` (no factor 1/2).

    Parameters
    ----------
    X : {array-like, sparse matrix, Tensor} of shape (n_samples, n_features)
        Held-out data.
    y : array-like or Tensor of shape (n_samples,)
        Held-out targets.
    sample_weight : array-like of shape (n_samples,), optional
        Weights of the mean.
    device : str or torch.device, optional
        Where the tensors live: the device of ``X`` when it is a tensor, else the CPU.
    dtype : {None, "float64", "float32"} or torch.dtype, default=None
        Floating dtype of the computation (None: float64).
    """

    _scale = 2.0


# -- user-defined problems (autograd) ----------------------------------------------------------
class TorchProblem(_TorchTensors):
    """An inner problem given by any twice-differentiable torch function ``loss(w, log_alpha)``.

    Autograd supplies what the hypergradient needs: the gradient in ``w`` (one backward pass),
    Hessian-vector products (double backward through a graph built once per inner solution and
    reused by every product of a CG solve) and the cross derivative
    ``(d^2 loss / d log_alpha d w)^T q``. Every strategy of :func:`hoag_shine.hypergradient`
    and :func:`hoag_shine.solve_bilevel` then applies, so models the library does not ship
    (a smoothed hinge loss, the last layer of a network, ...) can be tuned.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(w, log_alpha) -> scalar tensor``: ``w`` a tensor of shape ``(n_params,)``,
        ``log_alpha`` a tensor of shape ``hyper_shape`` (both on ``device``, in ``dtype``).
        It must be differentiable in both (twice in ``w``, and in ``w`` then ``log_alpha``),
        and strongly convex in ``w`` near its minimizer for the implicit function theorem to
        apply. Write it with batched tensor operations (no Python loop over samples).
    coef0 : int, array-like or Tensor of shape (n_params,)
        The starting point of a cold inner solve (an int ``n``: zeros of length ``n``).
    hyper_shape : tuple of int, default=()
        Shape of ``log_alpha``: ``()`` for a single hyperparameter, ``(k,)`` for ``k``.
    penalty_weights : callable, optional
        ``log_alpha (tensor) -> d`` of shape ``(n_params,)``, when ``loss_fn`` depends on
        ``log_alpha`` only through ``1/2 sum_j d_j w_j^2``. It lets a warm-started L-BFGS
        memory be corrected exactly for a change of ``log_alpha`` (as for the built-in
        problems); without it the memory is reused as it is.
    gradient_scale : float, optional
        The scale of relative tolerances (``tol`` of :func:`hoag_shine.hypergradient` is
        relative to it). Default: ``||grad_w loss(coef0, 0)||``.
    device : str or torch.device, optional
        Device of the tensors passed to ``loss_fn``: that of ``coef0`` when it is a tensor,
        else the CPU.
    dtype : {None, "float64", "float32"} or torch.dtype, default=None
        Floating dtype (None: that of ``coef0`` when it is a floating tensor, else float64).

    Examples
    --------
    >>> import torch
    >>> from hoag_shine import hypergradient
    >>> from hoag_shine.backends import TorchCriterion, TorchProblem
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(40, 5, generator=g, dtype=torch.float64)
    >>> y = torch.sign(X[:, 0] + 0.5 * torch.randn(40, generator=g, dtype=torch.float64))
    >>> def loss(w, log_alpha):
    ...     margin = y[:30] * (X[:30] @ w)
    ...     return (torch.nn.functional.softplus(-margin).sum()
    ...             + 0.5 * torch.exp(log_alpha) * w.dot(w))
    >>> inner = TorchProblem(loss, 5)
    >>> outer = TorchCriterion(
    ...     lambda w: torch.nn.functional.softplus(-y[30:] * (X[30:] @ w)).mean())
    >>> res = hypergradient(inner, outer, 0.0, method="cg")
    >>> res.grad.shape
    ()
    """

    def __init__(
        self,
        loss_fn,
        coef0,
        *,
        hyper_shape=(),
        penalty_weights=None,
        gradient_scale=None,
        device=None,
        dtype=None,
    ):
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {loss_fn!r}.")
        self.loss_fn = loss_fn
        if dtype is None and isinstance(coef0, torch.Tensor) and coef0.dtype.is_floating_point:
            dtype = coef0.dtype
        self.dtype = resolve_dtype(dtype)
        self.device = resolve_device(device, like=coef0)
        if isinstance(coef0, int | np.integer) and not isinstance(coef0, bool):
            if coef0 < 1:
                raise ValueError(f"coef0 as a length must be positive, got {coef0}.")
            coef0 = torch.zeros(int(coef0), dtype=self.dtype, device=self.device)
        coef0 = self._check_coef(coef0, None)
        if coef0.ndim != 1 or coef0.shape[0] == 0:
            raise ValueError(f"coef0 must be a non-empty 1-D vector, got shape {coef0.shape}.")
        self._coef0 = coef0.clone()
        self.hyper_shape = tuple(int(n) for n in hyper_shape)
        if len(self.hyper_shape) > 1:
            raise ValueError(f"hyper_shape must be () or (k,), got {self.hyper_shape}.")
        if penalty_weights is not None:
            if not callable(penalty_weights):
                raise TypeError("penalty_weights must be callable (log_alpha -> weights).")
            self._penalty_fn = penalty_weights
            self.penalty_weights = self._penalty_weights
        if gradient_scale is not None and not (
            math.isfinite(gradient_scale) and gradient_scale > 0
        ):
            raise ValueError(f"gradient_scale must be a positive number, got {gradient_scale!r}.")
        self._gradient_scale = None if gradient_scale is None else float(gradient_scale)
        self._log_alpha_cache = (None, None)

    @property
    def n_params(self) -> int:
        """Length of the coefficient vector."""
        return self._coef0.shape[0]

    def init_coef(self) -> torch.Tensor:
        """A copy of ``coef0``: the start of a cold inner solve.

        Returns
        -------
        Tensor of shape (n_params,)
        """
        return self._coef0.clone()

    def check_log_alpha(self, log_alpha) -> np.ndarray:
        """Validate ``log_alpha`` and return it as a float64 numpy array of shape ``hyper_shape``.

        Parameters
        ----------
        log_alpha : float, array-like or Tensor
            The hyperparameters (a single value when ``hyper_shape`` is ``()``).

        Returns
        -------
        ndarray of shape ``hyper_shape``
        """
        if self.hyper_shape == ():
            return _check_log_alpha(log_alpha, False, None)
        return _check_log_alpha(log_alpha, True, self.hyper_shape[0])

    def _log_alpha(self, log_alpha) -> torch.Tensor:
        """``log_alpha`` as a tensor on the device (cached: one transfer per new value)."""
        la = self.check_log_alpha(log_alpha)
        key = la.tobytes()
        if self._log_alpha_cache[0] != key:
            self._log_alpha_cache = (key, self._tensor(la))
        return self._log_alpha_cache[1]

    def _penalty_weights(self, log_alpha) -> torch.Tensor:
        with torch.no_grad():
            weights = self._penalty_fn(self._log_alpha(log_alpha))
        return self._check_coef(weights, self.n_params)

    def _loss(self, w, la) -> torch.Tensor:
        value = self.loss_fn(w, la)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise TypeError("loss_fn must return a scalar tensor.")
        return value.reshape(())

    def value(self, w, log_alpha) -> float:
        """Objective ``loss_fn(w, log_alpha)``.

        Parameters
        ----------
        w : Tensor of shape (n_params,)
            Coefficient vector.
        log_alpha : float or ndarray of shape ``hyper_shape``
            The hyperparameters.

        Returns
        -------
        float
        """
        w = self._check_coef(w, self.n_params)
        with torch.no_grad():
            return float(self._loss(w, self._log_alpha(log_alpha)))

    def grad(self, w, log_alpha) -> torch.Tensor:
        """Gradient of the objective in ``w``.

        Parameters
        ----------
        w : Tensor of shape (n_params,)
            Coefficient vector.
        log_alpha : float or ndarray of shape ``hyper_shape``
            The hyperparameters.

        Returns
        -------
        Tensor of shape (n_params,)
        """
        return self.value_and_grad(w, log_alpha)[1]

    def value_and_grad(self, w, log_alpha) -> tuple[float, torch.Tensor]:
        """Objective and its gradient in ``w`` (one forward and one backward pass).

        Parameters
        ----------
        w : Tensor of shape (n_params,)
            Coefficient vector.
        log_alpha : float or ndarray of shape ``hyper_shape``
            The hyperparameters.

        Returns
        -------
        value : float
        grad : Tensor of shape (n_params,)
        """
        la = self._log_alpha(log_alpha)
        w = self._check_coef(w, self.n_params).detach().requires_grad_(True)
        with torch.enable_grad():
            value = self._loss(w, la)
            (grad,) = torch.autograd.grad(value, w)
        return float(value.detach()), grad.detach()

    def hessian_operator(self, w, log_alpha) -> Callable[[torch.Tensor], torch.Tensor]:
        """``v -> H v`` at ``w`` by double backward through one retained graph.

        Parameters
        ----------
        w : Tensor of shape (n_params,)
            Coefficient vector.
        log_alpha : float or ndarray of shape ``hyper_shape``
            The hyperparameters.

        Returns
        -------
        callable
            ``v -> H(w) v`` for tensors ``v`` of shape (n_params,).
        """
        la = self._log_alpha(log_alpha)
        w = self._check_coef(w, self.n_params).detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self._loss(w, la), w, create_graph=True)

        def hvp(v):
            v = self._check_coef(v, self.n_params)
            with torch.enable_grad():
                (hv,) = torch.autograd.grad(grad, w, grad_outputs=v, retain_graph=True)
            return hv.detach()

        return hvp

    def hvp(self, w, log_alpha, v) -> torch.Tensor:
        """Hessian-vector product ``H(w) v``.

        Parameters
        ----------
        w : Tensor of shape (n_params,)
            Coefficient vector.
        log_alpha : float or ndarray of shape ``hyper_shape``
            The hyperparameters.
        v : Tensor or array-like of shape (n_params,)
            The vector to multiply.

        Returns
        -------
        Tensor of shape (n_params,)
        """
        return self.hessian_operator(w, log_alpha)(v)

    def cross_vjp(self, w, log_alpha, q) -> torch.Tensor:
        """``(d^2 loss / d log_alpha d w)^T q``, of the shape of ``log_alpha``.

        Parameters
        ----------
        w : Tensor of shape (n_params,)
            Coefficient vector.
        log_alpha : float or ndarray of shape ``hyper_shape``
            The hyperparameters.
        q : Tensor or array-like of shape (n_params,)
            The adjoint.

        Returns
        -------
        Tensor of shape ``hyper_shape``
        """
        la = self._log_alpha(log_alpha).detach().clone().requires_grad_(True)
        w = self._check_coef(w, self.n_params).detach().requires_grad_(True)
        q = self._check_coef(q, self.n_params)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self._loss(w, la), w, create_graph=True)
            (cross,) = torch.autograd.grad(grad, la, grad_outputs=q, allow_unused=True)
        if cross is None:  # the gradient does not depend on log_alpha
            return torch.zeros(self.hyper_shape, dtype=self.dtype, device=self.device)
        return cross.detach()

    @property
    def gradient_scale(self) -> float:
        """The scale of relative tolerances (see the ``gradient_scale`` parameter)."""
        if self._gradient_scale is None:
            zero_la = np.zeros(self.hyper_shape)
            grad = self.value_and_grad(self._coef0, zero_la)[1]
            self._gradient_scale = max(
                float(torch.linalg.vector_norm(grad)), float(np.finfo(np.float64).tiny)
            )
        return self._gradient_scale


class TorchCriterion(_TorchTensors):
    """An outer criterion given by any differentiable torch function ``outer(w)``.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(w) -> scalar tensor`` for ``w`` of the inner problem's shape, device and
        dtype (e.g. the held-out loss of a model whose last layer is ``w``).
    device : str or torch.device, optional
        Device that ``w`` is moved to before the call (None: ``w`` is used where it is).
    dtype : {None, "float64", "float32"} or torch.dtype, default=None
        Dtype that ``w`` is converted to before the call (None: ``w``'s own).
    """

    def __init__(self, loss_fn, *, device=None, dtype=None):
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {loss_fn!r}.")
        self.loss_fn = loss_fn
        self.device = None if device is None else resolve_device(device)
        self.dtype = None if dtype is None else resolve_dtype(dtype)

    def _prepare(self, w) -> torch.Tensor:
        if not isinstance(w, torch.Tensor):
            w = torch.as_tensor(np.asarray(w), dtype=self.dtype or torch.float64)
        if self.device is not None or self.dtype is not None:
            w = w.to(device=self.device or w.device, dtype=self.dtype or w.dtype)
        return w.detach()

    def _loss(self, w) -> torch.Tensor:
        value = self.loss_fn(w)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise TypeError("loss_fn must return a scalar tensor.")
        return value.reshape(())

    def value(self, w) -> float:
        """Criterion at ``w``.

        Parameters
        ----------
        w : Tensor of shape (n_params,)
            Coefficient vector of the inner problem.

        Returns
        -------
        float
        """
        with torch.no_grad():
            return float(self._loss(self._prepare(w)))

    def grad(self, w) -> torch.Tensor:
        """Gradient of the criterion in ``w``.

        Parameters
        ----------
        w : Tensor of shape (n_params,)
            Coefficient vector of the inner problem.

        Returns
        -------
        Tensor of the shape of ``w``
        """
        return self.value_and_grad(w)[1]

    def value_and_grad(self, w) -> tuple[float, torch.Tensor]:
        """Criterion and its gradient in ``w`` (one forward and one backward pass).

        Parameters
        ----------
        w : Tensor of shape (n_params,)
            Coefficient vector of the inner problem.

        Returns
        -------
        value : float
        grad : Tensor of the shape of ``w``
        """
        w = self._prepare(w).requires_grad_(True)
        with torch.enable_grad():
            value = self._loss(w)
            (grad,) = torch.autograd.grad(value, w, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(w)
        return float(value.detach()), grad.detach()
