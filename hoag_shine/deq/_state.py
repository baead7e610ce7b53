"""Flatten an equilibrium state (a tensor or a list/tuple of tensors) to ``(batch, D)`` and back."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["StatePacker", "requires_grad"]

State = torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]


class StatePacker:
    """Layout of a (possibly multiscale) state, to flatten it per sample and restore it.

    Parameters
    ----------
    state : Tensor or list or tuple of Tensor
        A template: every tensor has the batch on its first axis, the same batch size, dtype and
        device. Only the shapes and the container type are recorded.

    Examples
    --------
    >>> import torch
    >>> packer = StatePacker([torch.zeros(2, 3, 4), torch.zeros(2, 5)])
    >>> flat = packer.flatten([torch.ones(2, 3, 4), torch.ones(2, 5)])
    >>> flat.shape
    torch.Size([2, 17])
    >>> [t.shape for t in packer.unflatten(flat)]
    [torch.Size([2, 3, 4]), torch.Size([2, 5])]
    """

    def __init__(self, state: State):
        if isinstance(state, torch.Tensor):
            self.container: type | None = None
            tensors: Sequence[torch.Tensor] = [state]
        elif isinstance(state, (list, tuple)) and len(state) > 0:
            self.container = list if isinstance(state, list) else tuple
            tensors = state
        else:
            raise TypeError(
                "The equilibrium state must be a tensor or a non-empty list/tuple of tensors, "
                f"got {type(state).__name__}."
            )
        for t in tensors:
            if not isinstance(t, torch.Tensor) or t.ndim < 1:
                raise TypeError("Every part of the state must be a tensor with a batch axis.")
        self.batch_size = tensors[0].shape[0]
        if any(t.shape[0] != self.batch_size for t in tensors):
            raise ValueError("Every part of the state must have the same batch size.")
        self.shapes = [tuple(t.shape[1:]) for t in tensors]
        self.sizes = [math.prod(s) for s in self.shapes]

    @property
    def size(self) -> int:
        """Number of scalars per sample, ``D``."""
        return sum(self.sizes)

    def flatten(self, state: State) -> torch.Tensor:
        """Concatenate the parts of ``state`` into a tensor of shape ``(batch, D)``.

        Parameters
        ----------
        state : Tensor or list or tuple of Tensor
            A state with the recorded layout (any batch size).

        Returns
        -------
        Tensor of shape (batch, D)
        """
        tensors = [state] if self.container is None else list(state)
        if len(tensors) != len(self.shapes):
            raise ValueError(
                f"The state has {len(tensors)} parts; the layer expects {len(self.shapes)}."
            )
        for t, shape in zip(tensors, self.shapes, strict=True):
            if tuple(t.shape[1:]) != shape:
                raise ValueError(
                    f"State part of shape {tuple(t.shape)} does not match the expected "
                    f"per-sample shape {shape} (f must return a state shaped like its input)."
                )
        batch = tensors[0].shape[0]
        if len(tensors) == 1:
            return tensors[0].reshape(batch, -1)
        return torch.cat([t.reshape(batch, -1) for t in tensors], dim=1)

    def unflatten(self, flat: torch.Tensor) -> State:
        """Inverse of :meth:`flatten`: views of ``flat`` in the recorded shapes and container.

        Parameters
        ----------
        flat : Tensor of shape (batch, D)

        Returns
        -------
        Tensor or list or tuple of Tensor
        """
        batch = flat.shape[0]
        if self.container is None:
            return flat.reshape(batch, *self.shapes[0])
        parts = torch.split(flat, self.sizes, dim=1)
        out = [p.reshape(batch, *s) for p, s in zip(parts, self.shapes, strict=True)]
        return self.container(out)


def requires_grad(obj: Any) -> bool:
    """True when a tensor inside ``obj`` (tensor, list, tuple or dict, nested) requires grad."""
    if isinstance(obj, torch.Tensor):
        return obj.requires_grad
    if isinstance(obj, (list, tuple)):
        return any(requires_grad(o) for o in obj)
    if isinstance(obj, dict):
        return any(requires_grad(o) for o in obj.values())
    return False
