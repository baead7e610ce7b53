"""A small multiscale deep equilibrium classifier (MDEQ, Bai, Koltun and Kolter, 2020).

The equilibrium state is a list of feature maps, one per resolution (branch ``i`` at
``1 / 2**i`` of the stem's resolution). One application of the cell ``f(z, x)``:

1. per branch, a residual block (3x3 conv, group norm, ReLU, 3x3 conv, input injection on the
   finest branch, group norm, residual, ReLU, group norm);
2. multiscale fusion: branch ``i`` receives the sum over ``j`` of branch ``j`` brought to its
   resolution (strided 3x3 convolutions down, a 1x1 convolution and a nearest upsampling up),
   followed by group norm.

Two choices differ from the reference MDEQ, both for the conditioning of the fixed point of a
narrow model (measured on the tiny configuration at initialization): the fusion ends with a
group norm alone instead of ReLU, 1x1 convolution and group norm (the random 1x1 convolution
after a ReLU put eigenvalues of ``J_f`` at -1.5 with 8 channels), and the second convolution of
each block starts at a tenth of the default scale (the injection dominates at first; the largest
eigenvalue of ``J_f`` was then about 0.9 and ``cond(I - J_f)`` about 120 instead of 1800).

A stem (convolutions outside the equilibrium) computes the injection; a head brings every
branch to its head width, downsamples and sums them from fine to coarse, pools and classifies.
Everything normalizes per sample (group norm), so samples stay independent for the solvers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backward import BackwardStrategy
from .layer import DEQ
from .solvers import FixedPointSolver

__all__ = ["MDEQ", "MDEQCell"]


def _gn(groups: int, channels: int) -> nn.GroupNorm:
    if channels % groups:
        raise ValueError(f"{channels} channels cannot be split into {groups} norm groups.")
    return nn.GroupNorm(groups, channels)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class _Block(nn.Module):
    """MDEQ's basic residual block with input injection and group norm.

    The second convolution starts at a tenth of PyTorch's default scale, so that at
    initialization the injection dominates and the map is well inside its contraction regime.
    """

    def __init__(self, channels: int, expansion: int, groups: int, init_scale: float = 0.1):
        super().__init__()
        self.conv1 = _conv3x3(channels, expansion * channels)
        self.gn1 = _gn(groups, expansion * channels)
        self.conv2 = _conv3x3(expansion * channels, channels)
        with torch.no_grad():
            self.conv2.weight.mul_(init_scale)
        self.gn2 = _gn(groups, channels)
        self.gn3 = _gn(groups, channels)

    def forward(self, z: torch.Tensor, injection: torch.Tensor | None = None) -> torch.Tensor:
        out = F.relu(self.gn1(self.conv1(z)))
        out = self.conv2(out)
        if injection is not None:
            out = out + injection
        out = self.gn2(out)
        return self.gn3(F.relu(out + z))


class _Down(nn.Module):
    """Branch ``j`` to the coarser branch ``i > j``: ``i - j`` strided 3x3 convolutions."""

    def __init__(self, channels: Sequence[int], j: int, i: int, groups: int):
        super().__init__()
        layers: list[nn.Module] = []
        for k in range(i - j):
            last = k == i - j - 1
            cout = channels[i] if last else channels[j]
            layers += [_conv3x3(channels[j], cout, stride=2), _gn(groups, cout)]
            if not last:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.net(z)


class _Up(nn.Module):
    """Branch ``j`` to the finer branch ``i < j``: 1x1 convolution, group norm, upsampling."""

    def __init__(self, channels: Sequence[int], j: int, i: int, groups: int):
        super().__init__()
        self.conv = nn.Conv2d(channels[j], channels[i], kernel_size=1, bias=False)
        self.gn = _gn(groups, channels[i])

    def forward(self, z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.gn(self.conv(z)), size=size, mode="nearest")


class MDEQCell(nn.Module):
    """The equilibrium map ``f(z, x)`` of MDEQ: residual blocks and multiscale fusion.

    Parameters
    ----------
    channels : sequence of int
        Channels per branch, finest first (one branch per entry).
    expansion : int
        Width multiplier inside the residual blocks.
    groups : int
        Group-norm groups (must divide every channel count).
    blocks : int
        Residual blocks per branch.

    Notes
    -----
    ``z`` is a list of tensors ``(batch, channels[i], H_i, W_i)`` with ``H_0 x W_0`` the
    injection's resolution and ``H_{i+1} = ceil(H_i / 2)``; ``x`` is the injection of shape
    ``(batch, channels[0], H_0, W_0)``, added in the finest branch's first block.
    """

    def __init__(
        self,
        channels: Sequence[int] = (8, 16),
        expansion: int = 2,
        groups: int = 4,
        blocks: int = 1,
    ):
        super().__init__()
        self.channels = tuple(int(c) for c in channels)
        if not self.channels:
            raise ValueError("MDEQ needs at least one branch.")
        if blocks < 1:
            raise ValueError("blocks must be at least 1.")
        self.branches = nn.ModuleList(
            nn.ModuleList(_Block(c, expansion, groups) for _ in range(blocks)) for c in channels
        )
        n = len(self.channels)
        self.fuse = nn.ModuleList(
            nn.ModuleList(
                nn.Identity() if i == j else (_Up if j > i else _Down)(self.channels, j, i, groups)
                for j in range(n)
            )
            for i in range(n)
        )
        self.post = nn.ModuleList(_gn(groups, c) for c in self.channels)

    def init_state(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Zero state at every resolution for the injection ``x``.

        Parameters
        ----------
        x : Tensor of shape (batch, channels[0], H, W)
            The injection.

        Returns
        -------
        list of Tensor
            ``(batch, channels[i], H_i, W_i)`` zeros, ``H_{i+1} = ceil(H_i / 2)``.
        """
        batch, _, h, w = x.shape
        state = []
        for c in self.channels:
            state.append(x.new_zeros((batch, c, h, w)))
            h, w = (h + 1) // 2, (w + 1) // 2
        return state

    def forward(self, z: Sequence[torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
        """One application of the cell: residual blocks, then multiscale fusion.

        Parameters
        ----------
        z : sequence of Tensor
            The state, one ``(batch, channels[i], H_i, W_i)`` tensor per branch.
        x : Tensor of shape (batch, channels[0], H_0, W_0)
            The injection (added in the finest branch).

        Returns
        -------
        list of Tensor
            The new state, shaped like ``z``.
        """
        blocks = []
        for i, branch in enumerate(self.branches):
            y = branch[0](z[i], x if i == 0 else None)
            for block in branch[1:]:
                y = block(y)
            blocks.append(y)
        out = []
        for i, (row, post) in enumerate(zip(self.fuse, self.post, strict=True)):
            size = tuple(blocks[i].shape[-2:])
            y = blocks[i]
            for j, module in enumerate(row):
                if j != i:
                    y = y + module(blocks[j], size)
            out.append(post(y))
        return out


class MDEQ(nn.Module):
    """Multiscale deep equilibrium image classifier.

    Parameters
    ----------
    in_channels : int
        Image channels (1 for Fashion-MNIST, 3 for CIFAR-10).
    num_classes : int
        Number of classes.
    channels : sequence of int
        Channels per resolution branch, finest first; ``len(channels)`` branches.
    head_channels : sequence of int, optional
        Channels of the head per branch (default half of ``channels``, at least the groups).
    final_channels : int
        Width of the last feature layer before pooling.
    expansion, groups, blocks : int
        See :class:`MDEQCell`.
    stem_stride : int
        Stride of the stem (1 or 2): resolution of the finest branch relative to the image.
    pool_size : int
        The head average-pools the last feature map to ``pool_size x pool_size`` before the
        linear classifier: 1 is MDEQ's global pooling; a few cells (the tiny configuration uses
        4) keep spatial information and learn much faster on small budgets.
    solver, backward, tol, max_iter, backward_tol, backward_max_iter, fallback_threshold
        Passed to :class:`DEQ`.

    Attributes
    ----------
    stem : nn.Module
        Image -> injection.
    deq : DEQ
        The equilibrium layer around :class:`MDEQCell` (``model.deq.last_stats``).
    head : nn.Module
        Multiscale state -> logits (:meth:`classify`).

    Examples
    --------
    >>> import torch
    >>> model = MDEQ(channels=(8, 16), backward="shine")
    >>> model(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: Sequence[int] = (8, 16),
        head_channels: Sequence[int] | None = None,
        final_channels: int = 64,
        expansion: int = 2,
        groups: int = 4,
        blocks: int = 1,
        stem_stride: int = 2,
        pool_size: int = 1,
        solver: str | FixedPointSolver = "broyden",
        backward: str | BackwardStrategy = "shine",
        tol: float = 1e-3,
        max_iter: int = 18,
        backward_tol: float = 1e-4,
        backward_max_iter: int = 20,
        fallback_threshold: float = 1.8,
    ):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if head_channels is None:
            head_channels = tuple(max(groups, c // 2) for c in channels)
        head_channels = tuple(int(c) for c in head_channels)
        if len(head_channels) != len(channels):
            raise ValueError("head_channels needs one entry per branch.")
        if stem_stride not in (1, 2):
            raise ValueError("stem_stride must be 1 or 2.")
        c0 = channels[0]
        self.stem = nn.Sequential(
            _conv3x3(in_channels, c0, stride=stem_stride),
            _gn(groups, c0),
            nn.ReLU(),
            nn.Conv2d(c0, c0, kernel_size=1, bias=False),
            _gn(groups, c0),
            nn.ReLU(),
        )
        self.deq = DEQ(
            MDEQCell(channels, expansion=expansion, groups=groups, blocks=blocks),
            solver=solver,
            backward=backward,
            tol=tol,
            max_iter=max_iter,
            backward_tol=backward_tol,
            backward_max_iter=backward_max_iter,
            fallback_threshold=fallback_threshold,
        )
        self.head = _Head(
            channels, head_channels, final_channels, num_classes, groups, pool_size=pool_size
        )

    def inject(self, images: torch.Tensor) -> torch.Tensor:
        """The injection ``x`` of the equilibrium cell.

        Parameters
        ----------
        images : Tensor of shape (batch, in_channels, H, W)

        Returns
        -------
        Tensor of shape (batch, channels[0], H / stem_stride, W / stem_stride)
        """
        return self.stem(images)

    def classify(self, state: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits from the multiscale equilibrium state.

        Parameters
        ----------
        state : sequence of Tensor
            One tensor per branch, as returned by :attr:`deq`.

        Returns
        -------
        Tensor of shape (batch, num_classes)
        """
        return self.head(state)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits: stem, equilibrium layer, head.

        Parameters
        ----------
        images : Tensor of shape (batch, in_channels, H, W)

        Returns
        -------
        Tensor of shape (batch, num_classes)
        """
        return self.classify(self.deq(self.inject(images)))


class _Head(nn.Module):
    """Per-branch 1x1 projection, fine-to-coarse strided merging, pooling, linear classifier."""

    def __init__(
        self,
        channels: Sequence[int],
        head_channels: Sequence[int],
        final_channels: int,
        num_classes: int,
        groups: int,
        pool_size: int = 1,
    ):
        super().__init__()
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1.")
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, h, 1, bias=False), _gn(groups, h), nn.ReLU())
            for c, h in zip(channels, head_channels, strict=True)
        )
        self.down = nn.ModuleList(
            nn.Sequential(_conv3x3(head_channels[i], head_channels[i + 1], 2), nn.ReLU())
            for i in range(len(channels) - 1)
        )
        self.final = nn.Sequential(
            nn.Conv2d(head_channels[-1], final_channels, 1, bias=False),
            _gn(groups, final_channels),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = nn.Linear(final_channels * pool_size**2, num_classes)

    def forward(self, state: Sequence[torch.Tensor]) -> torch.Tensor:
        y = self.proj[0](state[0])
        for i, down in enumerate(self.down):
            y = down(y) + self.proj[i + 1](state[i + 1])
        return self.classifier(self.pool(self.final(y)).flatten(1))
