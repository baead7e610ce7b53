"""The equilibrium layer :class:`DEQ`: ``z* = f(z*, x)`` with implicit backward passes.

Forward: the state (a tensor or a list/tuple of tensors) is flattened to ``(batch, D)``, the fixed
point is found without building a graph, and ``f`` is evaluated once more at ``z*`` with the graph
tracked. Backward: one :class:`torch.autograd.Function` sits on that evaluation; it replaces the
upstream gradient ``grad = dl/dz*`` by an adjoint estimate ``w ~ grad (I - J_f)^{-1}`` from the
selected :mod:`~hoag_shine.deq.backward` strategy (which may use ``v -> v J_f`` through the same
tracked evaluation), and autograd then carries ``w`` through ``f`` to its parameters and input.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ._state import State, StatePacker, requires_grad
from .backward import IFT, BackwardResult, BackwardStrategy, make_backward
from .solvers import FixedPointResult, FixedPointSolver, make_solver

__all__ = ["DEQ", "BackwardComparison", "compare_backward"]


class DEQ(nn.Module):
    """Deep equilibrium layer: returns ``z*`` with ``z* = f(z*, x)``.

    Parameters
    ----------
    f : nn.Module or callable
        ``f(z, x) -> z`` with ``z`` a tensor or a list/tuple of tensors (batch first); it must
        return a state shaped like its input and treat the samples independently (group norm,
        not batch norm). If it has a method ``init_state(x)``, that gives the default ``z0``;
        otherwise ``z0`` defaults to ``zeros_like(x)``.
    solver : {"broyden", "anderson", "fixed-point"} or FixedPointSolver
        Forward solver. SHINE, fallback and refine need ``"broyden"`` (its inverse estimate).
    backward : {"ift", "shine", "jacobian-free", "fallback", "refine(k)"} or BackwardStrategy
        Backward strategy (see :mod:`hoag_shine.deq.backward`). Can be changed later by
        assigning ``layer.backward``.
    tol : float
        Forward solver: absolute tolerance on each sample's ``||f(z) - z||`` (when ``solver``
        is a name).
    max_iter : int
        Forward solver: maximum iterations (when ``solver`` is a name).
    backward_tol : float
        ``ift``: tolerance on ``||w - w J_f - grad||`` relative to ``||grad||`` per sample.
    backward_max_iter : int
        ``ift``: maximum backward iterations (vector-Jacobian products).
    fallback_threshold : float
        ``fallback``: SHINE's ``||w||`` above this multiple of ``||grad||`` falls back to
        Jacobian-free for that sample.

    Attributes
    ----------
    last_stats : dict
        Statistics of the last call: ``solver``, ``forward_steps``, ``forward_converged``,
        ``forward_residual`` (largest ``||f(z)-z||``), ``forward_relative_residual`` (largest
        ``||f(z)-z|| / ||z||``), ``forward_time`` (s); after a backward pass also ``backward``
        (method), ``backward_steps``, ``backward_residual`` (relative, solvers only),
        ``fallback_rate`` (fallback only) and ``backward_time`` (s, the adjoint estimate alone).

    Notes
    -----
    Gradients are computed whenever autograd needs them (``torch.is_grad_enabled()`` and a
    parameter of ``f`` or a tensor in ``x`` requires grad), in ``train()`` and ``eval()`` mode
    alike. The initial state ``z0`` is treated as a constant.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> class Cell(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.lin = nn.Linear(4, 4)
    ...     def forward(self, z, x):
    ...         return torch.tanh(0.5 * self.lin(z) + x)
    >>> layer = DEQ(Cell(), backward="shine")
    >>> z = layer(torch.randn(8, 4))
    >>> z.sum().backward()
    >>> layer.last_stats["backward"]
    'shine'
    """

    def __init__(
        self,
        f: Callable[..., State],
        solver: str | FixedPointSolver = "broyden",
        backward: str | BackwardStrategy = "ift",
        *,
        tol: float = 1e-4,
        max_iter: int = 30,
        backward_tol: float = 1e-6,
        backward_max_iter: int = 50,
        fallback_threshold: float = 1.8,
    ):
        super().__init__()
        self.f = f
        self.tol, self.max_iter = tol, max_iter
        self.backward_tol, self.backward_max_iter = backward_tol, backward_max_iter
        self.fallback_threshold = fallback_threshold
        self._solver = make_solver(solver, tol=tol, max_iter=max_iter)
        self._backward = self._make_backward(backward)
        self._check_compatible(self._solver, self._backward)
        self.last_stats: dict[str, Any] = {}

    # -- configuration ----------------------------------------------------------------------

    @property
    def solver(self) -> FixedPointSolver:
        """The forward solver (assign a name or an instance to change it)."""
        return self._solver

    @solver.setter
    def solver(self, spec: str | FixedPointSolver) -> None:
        solver = make_solver(spec, tol=self.tol, max_iter=self.max_iter)
        self._check_compatible(solver, self._backward)
        self._solver = solver

    @property
    def backward(self) -> BackwardStrategy:
        """The backward strategy (assign a name or an instance to change it)."""
        return self._backward

    @backward.setter
    def backward(self, spec: str | BackwardStrategy) -> None:
        strategy = self._make_backward(spec)
        self._check_compatible(self._solver, strategy)
        self._backward = strategy

    def _make_backward(self, spec: str | BackwardStrategy) -> BackwardStrategy:
        return make_backward(
            spec,
            tol=self.backward_tol,
            max_iter=self.backward_max_iter,
            threshold=self.fallback_threshold,
        )

    @staticmethod
    def _check_compatible(solver: FixedPointSolver, strategy: BackwardStrategy) -> None:
        if strategy.needs_inverse and not solver.provides_inverse:
            raise ValueError(
                f"The backward strategy {strategy.method!r} reads the forward Broyden inverse; "
                f"the forward solver {solver.name!r} has none. Use solver='broyden', or "
                "backward='ift' or 'jacobian-free'."
            )

    def extra_repr(self) -> str:
        return f"solver={self._solver!r}, backward={self._backward!r}"

    # -- forward ----------------------------------------------------------------------------

    def initial_state(self, x: Any) -> State:
        """Default ``z0``: ``f.init_state(x)`` if ``f`` has it, else ``zeros_like(x)``.

        Parameters
        ----------
        x : Any
            Input of ``f``.

        Returns
        -------
        Tensor or list or tuple of Tensor
        """
        init = getattr(self.f, "init_state", None)
        if callable(init):
            return init(x)
        if isinstance(x, torch.Tensor):
            return torch.zeros_like(x)
        raise ValueError(
            "Cannot guess the initial state: pass z0, or give f a method init_state(x)."
        )

    def solve(
        self, x: Any, z0: State | None = None
    ) -> tuple[FixedPointResult, StatePacker, Callable[[torch.Tensor], torch.Tensor]]:
        """Run the forward solver without tracking gradients.

        Parameters
        ----------
        x : Any
            Input of ``f`` (a tensor or any structure ``f`` accepts).
        z0 : Tensor or list or tuple of Tensor, optional
            Initial state (default :meth:`initial_state`).

        Returns
        -------
        result : FixedPointResult
            Flattened fixed point (``result.z`` of shape (batch, D)), residuals and, for
            Broyden, the inverse estimate.
        packer : StatePacker
            Maps flat states to the structured state and back.
        f_flat : callable
            ``z -> flatten(f(unflatten(z), x))``, the map the solver iterated.
        """
        z0 = self.initial_state(x) if z0 is None else z0
        packer = StatePacker(z0)

        def f_flat(z: torch.Tensor) -> torch.Tensor:
            return packer.flatten(self.f(packer.unflatten(z), x))

        with torch.no_grad():
            result = self._solver.solve(f_flat, packer.flatten(z0).detach())
        return result, packer, f_flat

    def forward(self, x: Any, z0: State | None = None) -> State:
        """Equilibrium state ``f(z*, x)`` at the fixed point ``z*``, structured like ``z0``.

        Parameters
        ----------
        x : Any
            Input injected into ``f`` (a tensor, or any structure ``f`` accepts).
        z0 : Tensor or list or tuple of Tensor, optional
            Initial state (default :meth:`initial_state`).

        Returns
        -------
        Tensor or list or tuple of Tensor
        """
        start = time.perf_counter()
        result, packer, f_flat = self.solve(x, z0)
        stats: dict[str, Any] = {
            "solver": self._solver.name,
            "forward_steps": result.n_iter,
            "forward_converged": result.converged,
            "forward_residual": float(result.residual.max()),
            "forward_relative_residual": float(result.relative_residual.max()),
            "forward_time": time.perf_counter() - start,
            "backward": None,
        }
        self.last_stats = stats
        track = torch.is_grad_enabled() and (
            requires_grad(x) or any(p.requires_grad for p in self.parameters())
        )
        if not track:
            return packer.unflatten(f_flat(result.z))
        z_leaf = result.z.detach().requires_grad_()
        with torch.enable_grad():
            fz = f_flat(z_leaf)
        out = _ImplicitBackward.apply(fz, z_leaf, self._backward, result, stats)
        return packer.unflatten(out)


class _ImplicitBackward(torch.autograd.Function):
    """Identity on ``f(z*)`` whose backward replaces ``grad`` by the adjoint estimate ``w``."""

    @staticmethod
    def forward(ctx, fz, z_leaf, strategy, result, stats):
        ctx.save_for_backward(fz, z_leaf)
        ctx.strategy, ctx.result, ctx.stats = strategy, result, stats
        return fz.detach().clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        fz, z_leaf = ctx.saved_tensors
        start = time.perf_counter()
        out = ctx.strategy(grad.contiguous(), _vjp(fz, z_leaf), ctx.result)
        ctx.stats.update(_backward_stats(out, time.perf_counter() - start))
        return out.w, None, None, None, None


def _vjp(fz: torch.Tensor, z_leaf: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> v J_f`` per sample through the tracked evaluation ``fz = f(z_leaf)``."""

    def vjp(v: torch.Tensor) -> torch.Tensor:
        (out,) = torch.autograd.grad(fz, z_leaf, v, retain_graph=True, allow_unused=True)
        return torch.zeros_like(v) if out is None else out

    return vjp


def _backward_stats(out: BackwardResult, seconds: float) -> dict[str, Any]:
    return {
        "backward": out.method,
        "backward_steps": out.n_iter,
        "backward_residual": out.residual,
        "fallback_rate": out.fallback_rate,
        "backward_time": seconds,
    }


@dataclass
class BackwardComparison:
    """Quality of one adjoint estimate against the exact adjoint (see :func:`compare_backward`).

    Attributes
    ----------
    method : str
        Strategy name.
    cosine : float
        Median over samples of ``cos(w_i, w*_i)``.
    norm_ratio : float
        Median over samples of ``||w_i|| / ||w*_i||``.
    relative_error : float
        ``||w - w*|| / ||w*||`` over the whole batch.
    time : float
        Seconds spent computing the estimate.
    result : BackwardResult
        The estimate itself.
    """

    method: str
    cosine: float
    norm_ratio: float
    relative_error: float
    time: float
    result: BackwardResult

    def as_dict(self) -> dict[str, Any]:
        """The scalar fields, plus the strategy's statistics (JSON-ready)."""
        return {
            "method": self.method,
            "cosine": self.cosine,
            "norm_ratio": self.norm_ratio,
            "relative_error": self.relative_error,
            "time": self.time,
            "n_iter": self.result.n_iter,
            "residual": self.result.residual,
            "fallback_rate": self.result.fallback_rate,
        }


def compare_backward(
    layer: DEQ,
    x: Any,
    loss_fn: Callable[[State], torch.Tensor],
    strategies: Sequence[str | BackwardStrategy],
    *,
    reference: str | BackwardStrategy | None = None,
    z0: State | None = None,
) -> tuple[dict[str, BackwardComparison], BackwardResult]:
    """Compare adjoint estimates with an exact one at the same forward solution.

    Parameters
    ----------
    layer : DEQ
        The layer (its forward solver runs once; its own backward strategy is not used).
    x : Any
        Input of the layer.
    loss_fn : callable
        ``state -> scalar loss``; ``grad = dloss/dz*`` is the right-hand side.
    strategies : sequence of str or BackwardStrategy
        Estimates to compare.
    reference : str or BackwardStrategy, optional
        The exact adjoint (default ``IFT(tol=1e-8, max_iter=200)`` with Broyden; in float32,
        a relative residual of about ``1e-6`` is the floor).
    z0 : optional
        Initial state.

    Returns
    -------
    comparisons : dict
        Strategy name -> :class:`BackwardComparison`.
    exact : BackwardResult
        The reference adjoint (check ``exact.residual``).
    """
    result, packer, f_flat = layer.solve(x, z0)
    z_leaf = result.z.detach().requires_grad_()
    with torch.enable_grad():
        fz = f_flat(z_leaf)
        out = fz.detach().requires_grad_()
        (grad,) = torch.autograd.grad(loss_fn(packer.unflatten(out)), out)
    vjp = _vjp(fz, z_leaf)
    ref = IFT(tol=1e-8, max_iter=200) if reference is None else layer._make_backward(reference)
    chosen = [layer._make_backward(spec) for spec in strategies]
    for strategy in [ref, *chosen]:
        layer._check_compatible(layer.solver, strategy)
    with torch.no_grad():
        exact = ref(grad, vjp, result)
        comparisons = {}
        for strategy in chosen:
            start = time.perf_counter()
            est = strategy(grad, vjp, result)
            seconds = time.perf_counter() - start
            comparisons[strategy.method] = _compare(est, exact.w, seconds)
    return comparisons, exact


def _compare(est: BackwardResult, exact: torch.Tensor, seconds: float) -> BackwardComparison:
    w = est.w.to(torch.float64)
    ref = exact.to(torch.float64)
    w_norm = torch.linalg.vector_norm(w, dim=1)
    ref_norm = torch.linalg.vector_norm(ref, dim=1)
    tiny = torch.finfo(torch.float64).tiny
    cos = (w * ref).sum(dim=1) / (w_norm * ref_norm).clamp_min(tiny)
    ratio = w_norm / ref_norm.clamp_min(tiny)
    rel = torch.linalg.vector_norm(w - ref) / torch.linalg.vector_norm(ref).clamp_min(tiny)
    return BackwardComparison(
        method=est.method,
        cosine=float(cos.median()),
        norm_ratio=float(ratio.median()),
        relative_error=float(rel),
        time=seconds,
        result=est,
    )
