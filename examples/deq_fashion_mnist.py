"""
A tiny multiscale equilibrium model on Fashion-MNIST
====================================================

Train a tiny multiscale deep equilibrium model (MDEQ) on Fashion-MNIST with SHINE's backward.
The forward pass finds the equilibrium with batched Broyden; the backward pass reads the adjoint
off Broyden's inverse estimate (``backward="shine"``) instead of solving a second linear system.
Swap in ``"ift"`` (exact), ``"jacobian-free"``, ``"refine(3)"`` or ``"fallback"`` to compare.

Data: the four Fashion-MNIST IDX files, in the folder given by ``--data`` or the environment
variable ``HOAG_SHINE_FASHION_MNIST`` (download them from
https://github.com/zalandoresearch/fashion-mnist#get-the-data). On one CPU thread the default
(6000 training images, one epoch, 2000 test images) takes about a minute or two.

Run::

    python examples/deq_fashion_mnist.py --backward shine --train-size 6000
"""

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from hoag_shine.datasets import load_fashion_mnist
from hoag_shine.deq import MDEQ
from hoag_shine.deq.configs import get_config


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train a tiny MDEQ on Fashion-MNIST.")
    parser.add_argument("--data", default=os.environ.get("HOAG_SHINE_FASHION_MNIST"))
    parser.add_argument("--backward", default="shine")
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    config = get_config("fashion-mnist-tiny")
    train = config["train"]
    mean, std = train["normalize"]

    def prepare(kind, size):
        images, labels = load_fashion_mnist(args.data, kind=kind)
        images, labels = images[:size], labels[:size]
        x = (torch.from_numpy(images).float() / 255 - mean) / std
        return x[:, None], torch.from_numpy(labels)

    x_train, y_train = prepare("train", args.train_size)
    x_test, y_test = prepare("test", args.test_size)

    model = MDEQ(**{**config["model"], "backward": args.backward})
    print(model.deq)
    steps = args.epochs * (len(y_train) // train["batch_size"])
    optimizer = torch.optim.Adam(model.parameters(), lr=train["lr"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)

    start, backward_times, step = time.perf_counter(), [], 0
    for _epoch in range(args.epochs):
        order = torch.randperm(len(y_train))
        for b in range(len(y_train) // train["batch_size"]):
            idx = order[b * train["batch_size"] : (b + 1) * train["batch_size"]]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            tic = time.perf_counter()
            loss.backward()
            backward_times.append(time.perf_counter() - tic)
            optimizer.step()
            schedule.step()
            step += 1
            if step % 20 == 0 or step == steps:
                stats = model.deq.last_stats
                print(
                    f"step {step:4d}/{steps}  loss {loss.item():.3f}  "
                    f"forward: {stats['forward_steps']} steps, relative residual "
                    f"{stats['forward_relative_residual']:.1e}  backward: {stats['backward']} "
                    f"{1e3 * stats['backward_time']:.1f} ms"
                    + (
                        f", fallback rate {stats['fallback_rate']:.2f}"
                        if stats["fallback_rate"] is not None
                        else ""
                    )
                )
    train_time = time.perf_counter() - start

    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(x_test[i : i + 500]).argmax(1) == y_test[i : i + 500]).sum())
            for i in range(0, len(y_test), 500)
        )
    print(
        f"backward={args.backward}: test accuracy {100 * correct / len(y_test):.2f}% "
        f"on {len(y_test)} images; training {train_time:.0f} s, median loss.backward() "
        f"{1e3 * np.median(backward_times):.1f} ms"
    )


if __name__ == "__main__":
    main()
