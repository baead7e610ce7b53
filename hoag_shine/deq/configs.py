"""Ready-made MDEQ sizes and training recipes (plain dicts: ``MDEQ(**config["model"])``).

- :data:`FASHION_MNIST_TINY`: the CPU configuration of the example and the benchmark.
- :data:`CIFAR10_TINY` and :data:`CIFAR10_LARGE`: recipes (not runs) with the sizes of the MDEQ
  reference configurations ``experiments/cifar/cls_mdeq_TINY.yaml`` and ``cls_mdeq_LARGE.yaml``
  of github.com/locuslab/mdeq (Bai, Koltun and Kolter, 2020), mapped onto :class:`MDEQ`'s
  arguments. The SHINE paper's CIFAR-10 results (full backward 93.51% at 209 ms per batch,
  SHINE 93.14% at 16.0 ms, Jacobian-free 93.09% at 12.9 ms) are for the large size on GPUs.

What differs from the reference: no weight normalization and no variational dropout in the
cell (the ``notes`` entry lists what a faithful run adds), the head uses group norm instead of
batch norm (samples stay independent), and the stem is one strided convolution. Train with
``train["backward"]`` set to the strategy to study.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

__all__ = ["CIFAR10_LARGE", "CIFAR10_TINY", "CONFIGS", "FASHION_MNIST_TINY", "get_config"]

FASHION_MNIST_TINY: dict[str, Any] = {
    "model": {
        "in_channels": 1,
        "num_classes": 10,
        "channels": (8, 16),
        "head_channels": (8, 16),
        "final_channels": 64,
        "expansion": 2,
        "groups": 4,
        "blocks": 1,
        "stem_stride": 2,  # 28x28 images -> branches at 14x14 and 7x7
        "pool_size": 4,  # 4x4 average pooling before the classifier (MDEQ: 1, global)
        "solver": "broyden",
        "tol": 1e-3,
        "max_iter": 12,
        "backward_tol": 1e-4,
        "backward_max_iter": 20,
        "fallback_threshold": 1.8,
    },
    "train": {
        "optimizer": "adam",
        "lr": 5e-3,
        "schedule": "cosine",
        "batch_size": 64,
        "epochs": 1,
        "normalize": (0.2860, 0.3530),  # Fashion-MNIST training mean and std of the pixels
    },
    "notes": "Trains on one CPU thread: about 0.4 s per batch of 64 with SHINE's backward.",
}

CIFAR10_TINY: dict[str, Any] = {
    "model": {
        "in_channels": 3,
        "num_classes": 10,
        "channels": (8, 16, 32),
        "head_channels": (8, 16, 32),  # reference: 4, 8, 16 with batch norm
        "final_channels": 128,
        "expansion": 5,
        "groups": 4,  # reference NUM_GROUPS 8 (needs channels divisible by 8)
        "blocks": 1,
        "stem_stride": 1,  # DOWNSAMPLE_TIMES 0: branches at 32, 16, 8
        "pool_size": 1,
        "solver": "broyden",
        "tol": 1e-3,
        "max_iter": 30,  # F_THRES
        "backward_tol": 1e-4,
        "backward_max_iter": 30,  # B_THRES
        "fallback_threshold": 1.8,
    },
    "train": {
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 0.0,
        "schedule": "cosine",
        "batch_size": 128,  # 2 GPUs x 64
        "epochs": 50,
        "pretrain_steps": 1000,  # weight-tied unrolled steps before the equilibrium training
        "augmentation": "random crop 32 (padding 4) and horizontal flip",
        "normalize": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    },
    "notes": (
        "Reference adds weight normalization on the cell's convolutions and variational "
        "dropout 0.15 (one mask per forward solve)."
    ),
}

CIFAR10_LARGE: dict[str, Any] = {
    "model": {
        "in_channels": 3,
        "num_classes": 10,
        "channels": (32, 64, 128, 256),
        "head_channels": (16, 32, 64, 128),  # reference: 14, 28, 56, 112 (x4 bottleneck)
        "final_channels": 1680,
        "expansion": 5,
        "groups": 8,
        "blocks": 1,
        "stem_stride": 1,
        "pool_size": 1,
        "solver": "broyden",
        "tol": 1e-3,
        "max_iter": 18,  # F_THRES
        "backward_tol": 1e-4,
        "backward_max_iter": 20,  # B_THRES
        "fallback_threshold": 1.8,
    },
    "train": {
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 0.0,
        "schedule": "cosine",
        "batch_size": 128,  # 4 GPUs x 32
        "epochs": 220,
        "pretrain_steps": 20000,
        "augmentation": "random crop 32 (padding 4) and horizontal flip",
        "normalize": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        "devices": "4 GPUs with torch.nn.parallel.DistributedDataParallel",
    },
    "notes": (
        "Reference adds weight normalization on the cell's convolutions and variational "
        "dropout 0.3. The SHINE paper reports 93.51% (full backward), 93.14% (SHINE) and "
        "93.09% (Jacobian-free) top-1 for this size."
    ),
}

CONFIGS: dict[str, dict[str, Any]] = {
    "fashion-mnist-tiny": FASHION_MNIST_TINY,
    "cifar10-tiny": CIFAR10_TINY,
    "cifar10-large": CIFAR10_LARGE,
}


def get_config(name: str) -> dict[str, Any]:
    """A deep copy of a named configuration (``"fashion-mnist-tiny"``, ``"cifar10-tiny"``, ...).

    Parameters
    ----------
    name : str
        Key of :data:`CONFIGS`.

    Returns
    -------
    dict
        With the keys ``"model"`` (arguments of :class:`~hoag_shine.deq.MDEQ`), ``"train"``
        and ``"notes"``.
    """
    if name not in CONFIGS:
        raise ValueError(f"Unknown configuration {name!r}; use one of {sorted(CONFIGS)}.")
    return deepcopy(CONFIGS[name])
