"""The ``hoag-shine`` command line and the comparison it runs, on small problems."""

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from hoag_shine.cli import main
from hoag_shine.comparison import format_summary, summarize


def _rows(output: str) -> dict[str, list[str]]:
    """Table rows of ``tune``: method name -> its columns."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("---")) + 1
    rows = {}
    for line in lines[start:]:
        if line.startswith("("):
            break
        fields = line.split()
        rows[fields[0]] = fields[1:]
    return rows


def test_tune_on_the_embedded_default(capsys):
    assert main(["tune", "--max-iter", "8"]) == 0
    output = capsys.readouterr().out
    assert "breast_cancer: 341 train / 114 validation / 114 test samples, 30 features" in output
    rows = _rows(output)
    assert set(rows) == {"cg", "shine", "shine-opa", "shine-refine", "jacobian-free"}
    for columns in rows.values():
        C, val_loss, test_loss, accuracy, iterations = (float(v) for v in columns[:5])
        assert 1e-3 < C < 1e3
        assert 0 < val_loss < np.log(2) and 0 < test_loss < np.log(2)  # better than chance
        assert 0.9 < accuracy <= 1.0
        assert 1 <= iterations <= 8


def test_tune_matches_the_functional_api(capsys):
    from hoag_shine import solve_bilevel
    from hoag_shine.cli import _split
    from hoag_shine.criteria import HeldOutLogLoss
    from hoag_shine.problems import LogisticRegressionProblem

    assert main(["tune", "--method", "cg", "--max-iter", "5", "--seed", "3"]) == 0
    printed_C = float(_rows(capsys.readouterr().out)["cg"][0])

    class Args:
        data, data_home, offline, held_out, seed = "breast_cancer", None, True, None, 3

    X_train, y_train, X_val, y_val, *_ = _split(Args)
    inner = LogisticRegressionProblem(X_train, y_train, fit_intercept=True)
    outer = HeldOutLogLoss(X_val, y_val, classes=inner.classes_)
    result = solve_bilevel(inner, outer, 0.0, method="cg", max_iter=5)
    assert printed_C == pytest.approx(np.exp(-float(result.log_alpha)), rel=1e-3)


def test_tune_on_a_csv_file(tmp_path, capsys):
    X, y = load_breast_cancer(return_X_y=True)
    path = tmp_path / "cancer.csv"
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", header="features...,label")
    assert main(["tune", "--data", str(path), "--method", "shine-opa", "--max-iter", "5"]) == 0
    output = capsys.readouterr().out
    assert "cancer.csv: 341 train" in output
    assert float(_rows(output)["shine-opa"][2]) < np.log(2)


def test_unknown_data_is_a_clear_error(capsys):
    assert main(["tune", "--data", "no-such-set", "--offline"]) == 2
    assert "Unknown dataset 'no-such-set'" in capsys.readouterr().err


def test_help_and_module_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "hoag_shine", "bench", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--competitors" in out and "--window" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--help"])
    assert exit_info.value.code == 0


def test_bench_writes_json_and_plot(tmp_path, capsys):
    argv = ["bench", "--competitors", "estimator", "cg", "lrcv", "grid", "--seeds", "0"]
    argv += ["--window", "5", "--max-iter", "5", "--out", str(tmp_path), "--name", "small"]
    assert main(argv) == 0
    output = capsys.readouterr().out
    assert "estimator_time_over_lrcv" in output
    result = json.loads((tmp_path / "small.json").read_text())
    assert (tmp_path / "small.png").stat().st_size > 1000
    assert {run["competitor"] for run in result["runs"]} == {"estimator", "cg", "lrcv", "grid"}
    by_name = {run["competitor"]: run for run in result["runs"]}
    # one point per outer iteration (at most 5; the secant search may stop earlier), then the
    # search's result after its final choice, each credited with the best point on validation
    cg_curve = by_name["cg"]["curve"]
    assert 2 <= len(cg_curve) <= 6
    assert all(p["val_loss"] >= q["val_loss"] for p, q in itertools.pairwise(cg_curve[:-1]))
    assert {"inner_iter", "n_fun_evals", "n_hvp", "cg_iter"} <= set(cg_curve[0])
    assert len(by_name["grid"]["curve"]) == 5  # one point per candidate C
    times = [point["time"] for point in by_name["cg"]["curve"]]
    assert times == sorted(times)
    for run in result["runs"]:
        assert 0 < run["final"]["test_loss"] < np.log(2)
    summary = result["summary"]
    assert summary["ratios"]["estimator_time_over_lrcv"] > 0
    assert result["machine"]["threads"] == 1


def _run(name, seed, points):
    curve = [{"time": t, "C": 1.0, "val_loss": 0.0, "test_loss": loss} for t, loss in points]
    final = {"C": 1.0, "test_loss": points[-1][1], "time": points[-1][0], "n_iter": len(points)}
    return {"competitor": name, "seed": seed, "curve": curve, "final": final, "skipped": None}


def test_summary_times_to_reach_and_ratios():
    runs = [
        _run("cg", 0, [(1.0, 0.5), (2.0, 0.2005), (4.0, 0.2)]),
        _run("shine-opa", 0, [(0.5, 0.4), (1.0, 0.2009), (3.0, 0.2001)]),
        _run("estimator", 0, [(2.0, 0.202)]),
        _run("lrcv", 0, [(10.0, 0.19)]),  # refit on more data: below, but not the reference
        {"competitor": "optuna", "seed": 0, "curve": [], "final": None, "skipped": "absent"},
        # seed 1: only the grid gets near its best; the seed says nothing about opa / cg
        _run("grid", 1, [(5.0, 0.1)]),
        _run("cg", 1, [(1.0, 0.3)]),
        _run("shine-opa", 1, [(1.0, 0.3)]),
    ]
    summary = summarize(runs, suboptimality=0.005)  # relative: 0.201 on seed 0
    per = summary["per_competitor"]
    assert per["cg"]["n_reached"] == 1  # seed 0 only
    assert per["cg"]["median_time_to_reach"] == np.inf  # median of 2.0 and inf
    assert per["estimator"]["median_time_to_reach"] == np.inf  # 0.202 is 2e-3 away
    assert per["estimator"]["n_reached"] == 0
    assert summary["ratios"]["shine_opa_over_cg_time_to_reach"] == 0.5
    assert summary["ratios"]["estimator_time_over_lrcv"] == 0.2  # seed 0 only
    assert summary["ratios"]["estimator_loss_over_lrcv"] == pytest.approx(0.202 / 0.19)
    assert per["lrcv"]["median_time_to_reach"] == 10.0
    assert "optuna" not in per
    text = format_summary({"summary": summary, "runs": runs})
    assert "optuna: skipped (absent)" in text


def test_summary_reports_the_backward_share_and_inner_iterations_to_reach():
    """A gradient method's share of time in backward passes (what a free backward could save)
    and the inner iterations it spent until it reached the suboptimality, per seed."""

    def gradient_run(seed, points, time_backward):
        run = _run("cg", seed, [(t, loss) for t, loss, _ in points])
        for point, (_, _, inner) in zip(run["curve"], points, strict=True):
            point["inner_iter"] = inner
        run["final"].update(median_inner_iter=10.0, time_backward=time_backward)
        return run

    runs = [
        gradient_run(0, [(1.0, 0.5, 30), (2.0, 0.2005, 50), (4.0, 0.2, 40)], time_backward=1.0),
        gradient_run(1, [(1.0, 0.3, 30), (3.0, 0.3, 20)], time_backward=0.6),
        _run("grid", 1, [(5.0, 0.1)]),
    ]
    per = summarize(runs, suboptimality=0.005)["per_competitor"]
    assert per["cg"]["inner_iter_to_reach"] == [80.0, np.inf]  # 30 + 50; never on seed 1
    assert per["cg"]["median_backward_share"] == pytest.approx(np.median([1.0 / 4.0, 0.6 / 3.0]))
    text = format_summary({"summary": summarize(runs, 0.005), "runs": runs})
    assert "22%" in text  # the median of 25% and 20%
