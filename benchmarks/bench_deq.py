"""DEQ benchmark: the tiny MDEQ on Fashion-MNIST trained with each backward strategy.

For every backward strategy and seed, the same tiny MDEQ (``hoag_shine.deq.configs.
FASHION_MNIST_TINY``, Broyden forward) is trained for the same number of epochs on the same
training subset in the same order, then evaluated on a fixed test subset. Reported side by side
(median over seeds): test accuracy, median backward time per batch (``loss.backward()``: the
adjoint estimate plus one backpropagation through the cell and the head), median time of the
adjoint estimate alone, whole training time, and the cosine and norm ratio of each backward
estimate against the exact adjoint (a tight Broyden solve of ``w = w J_f + grad``) on a fixed
probe batch at the start, middle and end of training (SHINE's Fig. 3 and E.2 in small).

Targets (issue 6): SHINE's backward at least 10x faster than ``ift``; the test accuracy of SHINE
and of SHINE with fallback within 0.5 percentage points of ``ift`` (median of seeds).

Run ``python benchmarks/bench_deq.py --help``; see ``benchmarks/README_deq.md``.
"""

# Threads are pinned before torch and numpy are imported.
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

# ruff: noqa: E402
import argparse
import concurrent.futures
import datetime
import json
import multiprocessing
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F

import hoag_shine
from hoag_shine.datasets import load_fashion_mnist
from hoag_shine.deq import IFT, MDEQ, compare_backward
from hoag_shine.deq.configs import get_config

matplotlib.use("Agg")
import matplotlib.pyplot as plt

METHODS = ("ift", "shine", "fallback", "refine(3)", "jacobian-free")
ESTIMATES = ("ift", "shine", "fallback", "refine(3)", "jacobian-free")
TARGET_SPEEDUP = 10.0
TARGET_ACCURACY_GAP_PP = 0.5
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"


# -- data -------------------------------------------------------------------------------------
def load_subsets(path, train_size, test_size, data_seed):
    """Normalized float tensors ``(x_train, y_train, x_test, y_test)`` of fixed random subsets."""
    config = get_config("fashion-mnist-tiny")
    mean, std = config["train"]["normalize"]
    rng = np.random.default_rng(data_seed)
    out = []
    for kind, size in (("train", train_size), ("test", test_size)):
        images, labels = load_fashion_mnist(path, kind=kind)
        idx = np.sort(rng.choice(len(labels), size=min(size, len(labels)), replace=False))
        x = (torch.from_numpy(images[idx]).float() / 255 - mean) / std
        out += [x[:, None], torch.from_numpy(labels[idx])]
    return tuple(out)


# -- one training run -------------------------------------------------------------------------
def train_one(method, seed, args):
    """Train the tiny MDEQ with one backward strategy; returns a JSON-ready record."""
    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = load_subsets(
        args.data, args.train_size, args.test_size, args.data_seed
    )
    config = get_config("fashion-mnist-tiny")
    config["model"]["max_iter"] = args.forward_iter
    torch.manual_seed(seed)
    model = MDEQ(**{**config["model"], "backward": method})
    steps_per_epoch = len(y_train) // args.batch_size
    total_steps = steps_per_epoch * args.epochs
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr or config["train"]["lr"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    order_gen = torch.Generator().manual_seed(seed)  # the same batches for every strategy
    probe_x, probe_y = x_train[: args.probe_size], y_train[: args.probe_size]
    checkpoints = sorted({0, total_steps // 2, total_steps})

    def compare(step):
        inj = model.inject(probe_x).detach()

        def loss_fn(state):
            return F.cross_entropy(model.classify(state), probe_y)

        comp, exact = compare_backward(
            model.deq,
            inj,
            loss_fn,
            ESTIMATES,
            reference=IFT(tol=args.ref_tol, max_iter=args.ref_iter),
        )
        return {
            "step": step,
            "exact_residual": exact.residual,
            "exact_steps": exact.n_iter,
            "estimates": {k: v.as_dict() for k, v in comp.items()},
        }

    quality = [compare(0)] if 0 in checkpoints else []
    records = []
    train_time = 0.0
    step = 0
    for _epoch in range(args.epochs):
        perm = torch.randperm(len(y_train), generator=order_gen)
        for b in range(steps_per_epoch):
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            t1 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t2 = time.perf_counter()
            optimizer.step()
            schedule.step()
            t3 = time.perf_counter()
            train_time += t3 - t0
            stats = model.deq.last_stats
            records.append(
                {
                    "loss": loss.item(),
                    "forward_s": t1 - t0,
                    "backward_s": t2 - t1,
                    "adjoint_s": stats["backward_time"],
                    "forward_steps": stats["forward_steps"],
                    "forward_relative_residual": stats["forward_relative_residual"],
                    "backward_steps": stats["backward_steps"],
                    "backward_residual": stats["backward_residual"],
                    "fallback_rate": stats["fallback_rate"],
                }
            )
            step += 1
            if step in checkpoints:
                quality.append(compare(step))
            if args.verbose and step % 25 == 0:
                print(f"[{method} seed {seed}] step {step}/{total_steps} loss {loss.item():.3f}")

    model.eval()
    correct = 0
    residuals = []
    with torch.no_grad():
        for i in range(0, len(y_test), 250):
            logits = model(x_test[i : i + 250])
            correct += int((logits.argmax(1) == y_test[i : i + 250]).sum())
            residuals.append(model.deq.last_stats["forward_relative_residual"])

    def med(key):
        values = [r[key] for r in records if r[key] is not None]
        return median(values) if values else None

    return {
        "method": method,
        "seed": seed,
        "test_accuracy": correct / len(y_test),
        "train_time_s": train_time,
        "median_backward_s": med("backward_s"),
        "median_adjoint_s": med("adjoint_s"),
        "median_forward_s": med("forward_s"),
        "median_forward_steps": med("forward_steps"),
        "median_forward_relative_residual": med("forward_relative_residual"),
        "median_backward_steps": med("backward_steps"),
        "median_backward_residual": med("backward_residual"),
        "mean_fallback_rate": (
            float(np.mean([r["fallback_rate"] for r in records]))
            if records and records[0]["fallback_rate"] is not None
            else None
        ),
        "test_max_forward_relative_residual": max(residuals),
        "final_train_loss": float(np.mean([r["loss"] for r in records[-20:]])),
        "steps": len(records),
        "quality": quality,
        "loss_curve": [r["loss"] for r in records],
    }


# -- summary ----------------------------------------------------------------------------------
def summarize(runs, methods):
    """Medians over seeds per method, ratios against ``ift`` and the targets."""
    table = {}
    for method in methods:
        rs = [r for r in runs if r["method"] == method]
        final = [r["quality"][-1]["estimates"] for r in rs]
        table[method] = {
            "seeds": [r["seed"] for r in rs],
            "test_accuracy": [r["test_accuracy"] for r in rs],
            "median_test_accuracy": median(r["test_accuracy"] for r in rs),
            "median_backward_s": median(r["median_backward_s"] for r in rs),
            "median_adjoint_s": median(r["median_adjoint_s"] for r in rs),
            "median_forward_s": median(r["median_forward_s"] for r in rs),
            "median_train_time_s": median(r["train_time_s"] for r in rs),
            # quality of the strategy's own estimate, on its own model, at the end of training
            "final_cosine": median(f[method]["cosine"] for f in final),
            "final_norm_ratio": median(f[method]["norm_ratio"] for f in final),
            "mean_fallback_rate": rs[0]["mean_fallback_rate"]
            and median(r["mean_fallback_rate"] for r in rs),
        }
    ref = table.get("ift")
    targets = {}
    if ref:
        for row in table.values():
            row["backward_speedup_vs_ift"] = ref["median_backward_s"] / row["median_backward_s"]
            row["adjoint_speedup_vs_ift"] = ref["median_adjoint_s"] / max(
                row["median_adjoint_s"], 1e-9
            )
            row["accuracy_gap_vs_ift_pp"] = 100 * (
                row["median_test_accuracy"] - ref["median_test_accuracy"]
            )
        if "shine" in table:
            speedup = table["shine"]["backward_speedup_vs_ift"]
            targets["shine_backward_speedup"] = {
                "value": speedup,
                "target": f">= {TARGET_SPEEDUP}",
                "met": speedup >= TARGET_SPEEDUP,
            }
        for method in ("shine", "fallback"):
            if method in table:
                gap = table[method]["accuracy_gap_vs_ift_pp"]
                targets[f"{method}_accuracy_gap_pp"] = {
                    "value": gap,
                    "target": f"|gap| <= {TARGET_ACCURACY_GAP_PP} (or above ift)",
                    "met": gap >= -TARGET_ACCURACY_GAP_PP,
                }
    return table, targets


def quality_over_training(runs, methods):
    """Median cosine and norm ratio of every estimate at each checkpoint, per trained model."""
    out = {}
    for method in methods:
        rs = [r for r in runs if r["method"] == method]
        steps = [q["step"] for q in rs[0]["quality"]]
        out[method] = {
            "steps": steps,
            **{
                est: {
                    "cosine": [
                        median(r["quality"][i]["estimates"][est]["cosine"] for r in rs)
                        for i in range(len(steps))
                    ],
                    "norm_ratio": [
                        median(r["quality"][i]["estimates"][est]["norm_ratio"] for r in rs)
                        for i in range(len(steps))
                    ],
                }
                for est in ESTIMATES
            },
            "exact_residual": [
                max(r["quality"][i]["exact_residual"] for r in rs) for i in range(len(steps))
            ],
        }
    return out


def plot(result, path):
    table = result["summary"]
    methods = list(table)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    ax = axes[0, 0]
    for i, m in enumerate(methods):
        accs = [100 * a for a in table[m]["test_accuracy"]]
        ax.scatter([i] * len(accs), accs, color="C0", alpha=0.6)
        ax.scatter([i], [100 * table[m]["median_test_accuracy"]], color="k", marker="_", s=400)
    if "ift" in table:
        ref = 100 * table["ift"]["median_test_accuracy"]
        ax.axhspan(
            ref - TARGET_ACCURACY_GAP_PP, ref + TARGET_ACCURACY_GAP_PP, color="C2", alpha=0.2
        )
    ax.set_xticks(range(len(methods)), methods, rotation=20)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("test accuracy (seeds, median; band: ift +- 0.5 pp)")

    ax = axes[0, 1]
    width = 0.4
    xs = np.arange(len(methods))
    ax.bar(
        xs - width / 2,
        [1e3 * table[m]["median_backward_s"] for m in methods],
        width,
        label="loss.backward()",
    )
    ax.bar(
        xs + width / 2,
        [1e3 * max(table[m]["median_adjoint_s"], 1e-3) for m in methods],
        width,
        label="adjoint estimate only",
    )
    ax.set_yscale("log")
    ax.set_xticks(xs, methods, rotation=20)
    ax.set_ylabel("median time per batch (ms)")
    ax.set_title("backward time per batch")
    ax.legend()

    quality = result["quality_over_training"]
    reference_model = "ift" if "ift" in quality else methods[0]
    q = quality[reference_model]
    for k, (metric, ax) in enumerate((("cosine", axes[1, 0]), ("norm_ratio", axes[1, 1]))):
        for j, est in enumerate(ESTIMATES):
            ax.plot(q["steps"], q[est][metric], marker="o", color=f"C{j}", label=est)
        ax.set_xlabel(f"training step (model trained with {reference_model})")
        ax.set_ylabel(f"{metric.replace('_', ' ')} vs exact adjoint")
        ax.set_title(f"{metric.replace('_', ' ')} of each estimate (median over seeds)")
        if k == 1:
            ax.axhline(1.0, color="gray", lw=0.8)
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(result["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(table):
    header = (
        f"{'method':<14}{'acc %':>8}{'gap pp':>8}{'bwd ms':>9}{'adj ms':>9}{'speedup':>9}"
        f"{'train s':>9}{'cos':>7}{'norm':>7}{'fb rate':>9}"
    )
    print(header)
    for m, row in table.items():
        fb = row["mean_fallback_rate"]
        print(
            f"{m:<14}{100 * row['median_test_accuracy']:>8.2f}"
            f"{row.get('accuracy_gap_vs_ift_pp', float('nan')):>8.2f}"
            f"{1e3 * row['median_backward_s']:>9.1f}{1e3 * row['median_adjoint_s']:>9.2f}"
            f"{row.get('backward_speedup_vs_ift', float('nan')):>9.1f}"
            f"{row['median_train_time_s']:>9.1f}{row['final_cosine']:>7.3f}"
            f"{row['final_norm_ratio']:>7.3f}{'' if fb is None else f'{fb:.3f}':>9}"
        )


def machine_info():
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "hoag_shine": hoag_shine.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads_per_process": 1,
        "device": "cpu",
    }
    try:
        root = Path(__file__).resolve().parents[1]
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        info["git_dirty"] = bool(
            subprocess.run(
                ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        default=os.environ.get("HOAG_SHINE_FASHION_MNIST") or SHARED_DATA,
        help="Fashion-MNIST folder (default: $HOAG_SHINE_FASHION_MNIST)",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=None, help="default: the config's")
    parser.add_argument("--forward-iter", type=int, default=12)
    parser.add_argument("--probe-size", type=int, default=32)
    parser.add_argument("--ref-tol", type=float, default=1e-5)
    parser.add_argument("--ref-iter", type=int, default=60)
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes (1 thread each)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "deq_fashion_mnist.json")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    start = time.perf_counter()
    load_start = os.getloadavg()
    jobs = [(m, s) for s in args.seeds for m in args.methods]
    runs = []
    if args.jobs > 1:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
            futures = [pool.submit(train_one, m, s, args) for m, s in jobs]
            for fut in concurrent.futures.as_completed(futures):
                run = fut.result()
                print(
                    f"done {run['method']} seed {run['seed']}: acc {run['test_accuracy']:.4f}, "
                    f"train {run['train_time_s']:.0f} s",
                    flush=True,
                )
                runs.append(run)
    else:
        for m, s in jobs:
            runs.append(train_one(m, s, args))
            print(f"done {m} seed {s}: acc {runs[-1]['test_accuracy']:.4f}", flush=True)
    runs.sort(key=lambda r: (args.methods.index(r["method"]), r["seed"]))
    table, targets = summarize(runs, args.methods)
    config = get_config("fashion-mnist-tiny")
    config["model"]["max_iter"] = args.forward_iter
    result = {
        "title": (
            f"tiny MDEQ on Fashion-MNIST ({args.train_size} train / {args.test_size} test images, "
            f"{args.epochs} epoch(s), batch {args.batch_size}, {len(args.seeds)} seeds, 1 thread "
            "per process)"
        ),
        "command": "python " + shlex.join([sys.argv[0], *(argv or sys.argv[1:])]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "wall_time_s": time.perf_counter() - start,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model_config": config["model"],
        "n_parameters": sum(p.numel() for p in MDEQ(**config["model"]).parameters()),
        "summary": table,
        "targets": targets,
        "quality_over_training": quality_over_training(runs, args.methods),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float))
    plot(result, args.out.with_suffix(".png"))
    print_table(table)
    for name, t in targets.items():
        print(
            f"target {name}: {t['value']:.2f} ({t['target']}) -> {'met' if t['met'] else 'MISSED'}"
        )
    print(f"wall time {result['wall_time_s']:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
