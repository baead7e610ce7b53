"""Inner problems: L2-regularized linear models with log-parametrized penalties.

``r(w, log_alpha) = sum_i s_i loss(y_i, x_i . w + b) + 1/2 sum_j alpha_j w_j^2`` with
``alpha = exp(log_alpha)``, a scalar or one value per feature, ``s_i`` the sample weights and
``b`` an optional unpenalized intercept stored as the last entry of ``w``.

- :class:`LogisticRegressionProblem` is scikit-learn's ``LogisticRegression(C=1/alpha)``
  objective (L2 penalty): binary with the two labels mapped to {-1, +1} as scikit-learn does,
  multinomial (softmax, one coefficient column per class) for three or more classes.
- :class:`RidgeProblem` is half of scikit-learn's ``Ridge(alpha=alpha)`` objective, so both
  have the same minimizer.

Each problem provides the value, gradient, Hessian-vector product and the cross derivative
``d^2 r / (d log_alpha d w)`` that the hypergradient needs. X may be dense or
``scipy.sparse`` (kept sparse).
"""

from __future__ import annotations

import math

import numpy as np

from ._array import axpy, namespace, norm
from ._linear import LinearDesign
from ._losses import (
    LogisticLoss,
    SquaredLoss,
    logistic_curvature,
    softmax_cross_entropy,
    softmax_hessian_product,
)
from ._validation import check_data, check_sample_weight

__all__ = ["LOG_ALPHA_LIMIT", "LogisticRegressionProblem", "RidgeProblem"]

#: ``|log_alpha|`` beyond this is refused: ``exp`` stays finite and meaningful in float64.
LOG_ALPHA_LIMIT = 100.0


class _BlockTolerance:
    """Mixin: the relative stopping measure of the inner solver, per block of coefficients.

    With an intercept, the gradient has two blocks in different units: ``X^T r`` scales with
    the features, the intercepts' ``sum_i r_i`` does not. A single tolerance relative to
    ``||grad r(0)||`` is then dominated by one block, and the other is never fitted (features
    scaled by 1e6 leave the intercept unfitted, by 1e-6 the coefficients). Each block is
    therefore divided by its own scale before the Euclidean norm is taken, so that both must
    meet the tolerance:

    - coefficients: ``||X^T r(0)||``, the block's gradient at ``w = 0`` (as without an
      intercept);
    - intercepts: ``|| sum_i |r_i(0)| ||`` (per output), a bound of the block's gradient at 0
      ``|sum_i r_i(0)|``, reached when the residuals have one sign. The gradient itself is the
      class imbalance (or the mean target), which vanishes for balanced classes or centered
      targets and cannot be a scale.

    Both scales are invariant to the other block's units, so the stopping test is invariant to
    a rescaling of the features. Backend-agnostic: it needs ``design``, ``init_coef``,
    ``fit_intercept``, ``_loss_and_derivative`` and ``_weighted``.
    """

    _scales = None

    def _tolerance_scales(self) -> tuple[float, float, float]:
        """``(||grad r(0)||, coefficient scale, intercept scale)``, computed once."""
        if self._scales is None:
            decision = self.design.decision(self.init_coef())
            residual = self._weighted(self._loss_and_derivative(decision)[1])
            g = self.design.transpose_product(residual, self.fit_intercept)
            xp = namespace(residual)
            tiny = float(np.finfo(np.float64).tiny)
            intercept = xp.reshape(xp.sum(xp.abs(residual), axis=0), (-1,))
            self._scales = (
                max(norm(g), tiny),
                max(norm(g[: self.design.n_coef]), tiny),
                max(norm(intercept), tiny),
            )
        return self._scales

    @property
    def gradient_scale(self) -> float:
        """``||grad r(0)||``, independent of ``log_alpha``.

        The scale of the relative inner tolerance without an intercept (see
        :meth:`relative_gradient_norm` for the general case).
        """
        return self._tolerance_scales()[0]

    def relative_gradient_norm(self, g) -> float:
        """The inner solver's stopping measure: the gradient's norm relative to its scale.

        Without an intercept, ``||g|| / ||grad r(0)||``. With intercepts, the Euclidean norm
        of the pair of the coefficients' ``||g_coef|| / ||X^T r(0)||`` and the intercepts'
        ``||g_intercept|| / || sum_i |r_i(0)| ||`` (``r(0)`` the weighted loss derivatives at
        ``w = 0``), so that a tolerance is met by both blocks whatever the features' scale.

        Parameters
        ----------
        g : array of shape (n_params,)
            A gradient of the objective (in the problem's backend).

        Returns
        -------
        float
            Not finite when ``g`` is not.
        """
        total, coef_scale, intercept_scale = self._tolerance_scales()
        if not self.fit_intercept:
            return norm(g) / total
        n_coef = self.design.n_coef
        return math.hypot(norm(g[:n_coef]) / coef_scale, norm(g[n_coef:]) / intercept_scale)


class _PenalizedLinearProblem(_BlockTolerance):
    """Common part of the L2-penalized linear problems (see the module docstring)."""

    def __init__(self, X, y, *, fit_intercept=False, per_feature=False, sample_weight=None):
        X, y = check_data(X, y)
        self.n_samples, self.n_features = X.shape
        self.fit_intercept = bool(fit_intercept)
        self.per_feature = bool(per_feature)
        self.sample_weight = check_sample_weight(sample_weight, self.n_samples, np.float64)
        self.y = self._encode_targets(y)  # sets n_outputs for the multinomial model
        self.design = LinearDesign(X, self.n_outputs)
        self._penalty_cache = (None, None)

    #: Number of linear outputs (columns of the coefficient matrix).
    n_outputs = 1

    @property
    def blas_threads(self) -> int | None:
        """The BLAS threads that solves of this problem should run with.

        1 for a sparse ``X``: its products run in scipy's single-threaded sparse kernels, and
        BLAS only serves vector operations, where threads cost synchronization and save
        nothing (with another process on the other core, 2.4 times the time). None (no limit)
        for a dense ``X``, whose matrix-vector products gain from threads (a dense 20000 x
        2000 fit took half the time with two threads). :func:`~hoag_shine.hypergradient` and
        the estimator's refit apply it.
        """
        return 1 if self.design.is_sparse else None

    # -- loss-specific part ------------------------------------------------------------------
    def _encode_targets(self, y):
        raise NotImplementedError

    def _loss_and_derivative(self, z):
        """Per-sample losses and their derivatives in the prediction ``z``."""
        raise NotImplementedError

    def _loss_hessian(self, z):
        """``dz -> (d^2 loss / dz^2) dz`` per sample, at the prediction ``z``."""
        raise NotImplementedError

    # -- shapes and hyperparameters ----------------------------------------------------------
    @property
    def X(self):
        """The training design matrix."""
        return self.design.X

    @property
    def n_params(self) -> int:
        """Length of the flat coefficient vector: ``n_features * n_outputs`` coefficients
        (row-major ``(n_features, n_outputs)``), then ``n_outputs`` intercepts if fitted."""
        return self.design.n_coef + self.n_outputs * int(self.fit_intercept)

    @property
    def hyper_shape(self) -> tuple[int, ...]:
        """Shape of ``log_alpha``: ``()`` for a scalar penalty, ``(n_features,)`` per feature."""
        return (self.n_features,) if self.per_feature else ()

    def init_coef(self) -> np.ndarray:
        """A zero coefficient vector of the right length."""
        return np.zeros(self.n_params)

    def check_log_alpha(self, log_alpha) -> np.ndarray:
        """Validate ``log_alpha`` and return it as a float64 array of shape ``hyper_shape``.

        A scalar problem accepts a number or an array of shape ``(1,)``.

        Parameters
        ----------
        log_alpha : float or array-like
            Log of the penalty: one value, or one per feature for a per-feature problem.

        Returns
        -------
        ndarray of shape ``hyper_shape``
            ``log_alpha`` as float64.

        Raises
        ------
        ValueError
            For a wrong shape, a non-finite value, or ``|log_alpha| > LOG_ALPHA_LIMIT``.
        """
        la = np.asarray(log_alpha, dtype=np.float64)
        if self.per_feature:
            if la.shape != (self.n_features,):
                raise ValueError(
                    f"per_feature=True needs log_alpha of shape ({self.n_features},), "
                    f"got {la.shape}."
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

    def penalty_weights(self, log_alpha) -> np.ndarray:
        """``alpha`` broadcast to the coefficient vector (0 for the intercept).

        The result is cached for the last ``log_alpha`` (solvers call this at every step); do
        not modify it.

        Parameters
        ----------
        log_alpha : float or ndarray of shape ``hyper_shape``
            Log of the penalty, ``alpha = exp(log_alpha)``.

        Returns
        -------
        ndarray of shape (n_params,)
            The penalty of each coefficient (read-only).
        """
        la = self.check_log_alpha(log_alpha)
        key = la.tobytes()
        if self._penalty_cache[0] != key:
            weights = np.zeros(self.n_params)  # intercepts are not penalized
            # Row j of the coefficient matrix belongs to feature j.
            alpha = np.exp(la)
            weights[: self.design.n_coef] = (
                np.repeat(alpha, self.n_outputs) if self.per_feature else alpha
            )
            weights.flags.writeable = False
            self._penalty_cache = (key, weights)
        return self._penalty_cache[1]

    def _check_coef(self, w) -> np.ndarray:
        w = np.asarray(w, dtype=np.float64)
        if w.shape != (self.n_params,):
            raise ValueError(f"w must have shape ({self.n_params},), got {w.shape}.")
        return w

    # -- objective ---------------------------------------------------------------------------
    def _weighted(self, values):
        if self.sample_weight is None:
            return values
        if values.ndim == 2:
            return self.sample_weight[:, np.newaxis] * values
        return self.sample_weight * values

    def value(self, w, log_alpha) -> float:
        """Objective ``r(w, log_alpha)``.

        Parameters
        ----------
        w : ndarray of shape (n_params,)
            Flat coefficient vector (``coef`` then the intercepts, see :attr:`n_params`).
        log_alpha : float or ndarray of shape ``hyper_shape``
            Log of the penalty, ``alpha = exp(log_alpha)``.

        Returns
        -------
        float
        """
        return self.value_and_grad(w, log_alpha)[0]

    def grad(self, w, log_alpha) -> np.ndarray:
        """Gradient of the objective in ``w``.

        Parameters
        ----------
        w : ndarray of shape (n_params,)
            Flat coefficient vector (``coef`` then the intercepts, see :attr:`n_params`).
        log_alpha : float or ndarray of shape ``hyper_shape``
            Log of the penalty, ``alpha = exp(log_alpha)``.

        Returns
        -------
        ndarray of shape (n_params,)
        """
        return self.value_and_grad(w, log_alpha)[1]

    def value_and_grad(self, w, log_alpha) -> tuple[float, np.ndarray]:
        """Objective and its gradient in ``w`` (two products with X).

        Parameters
        ----------
        w : ndarray of shape (n_params,)
            Flat coefficient vector (``coef`` then the intercepts, see :attr:`n_params`).
        log_alpha : float or ndarray of shape ``hyper_shape``
            Log of the penalty, ``alpha = exp(log_alpha)``.

        Returns
        -------
        value : float
        grad : ndarray of shape (n_params,)
        """
        w = self._check_coef(w)
        penalty = self.penalty_weights(log_alpha)
        z = self.design.decision(w)
        loss, derivative = self._loss_and_derivative(z)
        data_term = float(np.sum(self._weighted(loss)))
        grad = self.design.transpose_product(self._weighted(derivative), self.fit_intercept)
        n_coef = self.design.n_coef
        coef = w[:n_coef]
        if self.per_feature:
            penalty_grad = penalty[:n_coef] * coef
            grad[:n_coef] += penalty_grad
            penalty_value = float(np.dot(penalty_grad, coef))
        else:  # scalar alpha: in place, no temporary of the size of w
            alpha = float(penalty[0])
            axpy(alpha, coef, grad[:n_coef])
            penalty_value = alpha * float(np.dot(coef, coef))
        return data_term + 0.5 * penalty_value, grad

    def hessian_operator(self, w, log_alpha):
        """``v -> H v`` at ``w``, with the loss curvature computed once for many products.

        Parameters
        ----------
        w : ndarray of shape (n_params,)
            Flat coefficient vector (``coef`` then the intercepts, see :attr:`n_params`).
        log_alpha : float or ndarray of shape ``hyper_shape``
            Log of the penalty, ``alpha = exp(log_alpha)``.

        Returns
        -------
        callable
            ``v -> H(w) v`` for vectors ``v`` of shape (n_params,).
        """
        w = self._check_coef(w)
        penalty = self.penalty_weights(log_alpha)
        loss_hessian = self._loss_hessian(self.design.decision(w))
        design, intercept, weighted = self.design, self.fit_intercept, self._weighted
        n_coef = design.n_coef
        alpha = None if self.per_feature else float(penalty[0])

        def hvp(v):
            dz = weighted(loss_hessian(design.decision(v)))
            result = design.transpose_product(dz, intercept)
            # The penalty's part in place (no temporary of the size of v beyond axpy's).
            if alpha is None:
                result += penalty * v
            else:
                axpy(alpha, v[:n_coef], result[:n_coef])
            return result

        return hvp

    def hvp(self, w, log_alpha, v) -> np.ndarray:
        """Hessian-vector product ``H(w) v``.

        Parameters
        ----------
        w : ndarray of shape (n_params,)
            Flat coefficient vector (``coef`` then the intercepts, see :attr:`n_params`).
        log_alpha : float or ndarray of shape ``hyper_shape``
            Log of the penalty, ``alpha = exp(log_alpha)``.
        v : array-like of shape (n_params,)
            The vector to multiply.

        Returns
        -------
        ndarray of shape (n_params,)
        """
        return self.hessian_operator(w, log_alpha)(np.asarray(v, dtype=np.float64))

    def cross_vjp(self, w, log_alpha, q) -> np.ndarray:
        """``(d^2 r / d log_alpha d w)^T q``, of the shape of ``log_alpha``.

        ``d/d log_alpha_j`` of the gradient is ``alpha_j w_j e_j``; contracted with ``q`` it is
        ``alpha_j w_j q_j`` per feature (summed over the outputs of feature ``j``), or the sum
        of all of them for a scalar penalty.

        Parameters
        ----------
        w : ndarray of shape (n_params,)
            Flat coefficient vector (``coef`` then the intercepts, see :attr:`n_params`).
        log_alpha : float or ndarray of shape ``hyper_shape``
            Log of the penalty, ``alpha = exp(log_alpha)``.
        q : array-like of shape (n_params,)
            The adjoint ``H^{-1} grad_w outer`` (any vector of the coefficient's length).

        Returns
        -------
        ndarray of the shape of ``log_alpha``
        """
        w = self._check_coef(w)
        n_coef = self.design.n_coef
        penalty = self.penalty_weights(log_alpha)[:n_coef]
        q = np.asarray(q, dtype=np.float64)[:n_coef]
        if not self.per_feature:  # one dot product (CG's goal test calls this every iteration)
            return np.asarray(float(penalty[0]) * float(np.dot(w[:n_coef], q)))
        per_coord = penalty * w[:n_coef] * q
        return per_coord.reshape(self.n_features, self.n_outputs).sum(axis=1)


class LogisticRegressionProblem(LogisticLoss, _PenalizedLinearProblem):
    """L2-regularized logistic regression, scikit-learn's objective with ``C = 1/alpha``.

    Two classes (binary, labels mapped to {-1, +1}):
    ``r(w, log_alpha) = sum_i s_i log(1 + exp(-y_i (x_i . coef + b))) + alpha/2 ||coef||^2``.

    Three or more classes (multinomial, like scikit-learn's ``LogisticRegression``):
    ``r = sum_i s_i [logsumexp(z_i) - z_{i, y_i}] + alpha/2 ||coef||_F^2`` with
    ``z_i = x_i coef + b``, ``coef`` of shape ``(n_features, n_classes)`` (flattened row-major
    in ``w``, followed by the ``n_classes`` intercepts). The intercepts are defined up to a common
    shift (the softmax ignores it); the coefficients are unique.

    Per feature, ``alpha_j`` penalizes row ``j`` of ``coef``.

    Parameters
    ----------
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Training data; sparse input stays sparse (CSR).
    y : array-like of shape (n_samples,)
        Labels of any type; with two classes ``classes_[1]`` is the positive class.
    fit_intercept : bool, default=False
        Add an unpenalized intercept, stored as the last coefficient.
    per_feature : bool, default=False
        One penalty per feature instead of a single one.
    sample_weight : array-like of shape (n_samples,), optional
        Per-sample weights of the loss.
    classes : array-like, optional
        The classes in scikit-learn's order (sorted; with two, ``classes[1]`` is positive).
        Needed when ``y`` lacks some class (a small cross-validation fold); ``np.unique(y)``
        otherwise.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The labels, in scikit-learn's order.
    n_outputs : int
        1 for two classes, ``n_classes`` for the multinomial model.
    """

    def __init__(
        self, X, y, *, fit_intercept=False, per_feature=False, sample_weight=None, classes=None
    ):
        self._classes_arg = classes
        super().__init__(
            X, y, fit_intercept=fit_intercept, per_feature=per_feature, sample_weight=sample_weight
        )

    def _loss_hessian(self, z):
        if self.n_outputs == 1:
            curvature = logistic_curvature(z)
            return lambda dz: curvature * dz
        proba = softmax_cross_entropy(z, self.y)[2]
        return lambda dz: softmax_hessian_product(proba, dz)


class RidgeProblem(SquaredLoss, _PenalizedLinearProblem):
    """L2-regularized least squares, half of scikit-learn's ``Ridge(alpha)`` objective.

    ``r(w, log_alpha) = 1/2 sum_i s_i (y_i - x_i . coef - b)^2 + alpha/2 ||coef||^2``.

    Parameters
    ----------
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Training data; sparse input stays sparse (CSR).
    y : array-like of shape (n_samples,)
        Real targets.
    fit_intercept : bool, default=False
        Add an unpenalized intercept, stored as the last coefficient.
    per_feature : bool, default=False
        One penalty per feature instead of a single one.
    sample_weight : array-like of shape (n_samples,), optional
        Per-sample weights of the loss.
    """

    def _loss_hessian(self, z):
        return lambda dz: dz
