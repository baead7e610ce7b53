"""Plots of an outer search: the outer loss and the hyperparameter path (matplotlib, optional)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["plot_history"]


def _records(history) -> list[Mapping]:
    """The list of history records of an estimator, a :class:`BilevelResult` or a list."""
    if not isinstance(history, Sequence):
        for attribute in ("history_", "history"):
            if hasattr(history, attribute):
                history = getattr(history, attribute)
                break
    if isinstance(history, Mapping) or not isinstance(history, Sequence):
        raise TypeError(
            "history must be a fitted BilevelEstimator, a BilevelResult or a list of "
            f"history records (dicts), got {type(history).__name__}."
        )
    records = list(history)
    if not records:
        raise ValueError("history is empty: nothing to plot.")
    for key in ("outer_loss", "log_alpha"):
        if key not in records[0]:
            raise ValueError(f"history records must have the key {key!r}.")
    return records


def plot_history(history, *, x="iteration", axes=None, label=None):
    """Plot the outer loss and the path of ``log_alpha`` over an outer search.

    Parameters
    ----------
    history : BilevelEstimator, BilevelResult or list of dict
        A fitted :class:`~hoag_shine.estimator.BilevelEstimator` (its ``history_``), the
        result of :func:`~hoag_shine.solve_bilevel`, or the history records themselves.
    x : {"iteration", "time"}, default="iteration"
        Horizontal axis: outer iteration or seconds since the search started.
    axes : sequence of two matplotlib Axes, optional
        Where to draw (outer loss, then ``log_alpha``); a new figure by default. Passing the
        same axes again overlays several searches.
    label : str, optional
        Legend label of the curves (for overlays).

    Returns
    -------
    fig : matplotlib Figure
    axes : ndarray of two matplotlib Axes

    Notes
    -----
    Rejected HOAG steps (``accepted`` False in the records) are marked with crosses. With one
    penalty per feature, every feature's ``log_alpha`` is drawn (thin lines).
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "plot_history needs matplotlib, an optional dependency of hoag_shine: "
            "pip install matplotlib (or pip install 'hoag_shine[plot]')."
        ) from error
    if x not in ("iteration", "time"):
        raise ValueError(f"x must be 'iteration' or 'time', got {x!r}.")

    records = _records(history)
    xs = np.array(
        [r.get(x, k) if x == "iteration" else r["time"] for k, r in enumerate(records)],
        dtype=float,
    )
    loss = np.array([r["outer_loss"] for r in records], dtype=float)
    path = np.array([np.atleast_1d(np.asarray(r["log_alpha"], dtype=float)) for r in records])
    accepted = np.array([bool(r.get("accepted", True)) for r in records])

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    else:
        if len(axes) != 2:
            raise ValueError(f"axes must hold two Axes, got {len(axes)}.")
        fig = axes[0].figure
    axes = np.asarray(axes, dtype=object)

    (line,) = axes[0].plot(xs, loss, marker="o", markersize=3, label=label)
    if not accepted.all():
        axes[0].plot(
            xs[~accepted],
            loss[~accepted],
            linestyle="none",
            marker="x",
            color=line.get_color(),
            label=None if label is None else f"{label} (rejected)",
        )
    axes[0].set_ylabel("outer loss")
    axes[0].set_title("Outer loss")

    if path.shape[1] == 1:
        axes[1].plot(xs, path[:, 0], marker="o", markersize=3, color=line.get_color(), label=label)
    else:
        axes[1].plot(xs, path, linewidth=0.8, color=line.get_color(), alpha=0.6)
    axes[1].set_ylabel("log_alpha")
    axes[1].set_title("Hyperparameter path")

    xlabel = "outer iteration" if x == "iteration" else "time (s)"
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        if label is not None:
            ax.legend()
    return fig, axes
