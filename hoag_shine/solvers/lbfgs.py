"""Limited-memory BFGS that keeps, and exposes, its inverse-Hessian estimate.

SHINE reuses the solver's memory after the solve: the inverse operator returned in the state is
exactly the one the solver would use for its next step (same pairs, in chronological order, same
initial scaling ``H0 = gamma I`` with ``gamma = s^T y / y^T y`` of the newest pair).

Outer-problem awareness (OPA): every ``opa_freq`` iterations, and ``opa_final`` times at the
solution, the solver spends one extra gradient evaluation to add the secant pair
``(e, grad(x + e) - grad(x))`` with ``e`` proportional to ``H_k v(x)``, where ``v`` is a direction
supplied by the caller (the outer gradient). The iterate does not move; the inverse becomes
accurate in the direction the outer problem needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._array import all_finite, axpy, dot, eps, is_numpy, namespace, norm, solve_triangular
from .linesearch import strong_wolfe

__all__ = ["LBFGS", "LBFGSMemory", "LBFGSState"]

ValueAndGrad = Callable[[Any], tuple[float, Any]]

#: Relative value noise of the line search in float64 (see :func:`strong_wolfe`).
_VALUE_NOISE = 1e-10


class LBFGSMemory:
    """Circular buffer of secant pairs ``(s, y)`` and the inverse-Hessian operator it defines.

    Pairs are stored in preallocated ``(size, n)`` arrays; :meth:`chronological` unrolls the
    circular buffer from oldest to newest, which is the order the BFGS recursion needs.

    The product with the estimate uses the compact representation of the L-BFGS matrix (Byrd,
    Nocedal and Schnabel, 1994), which is the two-loop recursion's matrix written with the
    Gram matrices of the pairs: with ``S`` and ``Y`` the pairs as columns (oldest first),
    ``R`` the upper triangle of ``S^T Y``, ``D`` its diagonal and ``H0 = gamma I``,

        H = gamma I + [S, gamma Y] [[R^-T (D + gamma Y^T Y) R^-1, -R^-T], [-R^-1, 0]]
            [S^T; gamma Y^T].

    The pairs are stored interleaved, ``(s_0, y_0, s_1, y_1, ...)`` in one ``(2 size, n)`` array,
    so that the stored ones are one contiguous block: a product reads them in two
    matrix-vector products (``[S, Y]^T v``, then their combination) plus two ``m x m``
    triangular solves, instead of ``4 m`` dot and axpy calls (whose many BLAS calls fight over
    the threads of two BLAS libraries when numpy's and scipy's are not pinned); a push adds one
    column of ``S^T Y`` and of ``Y^T Y``: one more matrix-vector product, or none when the
    push comes with the next product and ``y`` is the difference of that product's vector and
    the last one's (:meth:`push_and_matvec`, the L-BFGS iteration).

    Parameters
    ----------
    size : int
        Maximum number of pairs kept; the oldest is dropped when full.
    like : array
        A vector of the problem's length, dtype and device (numpy array or torch tensor).
    curvature_eps : float
        A pair is skipped unless ``s^T y > curvature_eps * ||s|| * ||y||``.
    """

    def __init__(self, size: int, like, *, curvature_eps: float = 1e-10):
        if size < 1:
            raise ValueError(f"memory size must be at least 1, got {size}.")
        xp = namespace(like)
        self.size = int(size)
        self.curvature_eps = float(curvature_eps)
        n = like.shape[0]
        options = {"dtype": like.dtype, "device": _device(like)}
        self._pairs = xp.zeros((self.size, 2, n), **options)  # slot i: (s_i, y_i)
        # Gram matrices of the stored pairs, by slot: sy[i, j] = s_i . y_j, yy[i, j] = y_i . y_j.
        self._sy = xp.zeros((self.size, self.size), **options)
        self._yy = xp.zeros((self.size, self.size), **options)
        self._gamma = 1.0
        self._next = 0  # slot written by the next push
        self.count = 0
        self.n_skipped = 0
        # (v, [S, Y]^T v by slot) of the last product, for push_and_matvec's next call
        self._last_products = None

    @property
    def _s(self):
        return self._pairs[:, 0, :]

    @property
    def _y(self):
        return self._pairs[:, 1, :]

    def _stored(self, used: int):
        """The first ``used`` slots as a contiguous ``(2 used, n)`` block: rows s_0, y_0, ..."""
        xp = namespace(self._pairs)
        return xp.reshape(self._pairs[:used], (2 * used, self._pairs.shape[2]))

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, n)``: the shape of the inverse-Hessian estimate."""
        n = self._pairs.shape[2]
        return (n, n)

    @property
    def dtype(self):
        """The dtype of the stored pairs."""
        return self._pairs.dtype

    def chronological(self) -> list[int]:
        """Slots of the stored pairs, oldest first."""
        first = (self._next - self.count) % self.size
        return [(first + i) % self.size for i in range(self.count)]

    def pairs(self) -> tuple[Any, Any]:
        """Stored pairs as two ``(count, n)`` arrays, oldest first (copies)."""
        xp = namespace(self._s)
        order = self.chronological()
        if not order:
            return self._s[:0, :], self._y[:0, :]
        idx = xp.asarray(order, device=_device(self._s))
        return xp.take(self._s, idx, axis=0), xp.take(self._y, idx, axis=0)

    def push(self, s, y) -> bool:
        """Append a pair; return False (and keep the memory) if its curvature is not safe.

        Parameters
        ----------
        s : array of shape (n,)
            Step ``x_new - x``.
        y : array of shape (n,)
            Gradient difference ``grad(x_new) - grad(x)``.

        Returns
        -------
        bool
            True when the pair was stored (the oldest one is dropped when the memory is full).
        """
        return self._push(s, y) is not None

    def push_and_matvec(self, s, y, v, previous=None):
        """:meth:`push` the pair, then return ``H v`` with the updated estimate.

        The two calls in one (the L-BFGS iteration's next direction). With ``previous``, the
        vector of the last :meth:`matvec` (or of this method's last call), unchanged since, and
        ``y = v - previous`` (the gradient difference of consecutive iterates), the products of
        the stored pairs with ``y`` are those with ``v`` minus those with ``previous``, already
        computed: one pass over the pairs instead of two (the pair's own products are four dot
        products). On 20news (130k coefficients, 10 pairs) the push and product read 21 MB of
        pairs per pass, 1.9 ms each. Without ``previous`` (or when the memory changed since),
        the products with ``y`` are computed. Fusing the two products into one matrix product
        with two columns was slower: BLAS packs the pairs for it (140k coefficients, 10 pairs,
        one thread: 2.18 ms against 1.46 ms for two matrix-vector products).

        Parameters
        ----------
        s, y : array of shape (n,)
            The pair, as in :meth:`push`.
        v : array of shape (n,)
            The vector to multiply (not modified).
        previous : array of shape (n,), optional
            The vector of the last product, with ``y = v - previous``.

        Returns
        -------
        array of shape (n,)
        """
        last = self._last_products
        if previous is None or last is None or last[0] is not previous:
            self._push(s, y)
            return self.matvec(v)
        used_before = self.count
        products_v = self._stored(used_before) @ v  # the one pass over the stored pairs
        stored = self._store(s, y)
        if stored is None:  # skipped: the products with v are those of the unchanged memory
            return self._apply(v, products_v)
        slot, sy = stored
        xp = namespace(products_v)
        products_y = products_v - last[1]  # [S, Y]^T (v - previous), by slot
        own_y = xp.asarray([sy, dot(y, y)], dtype=self.dtype, device=_device(v))
        own_v = xp.asarray([dot(s, v), dot(y, v)], dtype=self.dtype, device=_device(v))
        if slot == used_before:  # appended after the stored slots
            products_y = xp.concat([products_y, own_y])
            products_v = xp.concat([products_v, own_v])
        else:  # the oldest pair's slot, overwritten
            products_y[2 * slot : 2 * slot + 2] = own_y
            products_v[2 * slot : 2 * slot + 2] = own_v
        self._update_gram(slot, sy, products_y)
        return self._apply(v, products_v)

    def _push(self, s, y):
        """Store the pair when its curvature is safe and update the Gram matrices; return the
        slot written (None when skipped)."""
        stored = self._store(s, y)
        if stored is None:
            return None
        slot, sy = stored
        self._update_gram(slot, sy, self._stored(self.count) @ y)  # s_j . y, y_j . y for all j
        return slot

    def _store(self, s, y):
        """Write the pair into the next slot when its curvature is safe; return the slot and
        ``s . y`` (None when skipped). The Gram matrices are left to :meth:`_update_gram`."""
        sy = dot(s, y)
        if not (math.isfinite(sy) and sy > self.curvature_eps * norm(s) * norm(y)):
            self.n_skipped += 1
            return None
        slot = self._next
        self._pairs[slot, 0, ...] = s
        self._pairs[slot, 1, ...] = y
        self._next = (self._next + 1) % self.size
        self.count = min(self.count + 1, self.size)
        self._last_products = None
        return slot, sy

    def _update_gram(self, slot: int, sy: float, products) -> None:
        """Column ``slot`` of the Gram matrices from ``products``, the interleaved ``s_j . y``
        and ``y_j . y`` of the stored slots (a prefix: 0..count-1 before the buffer wraps, all
        after) with the pair's ``y``, and the scaling ``gamma`` from ``sy = s . y``."""
        used = self.count
        self._sy[:used, slot] = products[0::2]
        self._yy[:used, slot] = products[1::2]
        self._yy[slot, :used] = products[1::2]
        self._gamma = sy / float(self._yy[slot, slot])

    def clear(self) -> None:
        """Forget every pair."""
        self._next = 0
        self.count = 0
        self._gamma = 1.0
        self._last_products = None

    def copy(self) -> LBFGSMemory:
        """An independent copy (used to warm-start a later solve)."""
        new = object.__new__(LBFGSMemory)
        new.__dict__.update(self.__dict__)
        for name in ("_pairs", "_sy", "_yy"):
            setattr(new, name, _clone(getattr(self, name)))
        new._last_products = None
        return new

    def __getstate__(self):
        # The last product's cache refers to a vector of the solver's: not part of the state.
        return {**self.__dict__, "_last_products": None}

    def __setstate__(self, state):
        self.__dict__.update({"_last_products": None, **state})

    def resized(self, size: int) -> LBFGSMemory:
        """A copy that holds at most ``size`` pairs: the newest ones, in their order.

        Parameters
        ----------
        size : int
            The size of the new memory.

        Returns
        -------
        LBFGSMemory
        """
        if size == self.size:
            return self.copy()
        return self._refilled(size, self.chronological()[-size:])

    def _refilled(self, size: int, order) -> LBFGSMemory:
        """A new memory of ``size`` with this one's pairs ``order`` pushed in turn (a pair
        without safe curvature is skipped and counted)."""
        new = LBFGSMemory(size, self._s[0], curvature_eps=self.curvature_eps)
        for i in order:
            new.push(self._s[i], self._y[i])
        new.n_skipped += self.n_skipped
        return new

    def shifted(self, diagonal) -> LBFGSMemory:
        """A copy whose pairs belong to the Hessian plus ``diag(diagonal)``.

        Adding a quadratic term ``1/2 sum_j d_j x_j^2`` to the objective adds ``d * s`` to each
        gradient difference ``y`` exactly, so the pairs stay valid secant pairs of the new
        objective (up to the change of the rest of the Hessian). Pairs whose curvature is no
        longer safe are dropped; the order of the others is kept.

        Parameters
        ----------
        diagonal : float or array of shape (n,)
            The change ``d`` of the Hessian's diagonal (e.g. ``alpha_new - alpha_old`` per
            coefficient).

        Returns
        -------
        LBFGSMemory
            A new memory; this one is not modified.
        """
        xp = namespace(self._pairs)
        d = xp.asarray(diagonal, dtype=self.dtype, device=_device(self._pairs))
        new = self.copy()
        used = self.count
        for i in range(used):  # row by row: no temporary of the memory's size
            new._pairs[i, 1, ...] += d * new._pairs[i, 0, ...]
        # The Gram matrices of the shifted pairs in one pass (one matrix-matrix product).
        stored = new._stored(used)
        gram = stored @ stored.T
        new._sy[:used, :used] = gram[0::2, 1::2]
        new._yy[:used, :used] = gram[1::2, 1::2]
        sy = xp.linalg.diagonal(new._sy[:used, :used])
        norms = xp.sqrt(
            xp.linalg.diagonal(gram[0::2, 0::2]) * xp.linalg.diagonal(new._yy[:used, :used])
        )
        if used and not bool(xp.all(sy > self.curvature_eps * norms)):
            # A pair lost its safe curvature: rebuild from the pairs that keep it, in order.
            return new._refilled(self.size, new.chronological())
        if used:
            newest = (new._next - 1) % new.size
            new._gamma = float(new._sy[newest, newest]) / float(new._yy[newest, newest])
        return new

    @property
    def gamma(self) -> float:
        """Initial scaling ``s^T y / y^T y`` of the newest pair (1 when empty)."""
        return self._gamma if self.count else 1.0

    def matvec(self, v):
        """The product ``H v`` with the current inverse estimate (compact representation).

        Parameters
        ----------
        v : array of shape (n,)
            The vector to multiply (not modified).

        Returns
        -------
        array of shape (n,)
        """
        if self.count == 0:
            return _clone(v)
        return self._apply(v)

    def _apply(self, v, products=None):
        """``H v`` (at least one pair stored), given or computing ``products``, the interleaved
        ``s_j . v`` and ``y_j . v`` of the stored slots; remembered for the next push."""
        gamma, used = self.gamma, self.count
        xp = namespace(self._pairs)
        stored = self._stored(used)
        # Slot indices oldest first, and the chronological Gram matrices.
        order = xp.asarray(self.chronological(), device=_device(self._pairs))
        sy = xp.take(xp.take(self._sy[:used, :used], order, axis=0), order, axis=1)
        yy = xp.take(xp.take(self._yy[:used, :used], order, axis=0), order, axis=1)
        upper = xp.triu(sy)
        if products is None:
            products = stored @ v  # s_j . v and y_j . v, by slot
        self._last_products = (v, products)
        a = xp.take(products[0::2], order)  # S^T v
        b = gamma * xp.take(products[1::2], order)  # gamma Y^T v
        z = solve_triangular(upper, a)  # R^-1 S^T v
        rhs = xp.linalg.diagonal(sy) * z + gamma * (yy @ z) - b
        top = solve_triangular(upper, rhs, transpose=True)
        # Coefficients of the stored rows, in slot order: (top_j, -gamma z_j) for (s_j, y_j).
        coefficients = xp.zeros((used, 2), dtype=self.dtype, device=_device(self._pairs))
        coefficients[order, 0] = top
        coefficients[order, 1] = -gamma * z
        result = xp.reshape(coefficients, (2 * used,)) @ stored
        return axpy(gamma, v, result)

    # The estimate is symmetric.
    rmatvec = matvec
    __call__ = matvec

    def __matmul__(self, v):
        return self.matvec(v)

    def as_linear_operator(self):
        """The estimate as a :class:`scipy.sparse.linalg.LinearOperator` (numpy memory only)."""
        from scipy.sparse.linalg import LinearOperator

        if not isinstance(self._pairs, np.ndarray):
            raise TypeError("as_linear_operator needs numpy arrays; call matvec on tensors.")
        return LinearOperator(self.shape, matvec=self.matvec, rmatvec=self.matvec, dtype=self.dtype)


@dataclass
class LBFGSState:
    """What :meth:`LBFGS.run` returns.

    Attributes
    ----------
    x : array
        Final iterate (the best one: the objective decreases monotonically).
    value : float
        Objective at ``x``.
    grad : array
        Gradient at ``x``.
    grad_norm : float
        Norm of ``grad`` in the stopping test's norm (:attr:`LBFGS.gradient_norm`, the
        Euclidean norm by default).
    n_iter : int
        Iterations (accepted steps).
    n_fun_evals : int
        Objective-and-gradient evaluations, OPA's included.
    n_opa_evals : int
        Extra evaluations spent by OPA.
    converged : bool
        True when ``grad_norm <= tol``.
    message : str
        Why the solver stopped.
    memory : LBFGSMemory
        The secant pairs; a warm start for a later solve.
    """

    x: Any
    value: float
    grad: Any
    grad_norm: float
    n_iter: int
    n_fun_evals: int
    n_opa_evals: int
    converged: bool
    message: str
    memory: LBFGSMemory = field(repr=False)

    @property
    def inverse_hessian(self):
        """The inverse-Hessian estimate at ``x``.

        A :class:`scipy.sparse.linalg.LinearOperator` for numpy arrays, the
        :class:`LBFGSMemory` itself (with ``matvec``, ``@`` and call) for other backends.
        """
        if is_numpy(namespace(self.x)):
            return self.memory.as_linear_operator()
        return self.memory


@dataclass
class LBFGS:
    """L-BFGS with a strong-Wolfe line search, exposing its inverse estimate.

    Parameters
    ----------
    memory_size : int
        Number of secant pairs kept.
    tol : float
        The solver stops when the norm of the gradient is at most ``tol``.
    max_iter : int
        Maximum number of iterations.
    opa_freq : int or None
        Add an OPA pair every ``opa_freq`` iterations when a direction is given to :meth:`run`.
    opa_final : int
        Number of OPA pairs added at the returned iterate (when a direction is given). Each
        costs one gradient; the estimate is used there, so these pairs matter most.
    curvature_eps : float
        Curvature safeguard for accepting a pair (see :class:`LBFGSMemory`).
    c1, c2 : float
        Strong-Wolfe constants.
    max_line_search : int
        Maximum evaluations per line search.
    gradient_norm : callable, optional
        ``grad -> float``: the norm of the stopping test (``tol`` is in its units), e.g. a
        problem's ``relative_gradient_norm``. It sees the gradient the iteration computed
        anyway. Default: the Euclidean norm.
    step_tol : float, optional
        Also require the quasi-Newton step ``H grad``, the solver's estimate of the distance to
        the solution, to be at most ``step_tol * ||x||`` (the next direction, computed anyway
        unless the solver stops). A gradient can be small far from the solution along
        directions of small curvature (a tiny penalty); the step is not.
    """

    memory_size: int = 10
    tol: float = 1e-6
    max_iter: int = 1000
    opa_freq: int | None = None
    opa_final: int = 2
    curvature_eps: float = 1e-10
    c1: float = 1e-4
    c2: float = 0.9
    max_line_search: int = 25
    gradient_norm: Callable[[Any], float] | None = None
    step_tol: float | None = None

    def run(
        self,
        value_and_grad: ValueAndGrad,
        x0,
        *,
        memory: LBFGSMemory | None = None,
        opa_direction: Callable[[Any], Any] | None = None,
        take_memory: bool = False,
    ) -> LBFGSState:
        """Minimize from ``x0``.

        Parameters
        ----------
        value_and_grad : callable
            ``x -> (value, gradient)``.
        x0 : array
            Starting point (not modified).
        memory : LBFGSMemory, optional
            Pairs from an earlier solve to start from (copied, not modified; the newest
            ``memory_size`` of them when it holds more).
        opa_direction : callable, optional
            ``x -> v``: the direction in which OPA makes the inverse accurate.
        take_memory : bool
            Update ``memory`` in place instead of a copy (the caller hands it over and will not
            use it again; a copy of a large memory costs more than an iteration).

        Returns
        -------
        LBFGSState
        """
        x = _clone(x0)
        if memory is not None and memory.shape[0] == x.shape[0]:
            if take_memory and memory.size == self.memory_size:
                mem = memory
            else:
                mem = memory.resized(self.memory_size)  # a copy, of this solver's size
        else:
            mem = LBFGSMemory(self.memory_size, x, curvature_eps=self.curvature_eps)
        value, grad = _evaluate(value_and_grad, x)
        # Relative round-off of the objective for the line search: 1e-10 in float64 (as
        # always), about 1e-5 in float32, where 1e-10 would be below the values' resolution.
        value_noise = max(_VALUE_NOISE, 100.0 * eps(x))
        n_evals, n_opa = 1, 0
        last_step = None
        message = "maximum number of iterations reached"
        converged = False
        n_iter = 0
        retried = False
        h_grad = None  # H grad, when computed with the last push

        while True:
            measure = self._measure(grad)
            small_gradient, stop = gradient_test(measure, self.tol, self.step_tol)
            if stop is not None:
                converged, message = small_gradient, stop
                break
            if n_iter >= self.max_iter:
                break
            if self._opa_due(opa_direction, n_iter) and not retried and not small_gradient:
                n_opa += self._opa_update(value_and_grad, mem, x, grad, opa_direction, last_step)
                h_grad = None

            direction = -(mem.matvec(grad) if h_grad is None else h_grad)
            h_grad = None
            if small_gradient and norm(direction) <= self.step_tol * norm(x):
                # The quasi-Newton step, the estimate of the distance to the solution, is small
                # too (a small gradient alone is not enough along low-curvature directions).
                converged, message = True, "gradient norm and quasi-Newton step below tolerance"
                break
            slope = dot(grad, direction)
            if not (math.isfinite(slope) and slope < 0):
                mem.clear()
                direction, slope = -grad, -(norm(grad) ** 2)
            step0 = 1.0 if mem.count > 0 else min(1.0, 1.0 / norm(grad))

            ls = search_along(
                value_and_grad,
                x,
                direction,
                value,
                slope,
                step0,
                c1=self.c1,
                c2=self.c2,
                max_evals=self.max_line_search,
                value_noise=value_noise,
            )
            n_evals += ls.n_evals
            if ls.step == 0.0:
                if mem.count > 0 and not retried:
                    # The quasi-Newton direction failed: retry once along the gradient.
                    mem.clear()
                    retried = True
                    continue
                message = "line search failed"
                break
            retried = False
            x_new, grad_new = ls.payload
            s, y = x_new - x, grad_new - grad
            last_step = norm(s)
            x, value, grad, grad_old = x_new, ls.value, grad_new, grad
            n_iter += 1
            # The next direction's product in the same pass over the memory as the push, unless
            # the loop stops or adds an OPA pair first.
            stops = n_iter >= self.max_iter or (
                self.step_tol is None and not self._measure(grad) > self.tol
            )
            if stops or self._opa_due(opa_direction, n_iter):
                mem.push(s, y)
            else:
                h_grad = mem.push_and_matvec(s, y, grad, previous=grad_old)

        if converged and opa_direction is not None:
            for _ in range(self.opa_final):
                n_opa += self._opa_update(value_and_grad, mem, x, grad, opa_direction, last_step)
        return LBFGSState(
            x=x,
            value=value,
            grad=grad,
            grad_norm=self._measure(grad),
            n_iter=n_iter,
            n_fun_evals=n_evals + n_opa,
            n_opa_evals=n_opa,
            converged=converged,
            message=message,
            memory=mem,
        )

    def _opa_due(self, opa_direction, n_iter: int) -> bool:
        """True when an OPA pair is added before the step of iteration ``n_iter``."""
        return (
            opa_direction is not None
            and bool(self.opa_freq)
            and n_iter > 0
            and n_iter % self.opa_freq == 0
        )

    def _measure(self, grad) -> float:
        """The norm of the stopping test."""
        return norm(grad) if self.gradient_norm is None else float(self.gradient_norm(grad))

    @staticmethod
    def _opa_update(value_and_grad, mem, x, grad, opa_direction, last_step) -> int:
        """Push the OPA pair at ``x``; return the number of evaluations spent (0 or 1)."""
        v = opa_direction(x)
        e = mem.matvec(v)
        e_norm = norm(e)
        if not (math.isfinite(e_norm) and e_norm > 0):
            return 0
        # Length of the last step, floored so the gradient difference stays well above
        # round-off near convergence.
        floor = math.sqrt(eps(x)) * max(1.0, norm(x))
        length = max(last_step or 0.0, floor)
        e = e * (length / e_norm)
        _, grad_e = _evaluate(value_and_grad, x + e)
        mem.push(e, grad_e - grad)
        return 1


def gradient_test(measure: float, tol: float, step_tol) -> tuple[bool, str | None]:
    """``(small_gradient, stop)`` of a solver's gradient ``measure``: whether it is at most
    ``tol``, and why the solver stops before another step (None: it goes on; a small gradient
    alone stops it only without a step test)."""
    if not math.isfinite(measure):
        return False, "non-finite gradient"
    small_gradient = measure <= tol
    if small_gradient and step_tol is None:
        return True, "gradient norm below tolerance"
    return small_gradient, None


def search_along(
    value_and_grad: ValueAndGrad, x, direction, value: float, slope: float, step0: float, **options
):
    """The strong-Wolfe line search from ``x`` along ``direction`` (``options`` are those of
    :func:`strong_wolfe`); the result's payload is ``(x + t direction, its gradient)``."""

    def phi(t):
        x_t = x + t * direction
        v, g = _evaluate(value_and_grad, x_t)
        return v, dot(g, direction), (x_t, g)

    return strong_wolfe(phi, value, slope, step0, **options)


def _evaluate(value_and_grad: ValueAndGrad, x) -> tuple[float, Any]:
    value, grad = value_and_grad(x)
    value = float(value)
    if not all_finite(grad):
        value = math.inf
    return value, grad


def _clone(a):
    if isinstance(a, np.ndarray):
        return a.copy()
    return a.detach().clone()  # torch: a starting point that requires grad starts no graph


def _device(a):
    from array_api_compat import device

    return device(a)
