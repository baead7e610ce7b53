"""Checkpoint files of an outer search: atomic writes, fingerprints of the inputs, tensors.

A checkpoint is a pickle of a dict ``{"format", "fingerprint", "state"}``. It is written to a
temporary file in the same folder, flushed to disk and renamed over the previous one
(:func:`os.replace` is atomic), so an interruption at any moment leaves the previous checkpoint
or the new one, never a partial file. Torch tensors are stored as numpy arrays (with their dtype
and device) and become tensors again on loading, so a checkpoint does not depend on torch's own
serialization. Like any pickle, load only checkpoints you wrote.

The fingerprint describes what determines the search path: the data of each fold's problem and
criterion (their array attributes, hashed), the starting point and the settings of the search.
A search resumed from a checkpoint whose fingerprint differs would not continue the same path;
:func:`load` refuses it with a ValueError that says what differs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pickle
import tempfile
import types
from typing import Any

import numpy as np
import scipy.sparse as sp
from array_api_compat import is_torch_array

from ._array import to_numpy

__all__ = ["describe", "fingerprint", "load", "save"]

#: Version of the file layout; a checkpoint of another version is refused.
FORMAT = 2

#: Depth to which the attributes of nested objects are described.
_MAX_DEPTH = 3


def describe(value: Any, depth: int = 0) -> str:
    """A deterministic text description of ``value``, arrays replaced by a hash of their bytes.

    Numbers and strings are written exactly (``repr``), arrays (numpy, scipy.sparse, torch) as
    their dtype, shape and SHA-256 digest, functions by name, containers item by item, and
    other objects by their class and attributes: the public ones, and the private ones holding
    arrays (such as a criterion's normalized sample weights; caches, held in tuples or
    scalars, are left out).

    Parameters
    ----------
    value : object
        What to describe.
    depth : int
        Nesting level (objects deeper than a few levels are described by their class only).

    Returns
    -------
    str
    """
    if value is None or isinstance(value, bool | int | float | complex | str):
        return repr(value)
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        if value.dtype == object:  # the bytes would be pointers
            return f"array(object, {value.shape}, {describe(value.tolist(), depth)})"
        # Hash the bytes in memory order (a transposed view is hashed without a copy).
        order = "F" if value.flags.f_contiguous and not value.flags.c_contiguous else "C"
        data = np.ascontiguousarray(value.T if order == "F" else value)
        digest = hashlib.sha256(data.reshape(-1).view(np.uint8)).hexdigest()
        return f"array({value.dtype.str}, {value.shape}, {order}, {digest})"
    if sp.issparse(value):
        csr = sp.csr_matrix(value)
        parts = (csr.data, csr.indices, csr.indptr)
        return f"sparse({csr.shape}, {', '.join(describe(p) for p in parts)})"
    if is_torch_array(value):
        return _describe_tensor(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(describe(item, depth) for item in value) + "]"
    if isinstance(value, dict):
        items = sorted((str(key), describe(item, depth)) for key, item in value.items())
        return "{" + ", ".join(f"{key}: {item}" for key, item in items) + "}"
    if isinstance(value, type | types.FunctionType | types.BuiltinFunctionType):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, types.MethodType):
        return f"{describe(value.__func__)} of {type(value.__self__).__qualname__}"
    name = f"{type(value).__module__}.{type(value).__qualname__}"
    if type(value).__module__.split(".")[0] == "torch":  # torch.device, torch.dtype
        return f"{name}({value})"
    attributes = _attributes(value)
    if attributes is None or depth >= _MAX_DEPTH:
        return name
    inner = ", ".join(f"{key}={describe(item, depth + 1)}" for key, item in attributes)
    return f"{name}({inner})"


def _describe_tensor(tensor) -> str:
    import torch

    if tensor.layout == torch.sparse_csr:
        parts = (tensor.crow_indices(), tensor.col_indices(), tensor.values())
        return f"sparse({tuple(tensor.shape)}, {', '.join(describe(p) for p in parts)})"
    if tensor.layout != torch.strided:
        tensor = tensor.to_dense()
    return describe(to_numpy(tensor))


def _attributes(value) -> list[tuple[str, Any]] | None:
    if dataclasses.is_dataclass(value):
        pairs = [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    elif hasattr(value, "__dict__"):
        pairs = sorted(vars(value).items())
    else:
        return None
    return [(key, item) for key, item in pairs if not key.startswith("_") or _is_array(item)]


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray) or sp.issparse(value) or is_torch_array(value)


def fingerprint(inners, outers, log_alpha0, settings: dict[str, Any]) -> dict[str, Any]:
    """What determines a search path, in a form that can be stored and compared.

    Parameters
    ----------
    inners, outers : list
        The inner problem and the outer criterion of each fold.
    log_alpha0 : ndarray
        The starting hyperparameter.
    settings : dict
        The settings of the search that change its path (method, optimizer, ...).

    Returns
    -------
    dict
        ``folds`` (a digest of each fold's problem and criterion), ``log_alpha0`` and
        ``settings`` (descriptions).
    """

    def digest(obj) -> str:
        return hashlib.sha256(describe(obj).encode()).hexdigest()

    return {
        "folds": [(digest(i), digest(o)) for i, o in zip(inners, outers, strict=True)],
        "log_alpha0": describe(log_alpha0),
        "settings": {key: describe(value) for key, value in settings.items()},
    }


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words."""
    differences = []
    if len(saved["folds"]) != len(current["folds"]):
        differences.append(
            f"the number of folds ({len(saved['folds'])} in the checkpoint, "
            f"{len(current['folds'])} now)"
        )
    else:
        for k, (old, new) in enumerate(zip(saved["folds"], current["folds"], strict=True)):
            if old[0] != new[0]:
                differences.append(f"the data of the inner problem of fold {k}")
            if old[1] != new[1]:
                differences.append(f"the data of the outer criterion of fold {k}")
    if saved["log_alpha0"] != current["log_alpha0"]:
        differences.append(
            f"log_alpha0 ({_short(saved['log_alpha0'])} in the checkpoint, "
            f"{_short(current['log_alpha0'])} now)"
        )
    for key in sorted(set(saved["settings"]) | set(current["settings"])):
        old, new = saved["settings"].get(key), current["settings"].get(key)
        if old != new:
            differences.append(f"{key} ({_short(old)} in the checkpoint, {_short(new)} now)")
    return differences


def _short(text: str | None, limit: int = 80) -> str:
    if text is None:
        return "absent"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- files ---------------------------------------------------------------------------------------
def _tensor(array: np.ndarray, dtype: str, device: str):
    """A torch tensor from a stored numpy array (the inverse of the pickler's reduction)."""
    import torch

    return torch.as_tensor(array, dtype=getattr(torch, dtype.removeprefix("torch.")), device=device)


class _Pickler(pickle.Pickler):
    """Stores torch tensors as numpy arrays (shared tensors stay shared: pickle's memo)."""

    def reducer_override(self, obj):
        if is_torch_array(obj):
            return _tensor, (to_numpy(obj), str(obj.dtype), str(obj.device))
        return NotImplemented


def save(path: str | os.PathLike, fingerprint: dict[str, Any], state: Any) -> None:
    """Write a checkpoint atomically: to a temporary file, then renamed over ``path``.

    Parameters
    ----------
    path : str or path-like
        The checkpoint file.
    fingerprint : dict
        From :func:`fingerprint`.
    state : object
        What the search needs to continue (picklable).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as file:
            payload = {"format": FORMAT, "fingerprint": fingerprint, "state": state}
            _Pickler(file, protocol=pickle.HIGHEST_PROTOCOL).dump(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load(path: str | os.PathLike, fingerprint: dict[str, Any]) -> Any:
    """Read the state of a checkpoint written by :func:`save` for the same inputs.

    Parameters
    ----------
    path : str or path-like
        The checkpoint file.
    fingerprint : dict
        The current inputs' fingerprint (:func:`fingerprint`); it must equal the stored one.

    Returns
    -------
    object
        The stored state.

    Raises
    ------
    ValueError
        When the file cannot be read, is not a checkpoint of this version, or was written for
        other inputs.
    """
    path = os.fspath(path)
    remedy = "delete it (or pass another checkpoint path) to start a new search"
    try:
        with open(path, "rb") as file:
            payload = pickle.load(file)
    except Exception as exc:
        raise ValueError(f"Cannot read the checkpoint {path!r} ({exc!r}); {remedy}.") from exc
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT):
        raise ValueError(
            f"{path!r} is not a checkpoint of this version of hoag_shine (format {FORMAT}); "
            f"{remedy}."
        )
    differences = _differences(payload["fingerprint"], fingerprint)
    if differences:
        raise ValueError(
            f"The checkpoint {path!r} belongs to another search; what differs: "
            + "; ".join(differences)
            + f". Resume with the same data and settings, or {remedy}."
        )
    return payload["state"]
