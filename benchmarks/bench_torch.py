"""Torch backend benchmark on 20news: time per outer iteration, torch against numpy.

Runs the same HOAG search (``hoag_shine.solve_bilevel``, logistic regression, scalar penalty)
on the training split of 20news with the numpy backend and with the torch backend on the CPU
(float64, sparse CSR), and on CUDA when a GPU is present (float64 and float32; plus a synthetic
problem with real-sim's shape and density). Reports the median time per outer iteration of
each, its ratio to numpy (target on the CPU: at most 1.5x) and the agreement of the paths.

Run ``python benchmarks/bench_torch.py --help``; see ``benchmarks/README.md``.
"""

# Threads are pinned before numpy and torch are imported (BLAS reads these once, at load time).
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

# ruff: noqa: E402
import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from statistics import median

import matplotlib
import numpy as np
import scipy.sparse as sp
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import load_20news_split, machine_info

from hoag_shine import solve_bilevel
from hoag_shine.backends import make_criterion, make_problem

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_CPU_RATIO = 1.5
TARGET_GPU_SPEEDUP = 5.0
#: real-sim (LIBSVM): 72309 samples, 20958 features, 3709083 nonzeros.
REALSIM_SHAPE = (72309, 20958)
REALSIM_NNZ = 3709083


# -- problems ----------------------------------------------------------------------------------
def backends(devices):
    """``(label, backend options)`` of each configuration measured."""
    configs = [("numpy", {"backend": "numpy"})]
    for device in devices:
        configs.append(
            (f"torch-{device}", {"backend": "torch", "device": device, "dtype": "float64"})
        )
        if device.startswith("cuda"):
            configs.append(
                (
                    f"torch-{device}-float32",
                    {"backend": "torch", "device": device, "dtype": "float32"},
                )
            )
    return configs


def build(data, options):
    """Inner problem and held-out criterion of one backend (built outside the timings)."""
    inner = make_problem("logistic", data["X_train"], data["y_train"], **options)
    outer = make_criterion(
        "logistic", data["X_val"], data["y_val"], classes=inner.classes_, **options
    )
    _ = inner.gradient_scale  # computed once, outside the timings
    return inner, outer


def synthetic_realsim(seed):
    """A random sparse problem with real-sim's shape and density (labels from a sparse model).

    Rows are normalized like real-sim's (unit Euclidean norm); split 90/5/5 like 20news.
    """
    rng = np.random.default_rng(seed)
    n, d = REALSIM_SHAPE
    # Uniform positions (a few duplicates are summed), positive values like tf-idf.
    rows = rng.integers(0, n, REALSIM_NNZ)
    cols = rng.integers(0, d, REALSIM_NNZ)
    X = sp.csr_matrix((rng.uniform(0.0, 1.0, REALSIM_NNZ), (rows, cols)), shape=(n, d))
    X.sum_duplicates()
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1))).ravel()
    X = sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1e-12)) @ X)
    w = rng.standard_normal(d) * (rng.uniform(size=d) < 0.1)
    y = (X @ w + 0.1 * rng.standard_normal(n)) > 0
    order = rng.permutation(n)
    n_train, n_val = int(0.9 * n), int(0.05 * n)
    train, val = order[:n_train], order[n_train : n_train + n_val]
    return {"X_train": X[train], "y_train": y[train], "X_val": X[val], "y_val": y[val]}


# -- timing ------------------------------------------------------------------------------------
def _synchronize(options):
    if options.get("device", "cpu").startswith("cuda"):
        torch.cuda.synchronize()


def run_search(inner, outer, method, log_alpha0, n_outer, options):
    """One search; returns the wall time, the history and the result."""
    _synchronize(options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        result = solve_bilevel(inner, outer, log_alpha0, method=method, max_iter=n_outer)
        _synchronize(options)
        elapsed = time.perf_counter() - start
    return elapsed, result, [str(w.message) for w in caught]


def _loss_deviation(reference, result):
    """Largest relative difference of the outer losses of two searches, iteration by
    iteration."""
    return max(
        abs(a["outer_loss"] - b["outer_loss"]) / abs(a["outer_loss"])
        for a, b in zip(reference.history, result.history, strict=False)
    )


def time_evaluations(inner, log_alpha, n_calls):
    """Median time of one ``value_and_grad`` (the two sparse products and the loss)."""
    w = inner.init_coef() + 1e-3
    inner.value_and_grad(w, log_alpha)
    times = []
    for _ in range(n_calls):
        start = time.perf_counter()
        inner.value_and_grad(w, log_alpha)
        times.append(time.perf_counter() - start)
    return median(times)


def bench_dataset(name, data, configs, methods, log_alpha0, n_outer, repeats, n_calls):
    """All backends and methods on one dataset; backends interleaved within each repeat."""
    problems = {label: build(data, options) for label, options in configs}
    option_of = dict(configs)
    records = []
    for method in methods:
        runs = {label: [] for label, _ in configs}
        first = {}
        for _ in range(repeats):
            for label, _options in configs:
                inner, outer = problems[label]
                elapsed, result, caught = run_search(
                    inner, outer, method, log_alpha0, n_outer, option_of[label]
                )
                runs[label].append(elapsed)
                first.setdefault(label, (result, caught))
        reference = first["numpy"][0]
        # What round-off alone does to this search: numpy again, from log_alpha0 + 1e-15
        # (outside the timings). HOAG's inexact inner solves make the path sensitive (an inner
        # solve that stops one iteration earlier moves the outer loss by about its tolerance).
        inner, outer = problems["numpy"]
        perturbed = run_search(inner, outer, method, log_alpha0 + 1e-15, n_outer, {})[1]
        self_deviation = _loss_deviation(reference, perturbed)
        for label, _options in configs:
            result, caught = first[label]
            n_iter = result.n_iter + result.n_final_evaluations
            inner_iter = sum(r["inner_iter"] for r in result.history)
            t_search = median(runs[label])
            per_outer = t_search / n_iter
            ref_per_outer = median(runs["numpy"]) / (
                reference.n_iter + reference.n_final_evaluations
            )
            deviation = _loss_deviation(reference, result)
            work = sum(r["n_fun_evals"] + r["n_hvp"] for r in result.history)
            ref_work = sum(r["n_fun_evals"] + r["n_hvp"] for r in reference.history)
            per_work = t_search / work
            ref_per_work = median(runs["numpy"]) / ref_work
            records.append(
                {
                    "dataset": name,
                    "method": method,
                    "backend": label,
                    "options": {k: str(v) for k, v in option_of[label].items()},
                    "time_search_s": {
                        "median_s": t_search,
                        "min_s": min(runs[label]),
                        "times_s": runs[label],
                    },
                    "outer_evaluations": n_iter,
                    "time_per_outer_iter_s": per_outer,
                    "inner_iter_total": inner_iter,
                    "time_per_inner_iter_s": t_search / max(inner_iter, 1),
                    "ratio_to_numpy": per_outer / ref_per_outer,
                    "speedup_vs_numpy": ref_per_outer / per_outer,
                    "gradients_and_hvps": work,
                    "time_per_gradient_or_hvp_s": per_work,
                    "ratio_per_gradient_or_hvp_to_numpy": per_work / ref_per_work,
                    "final_log_alpha": float(result.log_alpha),
                    "final_outer_loss": float(result.value),
                    "max_rel_outer_loss_deviation_vs_numpy": deviation,
                    "numpy_vs_numpy_from_log_alpha0_plus_1e-15": self_deviation,
                    "same_inner_iterations_as_numpy": [r["inner_iter"] for r in result.history]
                    == [r["inner_iter"] for r in reference.history],
                    "backward": sorted({r["backward"] for r in result.history}),
                    "warnings": sorted(set(caught)),
                }
            )
            print(
                f"{name} {method:10s} {label:22s} {per_outer * 1e3:8.1f} ms/outer iter "
                f"(x{per_outer / ref_per_outer:.2f} numpy; per gradient or HVP "
                f"x{per_work / ref_per_work:.2f}), loss deviation {deviation:.1e} "
                f"(numpy perturbed: {self_deviation:.1e})",
                flush=True,
            )
    evaluations = {
        label: time_evaluations(problems[label][0], log_alpha0, n_calls) for label, _ in configs
    }
    return records, evaluations


# -- plot --------------------------------------------------------------------------------------
def plot(results, path):
    records = results["records"]
    datasets = sorted({r["dataset"] for r in records}, key=lambda d: d != "20news")
    methods = results["config"]["methods"]
    fig, axes = plt.subplots(1, 2 * len(datasets), figsize=(6 * len(datasets) * 2 / 1.4, 4))
    axes = np.atleast_1d(axes)
    for k, dataset in enumerate(datasets):
        recs = [r for r in records if r["dataset"] == dataset]
        labels = list(dict.fromkeys(r["backend"] for r in recs))
        others = [label for label in labels if label != "numpy"]
        colors = {label: f"C{j}" for j, label in enumerate(labels)}
        ax, ax_ratio = axes[2 * k], axes[2 * k + 1]
        for j, label in enumerate(labels):
            values = [
                next(r for r in recs if r["method"] == m and r["backend"] == label) for m in methods
            ]
            width = 0.8 / len(labels)
            x = np.arange(len(methods)) + (j - (len(labels) - 1) / 2) * width
            times = [1e3 * r["time_per_outer_iter_s"] for r in values]
            ax.bar(x, times, width, label=label, color=colors[label])
            if label != "numpy":
                i = others.index(label)
                width = 0.8 / len(others)
                x = np.arange(len(methods)) + (i - (len(others) - 1) / 2) * width
                ratios = [r["ratio_to_numpy"] for r in values]
                bars = ax_ratio.bar(x, ratios, width, label=label, color=colors[label])
                ax_ratio.bar_label(bars, fmt="%.2f", fontsize=8)
        for a in (ax, ax_ratio):
            a.set_xticks(np.arange(len(methods)), methods)
        ax.set_ylabel("ms per outer iteration (median)")
        ax.set_title(f"{dataset}: time per outer iteration")
        ax.legend(fontsize=8)
        ax_ratio.axhline(1.0, color="k", lw=0.8)
        ax_ratio.axhline(TARGET_CPU_RATIO, color="r", ls="--", lw=1, label="CPU target 1.5x")
        ax_ratio.set_ylabel("time / numpy's")
        ax_ratio.set_title(f"{dataset}: torch / numpy")
        ax_ratio.legend(fontsize=8)
    machine = results["machine"]
    gpu = f", GPU {machine['cuda_device']}" if machine.get("cuda_device") else ""
    fig.suptitle(
        f"{machine['cpu_model']} (1 thread){gpu}; load average at start "
        f"{machine['load_average'][0]:.1f}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-home",
        default=os.environ.get("SCIKIT_LEARN_DATA"),
        help="scikit-learn data folder, writable (default: $SCIKIT_LEARN_DATA or sklearn's)",
    )
    parser.add_argument("--offline", action="store_true", help="never download 20news")
    parser.add_argument("--seed", type=int, default=0, help="random_state of the split")
    parser.add_argument("--repeats", type=int, default=5, help="repetitions (medians quoted)")
    parser.add_argument("--outer-iter", type=int, default=5, help="outer iterations per search")
    parser.add_argument(
        "--methods", nargs="+", default=["shine-opa", "cg"], help="hypergradient methods"
    )
    parser.add_argument(
        "--C", type=float, default=1.0, help="starting point: log_alpha0 = log(1/C)"
    )
    parser.add_argument(
        "--devices",
        nargs="+",
        default=None,
        help="torch devices (default: cpu, and cuda when available)",
    )
    parser.add_argument(
        "--realsim",
        choices=("auto", "yes", "no"),
        default="auto",
        help="also a synthetic problem with real-sim's shape (auto: when CUDA is measured)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR / "torch_20news.json",
        help="JSON output; the plot is written beside it with the suffix .png",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.outer_iter < 1:
        parser.error("--repeats and --outer-iter must be at least 1")
    if args.devices is None:
        args.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    start_all = time.perf_counter()
    with threadpool_limits(1):
        machine = machine_info()
        machine.update(
            torch=torch.__version__,
            torch_num_threads=torch.get_num_threads(),
            cuda_available=torch.cuda.is_available(),
            cuda_device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            cuda_version=torch.version.cuda,
        )
        configs = backends(args.devices)
        log_alpha0 = float(np.log(1.0 / args.C))
        n_calls = 20
        t0 = time.perf_counter()
        data = load_20news_split(args.seed, args.data_home, download_if_missing=not args.offline)
        print(f"loaded 20news in {time.perf_counter() - t0:.1f} s", flush=True)
        datasets = [("20news", data)]
        use_cuda = any(d.startswith("cuda") for d in args.devices)
        if args.realsim == "yes" or (args.realsim == "auto" and use_cuda):
            datasets.append(("realsim-shaped synthetic", synthetic_realsim(args.seed)))
        results = {
            "benchmark": "torch_20news",
            "machine": machine,
            "config": {
                "seed": args.seed,
                "repeats": args.repeats,
                "outer_iter": args.outer_iter,
                "methods": args.methods,
                "C0": args.C,
                "log_alpha0": log_alpha0,
                "devices": args.devices,
                "backends": [label for label, _ in configs],
                "optimizer": "hoag (solve_bilevel defaults: tolerance schedule, warm starts)",
            },
            "data": {},
            "records": [],
            "value_and_grad_s": {},
        }
        for name, dataset in datasets:
            results["data"][name] = {
                "n_train": dataset["X_train"].shape[0],
                "n_val": dataset["X_val"].shape[0],
                "n_features": dataset["X_train"].shape[1],
                "nnz_train": int(dataset["X_train"].nnz),
            }
            records, evaluations = bench_dataset(
                name,
                dataset,
                configs,
                args.methods,
                log_alpha0,
                args.outer_iter,
                args.repeats,
                n_calls,
            )
            results["records"].extend(records)
            results["value_and_grad_s"][name] = evaluations
        machine["load_average_end"] = list(os.getloadavg())

    cpu = [r for r in results["records"] if r["backend"] == "torch-cpu"]
    gpu = [r for r in results["records"] if r["backend"].startswith("torch-cuda")]
    results["targets"] = {
        "torch_cpu_over_numpy": {
            "description": f"torch-CPU time per outer iteration <= {TARGET_CPU_RATIO}x numpy's",
            "values": {f"{r['dataset']}/{r['method']}": r["ratio_to_numpy"] for r in cpu},
            "met": all(r["ratio_to_numpy"] <= TARGET_CPU_RATIO for r in cpu),
            "per_gradient_or_hvp": {
                f"{r['dataset']}/{r['method']}": r["ratio_per_gradient_or_hvp_to_numpy"]
                for r in cpu
            },
        },
        "torch_cuda_speedup": {
            "description": f"torch-CUDA at least {TARGET_GPU_SPEEDUP}x faster than numpy",
            "values": {
                f"{r['dataset']}/{r['method']}/{r['backend']}": r["speedup_vs_numpy"] for r in gpu
            },
            "met": (all(r["speedup_vs_numpy"] >= TARGET_GPU_SPEEDUP for r in gpu) if gpu else None),
            "measured": bool(gpu),
        },
    }
    results["total_time_s"] = time.perf_counter() - start_all
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    plot(results, args.out.with_suffix(".png"))

    print()
    print(
        f"{'dataset':26s} {'method':10s} {'backend':22s} {'ms/outer':>9s} {'x numpy':>8s} "
        f"{'ms/grad|hvp':>12s} {'x numpy':>8s}"
    )
    for r in results["records"]:
        print(
            f"{r['dataset']:26s} {r['method']:10s} {r['backend']:22s} "
            f"{1e3 * r['time_per_outer_iter_s']:9.1f} {r['ratio_to_numpy']:8.2f} "
            f"{1e3 * r['time_per_gradient_or_hvp_s']:12.2f} "
            f"{r['ratio_per_gradient_or_hvp_to_numpy']:8.2f}"
        )
    for name, target in results["targets"].items():
        print(f"{name}: {target['description']}: met={target['met']}")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} ({results['total_time_s']:.0f} s)")


if __name__ == "__main__":
    main()
