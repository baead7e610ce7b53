"""Sphinx extension: one page per committed benchmark result, rendered from its JSON.

At ``builder-inited`` every ``benchmarks/results/*.json`` becomes
``docs/benchmarks/<stem>.rst`` (tables of the measurements, the machine, the targets and the
figures ``<stem>.png`` and ``<stem>_*.png`` beside the JSON, with the command that reproduces
them); ``benchmarks.rst``
lists them with a glob toctree. Results of the core benchmark (``"benchmark": "core_20news"``)
get dedicated tables; any other result gets the generic page (machine, command, figure, targets,
top-level summary). Nothing here runs a benchmark: the pages show what was committed.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

GENERATED_DIR = "benchmarks"


def _fmt(value, digits=3) -> str:
    """Numbers for tables: ``3.14``, ``1.2e-05``; strings and booleans as they are."""
    if value is None:
        return "--"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v, digits) for v in value)
    return str(value)


_RST_SPECIAL = str.maketrans({c: "\\" + c for c in "\\*`|_"})


def _text(value) -> str:
    """Free text from the JSON, with the characters reST would interpret escaped."""
    return str(value).translate(_RST_SPECIAL)


def _literal(text) -> str:
    return f"``{text}``" if text not in (None, "") else "--"


def _table(title, header, rows, widths=None) -> list[str]:
    lines = [f".. list-table:: {title}", "   :header-rows: 1", ""]
    if widths:
        lines.insert(1, f"   :widths: {' '.join(str(w) for w in widths)}")
    for row in [header, *rows]:
        first, *rest = (str(cell).replace("\n", " ") or "--" for cell in row)
        lines.append(f"   * - {first}")
        lines.extend(f"     - {cell}" for cell in rest)
    lines.append("")
    return lines


def _title(text, char) -> list[str]:
    return [text, char * len(text), ""]


def _median(entry):
    return entry.get("median_s") if isinstance(entry, dict) else entry


def _machine(result) -> list[str]:
    machine = result.get("machine", {})
    versions = ", ".join(
        f"{name} {machine[name]}"
        for name in ("python", "numpy", "scipy", "sklearn", "torch", "hoag_shine")
        if machine.get(name)
    )
    commit = machine.get("git_commit")
    if commit and machine.get("hoag_shine_modified"):
        commit = f"{commit} (with local changes to hoag_shine/)"
    env = machine.get("env") or {}
    threads = ", ".join(f"{k}={v}" for k, v in env.items() if v is not None)
    cpu = machine.get("cpu_model")
    if cpu and machine.get("cpu_count"):
        cpu = f"{cpu} ({machine['cpu_count']} cores)"
    rows = [
        ("Date", machine.get("date")),
        ("CPU", cpu),
        ("GPU", machine.get("gpu") or machine.get("device")),
        ("Load average at start", machine.get("load_average")),
        ("Versions", versions),
        ("Git commit", commit),
        ("Thread settings", threads),
        ("Total run time (s)", result.get("total_time_s")),
    ]
    rows = [(label, _text(_fmt(value))) for label, value in rows if value not in (None, "", [])]
    return _table("Machine and run", ("Item", "Value"), rows, widths=(25, 75)) if rows else []


def _targets(result) -> list[str]:
    targets = result.get("targets")
    if not isinstance(targets, dict) or not targets:
        return []
    rows = []
    for name, target in targets.items():
        if not isinstance(target, dict):
            rows.append((_literal(name), "", _fmt(target), ""))
            continue
        met = _fmt(target.get("met"))
        if "met_without_fallback" in target:
            met += f" (without fallbacks: {_fmt(target['met_without_fallback'])})"
        rows.append(
            (
                _literal(name),
                _text(target.get("description", "")),
                _fmt(target.get("values", target.get("value")), 4),
                met,
            )
        )
    return _table("Targets", ("Target", "Description", "Measured", "Met"), rows)


def _figure(pngs: list[Path], command: str | None) -> list[str]:
    lines = []
    for png in pngs:
        lines += [f".. figure:: {png.name}", "   :width: 100%", ""]
        lines += [f"   ``benchmarks/results/{png.name}``, written by the command below.", ""]
    if command:
        lines += ["The command that produced these results (run from the repository root):", ""]
        lines += [".. code-block:: bash", "", f"   {command}", ""]
        lines += [
            "``benchmarks/README.md`` gives the data it needs (and the environment variables "
            "that point to an offline copy), its options, how long it takes and what each field "
            "of the JSON means.",
            "",
        ]
    return lines


def _core_tables(result) -> list[str]:
    """Tables of ``bench_core.py``: L-BFGS iteration cost, backward cost, accuracy."""
    lines = []
    data = result.get("data", {})
    if data:
        lines += [
            f"Training split: {_fmt(data.get('n_train'))} samples x "
            f"{_fmt(data.get('n_features'))} features ({_fmt(data.get('nnz_train'))} nonzeros); "
            f"validation {_fmt(data.get('n_val'))}, test {_fmt(data.get('n_test'))}.",
            "",
        ]
    rows = []
    for rec in result.get("lbfgs", []):
        parts = rec.get("breakdown_per_iter_s", {})
        rows.append(
            (
                _fmt(rec.get("C")),
                _fmt(rec.get("tol")),
                _fmt(rec.get("n_iter")),
                _fmt(rec.get("evals_per_iter")),
                _fmt(1e3 * rec["time_per_iter_s"]) if "time_per_iter_s" in rec else "--",
                _fmt(1e3 * rec["floor_s"]) if "floor_s" in rec else "--",
                _fmt(rec.get("ratio_to_products")),
                " / ".join(
                    _fmt(1e3 * parts[k]) if k in parts else "--"
                    for k in ("evaluations", "two_loop", "other_vector_ops")
                ),
            )
        )
    if rows:
        lines += _title("L-BFGS iteration cost", "-")
        lines += [
            "Time per iteration against the two sparse products a gradient needs "
            "(``X @ w`` + ``X.T @ r``, the floor); target at most 1.5x.",
            "",
        ]
        lines += _table(
            "L-BFGS iterations (memory 10, cold start)",
            (
                "C",
                "tol",
                "iterations",
                "evaluations / iteration",
                "ms / iteration",
                "floor (ms)",
                "ratio to floor",
                "evaluations / two-loop / other (ms)",
            ),
            rows,
        )
    rows = []
    for rec in result.get("hypergradients", []):
        info = rec.get("info", {})
        returned = rec.get("accuracy", {}).get("returned", {})
        raw = rec.get("accuracy", {}).get("raw_estimate", {})
        rows.append(
            (
                _fmt(rec.get("C")),
                _fmt(rec.get("tol")),
                _literal(rec.get("method")),
                _literal(info.get("backward")),
                _fmt(_median(rec.get("time_inner_s"))),
                _fmt(_median(rec.get("time_backward_s"))),
                _fmt(rec.get("backward_over_inner")),
                _fmt(returned.get("grad_rel_error")),
                _fmt(returned.get("q_cosine_vs_ref"), 4),
                _fmt(returned.get("q_norm_ratio_vs_ref")),
                _fmt(raw.get("q_cosine_vs_ref"), 4) if raw else "--",
            )
        )
    if rows:
        lines += _title("Hypergradients: cost and accuracy", "-")
        lines += [
            "Backward time relative to the inner solve (target for SHINE: under 5%), and the "
            "accuracy against a tight ``cg`` reference: relative error of the hypergradient, "
            "cosine and norm ratio of the adjoint ``q``; for SHINE methods also the cosine of "
            "the raw quasi-Newton estimate before the safeguard. At ``C = 300`` the true "
            "hypergradient is tiny and its relative error is dominated by the inner "
            "tolerance: read the cosine there.",
            "",
        ]
        lines += _table(
            "Hypergradients (medians over repeats)",
            (
                "C",
                "tol",
                "method",
                "backward",
                "inner (s)",
                "backward (s)",
                "backward / inner",
                "grad rel. error",
                "cos(q, q_ref)",
                "norm ratio (q / q_ref)",
                "raw cos",
            ),
            rows,
        )
    rows = [
        (
            _fmt(rec.get("C")),
            _fmt(rec.get("tol")),
            _fmt(rec.get("grad"), 4),
            _fmt(rec.get("value"), 5),
            _fmt(rec.get("time_s")),
        )
        for rec in result.get("reference", [])
    ]
    if rows:
        lines += _table(
            "Reference (tight cg)",
            ("C", "tol", "hypergradient", "validation loss", "time (s)"),
            rows,
        )
    return lines


def _generic_summary(result) -> list[str]:
    skip = {"benchmark", "machine", "targets", "total_time_s"}
    rows = []
    for key, value in result.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            summary = f"{len(value)} entries: " + ", ".join(_literal(k) for k in list(value)[:8])
        elif isinstance(value, list):
            summary = f"{len(value)} records"
        else:
            summary = _fmt(value)
        rows.append((_literal(key), summary))
    return _table("Content of the JSON file", ("Key", "Summary"), rows) if rows else []


def _hpo_tables(result) -> list[str]:
    """Results of ``benchmarks/bench_hpo.py``: one row per competitor, medians over seeds."""
    summary = result.get("summary") or {}
    settings = result.get("settings") or {}
    rows = []
    for name, entry in (summary.get("per_competitor") or {}).items():
        rows.append(
            (
                _literal(name),
                _fmt(entry.get("n_seeds")),
                _fmt(entry.get("median_test_loss"), 5),
                _fmt(entry.get("median_time")),
                _fmt(entry.get("median_C")),
                _fmt(entry.get("median_time_to_reach")),
                _fmt(entry.get("n_reached")),
            )
        )
    header = ("Competitor", "Seeds", "Test loss", "Time (s)", "C", "Time to reach (s)", "Reached")
    lines = [
        f"Dataset ``{settings.get('dataset')}``, seeds {settings.get('seeds')}, window "
        f"{settings.get('window')} s, at most {settings.get('max_iter')} outer iterations or "
        "candidates. Medians over seeds; *time to reach*: first time the test loss credited to "
        f"the competitor is within {summary.get('suboptimality', 0.01):.0%} of the lowest test "
        "loss credited to a train-only competitor on that seed (*Reached*: on how many seeds).",
        "",
    ]
    lines += _table("Per competitor", header, rows)
    skipped = sorted({run["competitor"] for run in result.get("runs", []) if run.get("skipped")})
    if skipped:
        lines += [f"Skipped: {', '.join(skipped)} (not installed).", ""]
    return lines


RENDERERS = {"core_20news": _core_tables}


def _renderer(name: str):
    if name.startswith("hpo_"):
        return _hpo_tables
    return RENDERERS.get(name, _generic_summary)


def render(json_path: Path, out_dir: Path) -> str:
    """The reST page of one result file (copies its figure into ``out_dir``)."""
    result = json.loads(json_path.read_text())
    if not isinstance(result, dict):
        result = {"records": result}
    name = result.get("benchmark", json_path.stem)
    # The figure ``<stem>.png`` and any ``<stem>_<part>.png`` beside the JSON.
    pngs = sorted(
        p
        for p in json_path.parent.glob(f"{json_path.stem}*.png")
        if p.stem == json_path.stem or p.stem.startswith(f"{json_path.stem}_")
    )
    for png in pngs:
        target = out_dir / png.name
        if not target.exists() or target.read_bytes() != png.read_bytes():
            shutil.copyfile(png, target)
    command = (result.get("machine") or {}).get("command") or result.get("command")
    rel = json_path.relative_to(json_path.parents[2]).as_posix()
    lines = [".. This page is generated from the JSON file by docs/_ext/benchmark_pages.py.", ""]
    lines += _title(f"Benchmark: {name}", "=")
    lines += [f"Rendered from ``{rel}``, committed with the figure.", ""]
    lines += _figure(pngs, command)
    lines += _targets(result)
    lines += _renderer(name)(result)
    lines += _machine(result)
    return "\n".join(lines) + "\n"


def generate(app) -> None:
    docs = Path(app.srcdir)
    results = docs.parent / "benchmarks" / "results"
    out_dir = docs / GENERATED_DIR
    out_dir.mkdir(exist_ok=True)
    expected = set()
    for json_path in sorted(results.glob("*.json")):
        page = out_dir / f"{json_path.stem}.rst"
        expected.add(page.name)
        text = render(json_path, out_dir)
        if not page.exists() or page.read_text() != text:
            page.write_text(text)
    for stale in out_dir.glob("*.rst"):
        if stale.name not in expected:
            stale.unlink()


def setup(app):
    app.connect("builder-inited", generate)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
