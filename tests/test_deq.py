"""Tests of the equilibrium layer, its backward strategies, MDEQ and the Fashion-MNIST loader.

Every gradient is compared in float64 with a reference formed independently in the test: the
explicit ``(I - J_f)^{-1}`` from a dense Jacobian, a dense Broyden matrix built from the
solver's ``U, V``, finite differences (gradcheck) or a single-process run (DDP).
"""

import gzip
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from hoag_shine.datasets import load_fashion_mnist  # noqa: E402
from hoag_shine.deq import (  # noqa: E402
    DEQ,
    IFT,
    MDEQ,
    Anderson,
    BroydenSolver,
    Fallback,
    FixedPointIteration,
    JacobianFree,
    Refine,
    Shine,
    StatePacker,
    compare_backward,
    make_backward,
    make_solver,
)
from hoag_shine.solvers import BroydenInverse  # noqa: E402

DTYPE = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions: intra-op threads only add synchronization (100x slower when the
    machine is oversubscribed), so this module runs on one thread and restores the setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# -- helpers ----------------------------------------------------------------------------------


class TanhCell(nn.Module):
    """``f(z, x) = tanh(W z + U x + b)`` with ``||W||_2 = rho``: ``J_f = diag(1 - f^2) W``."""

    def __init__(self, n=10, d_in=4, rho=0.6, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(n, n, generator=g, dtype=DTYPE)
        w *= rho / torch.linalg.matrix_norm(w, ord=2)
        self.W = nn.Parameter(w)
        self.U = nn.Parameter(torch.randn(n, d_in, generator=g, dtype=DTYPE) / math.sqrt(d_in))
        self.b = nn.Parameter(0.1 * torch.randn(n, generator=g, dtype=DTYPE))

    def forward(self, z, x):
        return torch.tanh(z @ self.W.T + x @ self.U.T + self.b)

    def init_state(self, x):
        return x.new_zeros((x.shape[0], self.W.shape[0]))


def tight_layer(cell, backward="ift", solver=None):
    solver = BroydenSolver(tol=1e-13, max_iter=100) if solver is None else solver
    return DEQ(cell, solver=solver, backward=backward, backward_tol=1e-13, backward_max_iter=200)


def data(batch=6, d_in=4, n=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, d_in, generator=g, dtype=DTYPE)
    c = torch.randn(batch, n, generator=g, dtype=DTYPE)
    return x, c


def dense_jacobians(fun, z):
    """Per-sample Jacobians ``d fun(z)_i / d z_i`` of a batched map, shape (batch, n, n)."""
    jac = torch.autograd.functional.jacobian(fun, z)  # (batch, n, batch, n)
    idx = torch.arange(z.shape[0])
    return jac[idx, :, idx, :]


def grads_of(layer_out_fn, params):
    for p in params:
        p.grad = None
    layer_out_fn().backward()
    return [p.grad.clone() for p in params]


def reference_grads(cell, z_star, x, w, params):
    """``w df/dtheta`` at ``z*`` for a given adjoint ``w`` (one vector-Jacobian product)."""
    return torch.autograd.grad(cell(z_star, x), params, w)


def rel(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


# -- state packing ----------------------------------------------------------------------------


@pytest.mark.parametrize("container", [list, tuple])
def test_state_packer_round_trip(container):
    parts = container([torch.randn(3, 2, 4), torch.randn(3, 5), torch.randn(3, 1, 2, 2)])
    packer = StatePacker(parts)
    flat = packer.flatten(parts)
    assert flat.shape == (3, 8 + 5 + 4)
    assert packer.size == 17
    back = packer.unflatten(flat)
    assert type(back) is container
    for a, b in zip(parts, back, strict=True):
        assert a.shape == b.shape
        assert torch.equal(a, b)
    # the layout is sample-major: sample i's scalars are row i
    assert torch.equal(flat[1, :8], parts[0][1].reshape(-1))


def test_state_packer_tensor_and_errors():
    z = torch.randn(4, 3, 2)
    packer = StatePacker(z)
    assert torch.equal(packer.unflatten(packer.flatten(z)), z)
    with pytest.raises(ValueError, match="batch size"):
        StatePacker([torch.zeros(2, 3), torch.zeros(3, 3)])
    with pytest.raises(TypeError):
        StatePacker([])
    with pytest.raises(ValueError, match="per-sample shape"):
        packer.flatten(torch.zeros(4, 2, 3))


class TwoPartCell(nn.Module):
    """A coupled state (matrix part, vector part) with a non-symmetric Jacobian."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(0.3 * torch.randn(3, 3, generator=g, dtype=DTYPE))
        self.C = nn.Parameter(0.2 * torch.randn(5, 6, generator=g, dtype=DTYPE))
        self.D = nn.Parameter(0.2 * torch.randn(5, 6, generator=g, dtype=DTYPE))

    def forward(self, z, x):
        a, v = z
        a_new = torch.tanh(a @ self.A + (v @ self.D).reshape(-1, 2, 3) + x[:, :6].reshape(-1, 2, 3))
        v_new = torch.tanh(a.reshape(-1, 6) @ self.C.T + 0.5 * v + x[:, 6:])
        return (a_new, v_new)


def test_list_state_layer_matches_explicit_ift():
    cell = TwoPartCell()
    layer = tight_layer(cell)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 11, generator=g, dtype=DTYPE, requires_grad=True)
    z0 = (torch.zeros(4, 2, 3, dtype=DTYPE), torch.zeros(4, 5, dtype=DTYPE))
    ca = torch.randn(4, 2, 3, generator=g, dtype=DTYPE)
    cv = torch.randn(4, 5, generator=g, dtype=DTYPE)
    a, v = layer(x, z0)
    assert a.shape == (4, 2, 3) and v.shape == (4, 5)
    fa, fv = cell((a, v), x)
    assert float((fa - a).detach().abs().max()) < 1e-12
    assert float((fv - v).detach().abs().max()) < 1e-12
    ((ca * a).sum() + (cv * v).sum()).backward()

    packer = StatePacker(z0)
    z_star = packer.flatten((a, v)).detach()
    with torch.no_grad():

        def f_flat(z):
            return packer.flatten(cell(packer.unflatten(z), x))

        jac = dense_jacobians(f_flat, z_star)
    grad = packer.flatten((ca, cv))
    eye = torch.eye(z_star.shape[1], dtype=DTYPE)
    w = torch.linalg.solve((eye - jac).transpose(1, 2), grad[:, :, None])[:, :, 0]
    x_ref = torch.autograd.grad(f_flat(z_star), x, w)[0]
    assert rel(x.grad, x_ref) < 1e-10


# -- forward solvers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "solver",
    [
        FixedPointIteration(tol=1e-12, max_iter=300),
        Anderson(tol=1e-12, max_iter=100, memory=5),
        BroydenSolver(tol=1e-12, max_iter=100),
    ],
    ids=["fixed-point", "anderson", "broyden"],
)
def test_forward_solvers_find_the_fixed_point(solver):
    cell = TanhCell()
    x, _ = data()
    layer = DEQ(cell, solver=solver, backward="ift")
    with torch.no_grad():
        z = layer(x)
        residual = torch.linalg.vector_norm(cell(z, x) - z, dim=1)
    assert float(residual.max()) < 1e-11
    stats = layer.last_stats
    assert stats["solver"] == solver.name
    assert stats["forward_converged"] and stats["forward_residual"] <= 1e-12
    assert 0 < stats["forward_steps"] <= solver.max_iter
    assert stats["backward"] is None


def test_anderson_needs_fewer_steps_than_picard():
    cell = TanhCell()
    q = torch.linalg.qr(torch.randn(10, 10, generator=torch.Generator().manual_seed(0)))[0]
    with torch.no_grad():
        cell.W.copy_(0.98 * q.to(DTYPE))  # every eigenvalue of modulus 0.98
        cell.b.zero_()
    x = 0.01 * data()[0]  # tanh nearly linear: Picard contracts by about 0.98 per step
    steps = {}
    for solver in (FixedPointIteration(tol=1e-10, max_iter=3000), Anderson(1e-10, 200, memory=10)):
        layer = DEQ(cell, solver=solver, backward="ift")
        with torch.no_grad():
            layer(x)
        assert layer.last_stats["forward_converged"]
        steps[solver.name] = layer.last_stats["forward_steps"]
    assert steps["anderson"] < steps["fixed-point"] / 5


def test_solver_keeps_lowest_residual_iterate():
    # f(z) = -1.5 z + 1 (fixed point 0.4) diverges under Picard iteration: the residual grows
    # by 1.5 at each step, so the start z0 = 0.5 (residual 0.25 per entry) stays the best point.
    def f(z, x):
        return -1.5 * z + 1.0

    z0 = torch.full((2, 3), 0.5, dtype=DTYPE)
    layer = DEQ(f, solver=FixedPointIteration(tol=1e-12, max_iter=5), backward="ift")
    result, _, _ = layer.solve(None, z0)
    assert result.n_iter == 5 and not result.converged
    assert torch.equal(result.z, z0)
    assert torch.allclose(result.residual, torch.full((2,), 0.25 * math.sqrt(3), dtype=DTYPE))


# -- backward strategies ----------------------------------------------------------------------


@pytest.mark.parametrize("backward_solver", ["broyden", "anderson", "fixed-point"])
def test_ift_equals_explicit_inverse(backward_solver):
    cell = TanhCell()
    x, c = data()
    x.requires_grad_(True)
    layer = tight_layer(cell, backward=IFT(backward_solver, tol=1e-13, max_iter=300))
    params = [x, cell.W, cell.U, cell.b]
    got = grads_of(lambda: (c * layer(x)).sum(), params)
    assert layer.last_stats["backward"] == "ift"
    assert layer.last_stats["backward_residual"] < 1e-12

    z_star = layer.solve(x)[0].z
    s = 1 - cell(z_star, x).detach() ** 2
    jac = s[:, :, None] * cell.W.detach()[None]  # J_f = diag(1 - f^2) W per sample
    eye = torch.eye(10, dtype=DTYPE)
    w = torch.linalg.solve((eye - jac).transpose(1, 2), c[:, :, None])[:, :, 0]
    expected = reference_grads(cell, z_star, x, w, params)
    for a, b in zip(got, expected, strict=True):
        assert rel(a, b) < 1e-10
    # the exact adjoint differs clearly from the Jacobian-free one: the check can fail
    jfb = reference_grads(cell, z_star, x, c, params)
    assert rel(jfb[1], expected[1]) > 1e-2


def dense_broyden(inverse, n):
    """``B_i = -I + sum_{k < count_i} u_ik v_ik^T`` formed densely."""
    batch = inverse.u.shape[0]
    out = -torch.eye(n, dtype=DTYPE).repeat(batch, 1, 1)
    for i in range(batch):
        for k in range(int(inverse.counts[i])):
            out[i] += torch.outer(inverse.u[i, k], inverse.v[i, k])
    return out


def test_shine_equals_minus_grad_times_dense_broyden_matrix():
    cell = TanhCell(rho=0.9)
    x, c = data()
    x.requires_grad_(True)
    solver = BroydenSolver(tol=1e-9, max_iter=30)
    layer = DEQ(cell, solver=solver, backward="shine")
    params = [x, cell.W, cell.U, cell.b]
    got = grads_of(lambda: (c * layer(x)).sum(), params)
    assert layer.last_stats["backward"] == "shine"

    result = layer.solve(x)[0]  # deterministic: the same U, V as inside the call
    b = dense_broyden(result.inverse, 10)
    jac_g = dense_jacobians(lambda z: cell(z, x) - z, result.z).detach()
    # B is not symmetric, and it does approximate J_g^{-1}
    assert rel(b, b.transpose(1, 2)) > 1e-2
    assert rel(b, torch.linalg.inv(jac_g)) < 0.5
    w = -(b.transpose(1, 2) @ c[:, :, None])[:, :, 0]  # w^T = -grad^T B
    expected = reference_grads(cell, result.z, x, w, params)
    for a, e in zip(got, expected, strict=True):
        assert rel(a, e) < 1e-10
    # a transpose error would be caught
    w_wrong = -(b @ c[:, :, None])[:, :, 0]
    wrong = reference_grads(cell, result.z, x, w_wrong, params)
    assert rel(wrong[0], expected[0]) > 1e-3


def test_shine_uses_terms_up_to_lowest_residual_iterate():
    # The strategy reads the inverse the solver returns; the counts stop at the best iterate.
    cell = TanhCell(rho=0.9)
    x, c = data()
    result = DEQ(cell, solver=BroydenSolver(tol=0.0, max_iter=25)).solve(x)[0]
    assert result.inverse.counts.max() <= result.n_iter
    w = Shine()(c, None, result).w
    b = dense_broyden(result.inverse, 10)
    assert rel(w, -(b.transpose(1, 2) @ c[:, :, None])[:, :, 0]) < 1e-12


def test_refine_approaches_ift():
    cell = TanhCell(rho=0.6)
    x, c = data(batch=5)
    layer = DEQ(cell, solver=BroydenSolver(tol=1e-12, max_iter=6), backward="ift")

    def loss(z):
        return (c * z).sum()

    steps = [0, 1, 2, 4, 8, 16]
    for solver in ("fixed-point", "broyden"):
        strategies = ["shine"] + [Refine(k, solver=solver, tol=0.0) for k in steps]
        comp, exact = compare_backward(
            layer, x, loss, strategies, reference=IFT(tol=1e-14, max_iter=300)
        )
        assert exact.residual < 1e-12
        errors = [comp[f"refine({k})"].relative_error for k in steps]
        assert errors[0] == comp["shine"].relative_error
        assert errors[0] > 1e-3  # SHINE alone is not exact here
        if solver == "fixed-point":
            # ||J_f||_2 <= 0.6: each Picard step contracts the error at least by 0.6
            for k, e in zip(steps[1:], errors[1:], strict=True):
                assert e <= 0.6**k * errors[0] * (1 + 1e-9)
        assert errors[-1] < 1e-8 * max(errors[0], 1.0)
        assert comp["refine(16)"].cosine == pytest.approx(1.0, abs=1e-12)


def test_fallback_triggers_per_sample():
    cell = TanhCell(rho=0.9)
    x, c = data(batch=8)
    x.requires_grad_(True)
    result = DEQ(cell, solver=BroydenSolver(tol=1e-6, max_iter=8)).solve(x)[0]
    w_shine = Shine()(c, None, result).w
    ratio = torch.linalg.vector_norm(w_shine, dim=1) / torch.linalg.vector_norm(c, dim=1)
    # Half of the samples above, half below, and the threshold between two of them (the
    # geometric mean of the middle ratios): a threshold equal to one sample's ratio would
    # leave its verdict to the rounding of the layer's own comparison.
    middle = torch.sort(ratio).values[3:5]
    assert middle[1] > middle[0] * (1 + 1e-6)
    threshold = float(torch.sqrt(middle[0] * middle[1]))
    bad = ratio > threshold
    assert int(bad.sum()) == 4

    strategy = Fallback(threshold=threshold)
    layer = DEQ(cell, solver=BroydenSolver(tol=1e-6, max_iter=8), backward=strategy)
    got = grads_of(lambda: (c * layer(x)).sum(), [x])[0]
    assert layer.last_stats["backward"] == "fallback"
    assert layer.last_stats["fallback_rate"] == pytest.approx(float(bad.double().mean()))
    w = torch.where(bad[:, None], c, w_shine)
    expected = reference_grads(cell, result.z, x, w, [x])[0]
    assert rel(got, expected) < 1e-10
    # samples below the threshold keep SHINE's estimate, samples above get Jacobian-free
    shine_grad = reference_grads(cell, result.z, x, w_shine, [x])[0]
    jfb_grad = reference_grads(cell, result.z, x, c, [x])[0]
    assert torch.allclose(got[~bad], shine_grad[~bad], rtol=1e-10, atol=0)
    assert torch.allclose(got[bad], jfb_grad[bad], rtol=1e-10, atol=0)
    # a huge threshold never falls back, a tiny one always does
    assert Fallback(1e12)(c, None, result).fallback_rate == 0.0
    assert Fallback(1e-12)(c, None, result).fallback_rate == 1.0


def test_fallback_replaces_non_finite_estimates():
    u = torch.zeros(2, 1, 3, dtype=DTYPE)
    u[0, 0, 0] = math.inf
    v = torch.ones(2, 1, 3, dtype=DTYPE)
    inverse = BroydenInverse(u, v, torch.tensor([1, 1]))
    result = type("R", (), {"inverse": inverse})()
    grad = torch.ones(2, 3, dtype=DTYPE)
    out = Fallback()(grad, None, result)
    assert torch.equal(out.w[0], grad[0])
    assert torch.equal(out.w[1], grad[1])  # -B^T 1 = 1 for the second sample: no fallback needed
    assert out.fallback_rate == 0.5


def test_fallback_threshold_default_and_configurable():
    assert Fallback().threshold == 1.8
    layer = DEQ(TanhCell(), backward="fallback", fallback_threshold=2.5)
    assert isinstance(layer.backward, Fallback) and layer.backward.threshold == 2.5


def test_jacobian_free_is_one_backprop_through_f():
    cell = TanhCell()
    x, c = data()
    x.requires_grad_(True)
    layer = tight_layer(cell, backward="jacobian-free")
    got = grads_of(lambda: (c * layer(x)).sum(), [x, cell.W])
    z_star = layer.solve(x)[0].z
    expected = reference_grads(cell, z_star, x, c, [x, cell.W])
    for a, e in zip(got, expected, strict=True):
        assert rel(a, e) < 1e-10


def test_gradcheck_tiny_layer():
    def f(z, x):
        inp, w = x
        return torch.tanh(z @ w.T + inp)

    g = torch.Generator().manual_seed(0)
    inp = torch.randn(2, 3, generator=g, dtype=DTYPE, requires_grad=True)
    w = (0.5 * torch.randn(3, 3, generator=g, dtype=DTYPE)).requires_grad_()
    z0 = torch.zeros(2, 3, dtype=DTYPE)
    for backward_solver in ("broyden", "fixed-point"):
        layer = DEQ(
            f,
            solver=BroydenSolver(tol=1e-14, max_iter=100),
            backward=IFT(backward_solver, tol=1e-14, max_iter=500),
        )
        assert torch.autograd.gradcheck(
            lambda inp, w, layer=layer: layer((inp, w), z0),
            (inp, w),
            eps=1e-6,
            atol=1e-8,
            rtol=1e-6,
        )


def test_eval_mode_gradients_and_no_grad():
    cell = TanhCell()
    x, c = data()
    x.requires_grad_(True)
    layer = tight_layer(cell, backward="ift")
    train = grads_of(lambda: (c * layer(x)).sum(), [x, cell.W])
    layer.eval()
    evaluated = grads_of(lambda: (c * layer(x)).sum(), [x, cell.W])
    for a, b in zip(train, evaluated, strict=True):
        assert torch.equal(a, b)
    assert layer.last_stats["backward"] == "ift"
    with torch.no_grad():
        out = layer(x)
    assert out.grad_fn is None and layer.last_stats["backward"] is None
    # nothing requires grad: no implicit backward is set up
    for p in cell.parameters():
        p.requires_grad_(False)
    assert layer(x.detach()).grad_fn is None


def test_strategy_names_and_validation():
    assert isinstance(make_backward("ift"), IFT)
    assert isinstance(make_backward("SHINE"), Shine)
    assert isinstance(make_backward("jfb"), JacobianFree)
    assert make_backward("refine(3)").steps == 3
    assert make_backward("refine").steps == 5
    assert make_backward("refine(3)").method == "refine(3)"
    assert isinstance(make_backward("fallback"), Fallback)
    assert Refine(2, start="fallback").needs_inverse
    with pytest.raises(ValueError, match="Unknown backward"):
        make_backward("adjoint")
    with pytest.raises(ValueError, match="Unknown fixed-point solver"):
        make_solver("newton")
    for name in ("shine", "fallback", "refine(2)"):
        with pytest.raises(ValueError, match="Broyden inverse"):
            DEQ(TanhCell(), solver="anderson", backward=name)
    layer = DEQ(TanhCell(), solver="anderson", backward="ift")
    with pytest.raises(ValueError, match="Broyden inverse"):
        layer.backward = "shine"
    layer.solver = "broyden"
    layer.backward = "shine"
    assert isinstance(layer.backward, Shine)
    with pytest.raises(ValueError):
        BroydenSolver(tol=-1.0)
    with pytest.raises(ValueError, match="init_state"):
        DEQ(lambda z, x: z).initial_state([1, 2])


def test_stats_report_backward_cost():
    cell = TanhCell(rho=0.9)
    x, c = data()
    x.requires_grad_(True)
    layer = DEQ(cell, solver=BroydenSolver(tol=1e-8, max_iter=50), backward="ift")
    (c * layer(x)).sum().backward()
    stats = layer.last_stats
    assert stats["backward_steps"] > 0 and stats["backward_residual"] < 1e-6
    assert stats["forward_relative_residual"] <= stats["forward_residual"] / 1e-3
    layer.backward = "refine(2)"
    (c * layer(x)).sum().backward()
    assert layer.last_stats["backward"] == "refine(2)"
    assert 0 < layer.last_stats["backward_steps"] <= 2


# -- MDEQ -------------------------------------------------------------------------------------


@pytest.mark.parametrize("backward", ["ift", "shine", "jacobian-free", "refine(2)", "fallback"])
def test_mdeq_trains_with_every_backward(backward):
    torch.manual_seed(0)
    model = MDEQ(channels=(4, 8, 8), groups=2, max_iter=6, backward_max_iter=6, backward=backward)
    images = torch.randn(3, 1, 28, 28)
    state = model.deq.f.init_state(model.inject(images))
    assert [tuple(s.shape) for s in state] == [(3, 4, 14, 14), (3, 8, 7, 7), (3, 8, 4, 4)]
    logits = model(images)
    assert logits.shape == (3, 10)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    stats = model.deq.last_stats
    assert stats["backward"] == backward
    assert stats["forward_steps"] == 6
    assert (stats["fallback_rate"] is not None) == (backward == "fallback")
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    # the equilibrium cell's parameters receive gradients through the implicit backward
    assert float(model.deq.f.branches[0][0].conv1.weight.grad.abs().sum()) > 0


def test_mdeq_samples_are_independent():
    torch.manual_seed(0)
    model = MDEQ(channels=(4, 8), groups=2, solver="anderson", backward="ift", max_iter=8)
    model.eval()
    images = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        together = model(images)
        alone = model(images[:1])
    assert torch.allclose(together[:1], alone, atol=1e-5)


@pytest.mark.parametrize("name", ["fashion-mnist-tiny", "cifar10-tiny", "cifar10-large"])
def test_configs_build_models(name):
    from hoag_shine.deq.configs import get_config

    config = get_config(name)
    model = MDEQ(**config["model"])
    assert len(model.deq.f.branches) == len(config["model"]["channels"])
    assert model.deq.solver.max_iter == config["model"]["max_iter"]
    assert {"lr", "batch_size", "epochs"} <= set(config["train"])
    config["model"]["channels"] = ()  # a copy: the registry is untouched
    assert get_config(name)["model"]["channels"]
    with pytest.raises(ValueError, match="Unknown configuration"):
        get_config("imagenet")


# -- DistributedDataParallel ------------------------------------------------------------------


def _ddp_model():
    torch.manual_seed(0)
    cell = TanhCell(n=6, d_in=4, rho=0.8, seed=0)
    head = nn.Linear(6, 3).to(DTYPE)
    return nn.Sequential(tight_layer(cell, backward="ift"), head)


def _ddp_data():
    g = torch.Generator().manual_seed(5)
    return torch.randn(8, 4, generator=g, dtype=DTYPE), torch.randint(0, 3, (8,), generator=g)


def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = DistributedDataParallel(_ddp_model())
        x, y = _ddp_data()
        part = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
        loss = nn.functional.cross_entropy(model(x[part]), y[part])
        loss.backward()
        torch.save([p.grad for p in model.parameters()], os.path.join(out_dir, f"{rank}.pt"))
        # Both ranks are done communicating before either tears the group down: a rank that
        # exits while gloo's threads still serve the other one can abort ("terminate called
        # without an active exception", seen once in a full CI run).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_single_process(tmp_path):
    import torch.multiprocessing as mp

    world = 2
    context = mp.start_processes(
        _ddp_worker,
        args=(world, str(tmp_path / "store"), str(tmp_path)),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 120
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail("The DDP processes did not finish within 120 s.")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()

    model = _ddp_model()
    x, y = _ddp_data()
    nn.functional.cross_entropy(model(x), y).backward()
    single = [p.grad for p in model.parameters()]
    for rank in range(world):
        grads = torch.load(tmp_path / f"{rank}.pt")
        assert len(grads) == len(single)
        for a, b in zip(grads, single, strict=True):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


# -- Fashion-MNIST loader ---------------------------------------------------------------------


def _write_idx(path, array, magic):
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_load_fashion_mnist_reads_idx(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28))
    labels = rng.integers(0, 10, size=5)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, 2051)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, 2049)
    x, y = load_fashion_mnist(tmp_path, kind="test")
    assert x.dtype == np.uint8 and x.shape == (5, 28, 28)
    assert np.array_equal(x, images) and np.array_equal(y, labels) and y.dtype == np.int64
    monkeypatch.setenv("HOAG_SHINE_FASHION_MNIST", str(tmp_path))
    assert np.array_equal(load_fashion_mnist(kind="test")[1], labels)
    with pytest.raises(FileNotFoundError, match="HOAG_SHINE_FASHION_MNIST"):
        load_fashion_mnist(tmp_path, kind="train")
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, 2051)
    with pytest.raises(ValueError, match="magic"):
        load_fashion_mnist(tmp_path, kind="test")
    with pytest.raises(ValueError, match="kind"):
        load_fashion_mnist(tmp_path, kind="valid")


def test_load_fashion_mnist_missing_folder(monkeypatch):
    monkeypatch.delenv("HOAG_SHINE_FASHION_MNIST", raising=False)
    with pytest.raises(FileNotFoundError, match=r"fashion-mnist.*HOAG_SHINE_FASHION_MNIST"):
        load_fashion_mnist()


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"


@pytest.mark.skipif(
    not (os.environ.get("HOAG_SHINE_FASHION_MNIST") or SHARED.is_dir()),
    reason="Fashion-MNIST files not available",
)
def test_load_real_fashion_mnist_test_split():
    x, y = load_fashion_mnist(os.environ.get("HOAG_SHINE_FASHION_MNIST") or SHARED, kind="test")
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)
    assert np.array_equal(np.bincount(y), np.full(10, 1000))
