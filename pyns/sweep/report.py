"""A sweep's Table 1 and Figures 4/5: cell records aggregated over seeds, written as a table and plots.

`aggregate` turns the result records of the cells into one row per (ratio, method) with costs, latency
and accuracies as mean and sample standard deviation over seeds; `write_table` writes table.md (readable)
and table.csv (every number), `read_table_csv` reads the latter back, and `write_figures` draws accuracy
against parameters (Figure 4) and against latency (Figure 5).
"""
from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyns.figures import legend_outside, new_figure, plain_log_axis, save_png
from pyns.runfiles import atomic_write_text
from pyns.scaling.budget import human
from pyns.sweep.plan import FULL, METHODS
from pyns.train.run import LATENCY_METHOD

__all__ = ["aggregate", "write_table", "read_table_csv", "write_figures", "sweep_figures", "TABLE_MD", "TABLE_CSV", "FIGURE_PARAMS",
           "FIGURE_LATENCY", "CSV_COLUMNS"]

TABLE_MD = "table.md"
TABLE_CSV = "table.csv"
FIGURE_PARAMS = "fig4_accuracy_vs_params.png"
FIGURE_LATENCY = "fig5_accuracy_vs_latency.png"
BEST_NOTE = "maximum test accuracy over epochs, as the paper reports"


# ----------------------------------------------------------------------------------------------------
# Table 1 and Figures 4/5
# ----------------------------------------------------------------------------------------------------


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); no std from a single seed."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(records: Sequence[Mapping[str, Any]], methods: Sequence[str] | None = None,
              ratios: Sequence[float] | None = None,
              warnings: Mapping[tuple[str, float], Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """One row per (ratio, method) over seeds: costs, latency and accuracies as mean and sample std.

    Rows are ordered by ratio, then by `methods` (the full network of li, if any, first at its ratio).
    `warnings` ({(method, ratio): texts}, from pyns.sweep.plan.sweep_warnings) become each row's
    "warnings", the table's footnotes.
    """
    groups: dict[tuple[float, str], list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault((float(record["ratio"]), record["method"]), []).append(record)
    order = [FULL, *(methods or METHODS)]
    rows = []
    for (ratio, method), group in sorted(groups.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1])
                                                                          if kv[0][1] in order else len(order))):
        params = sorted({int(r["params"]) for r in group})
        macs = sorted({int(r["macs"]) for r in group})
        row: dict[str, Any] = {
            "ratio": ratio, "method": method, "budget_metric": group[0]["budget"]["metric"],
            "budget": int(group[0]["budget"]["value"]), "params": params[0] if len(params) == 1 else None,
            "macs": macs[0] if len(macs) == 1 else None, "seeds": len(group),
            "warnings": list((warnings or {}).get((method, ratio), [])),
        }
        for key, values in (("best_acc", [r["best_test_acc"] for r in group]),
                            ("final_acc", [r["final_test_acc"] for r in group]),
                            ("latency_ms", [r["latency_ms"] for r in group if r.get("latency_ms") is not None])):
            mean, std = _mean_std(values) if values else (None, None)
            row[f"{key}_mean"], row[f"{key}_std"] = mean, std
        rows.append(row)
    return rows


CSV_COLUMNS = ("ratio", "method", "budget_metric", "budget", "params", "macs", "latency_ms_mean", "latency_ms_std",
               "best_acc_mean", "best_acc_std", "final_acc_mean", "final_acc_std", "seeds", "warnings")
WARNING_SEPARATOR = " | "  # joins a row's warnings in table.csv's one cell


def _pm(mean: float | None, std: float | None, scale: float = 1.0, digits: int = 2) -> str:
    if mean is None:
        return "n/a"
    text = f"{scale * mean:.{digits}f}"
    return text + (f" ± {scale * std:.{digits}f}" if std is not None else "")


def write_table(rows: Sequence[Mapping[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    """table.md (readable, the paper's Table 1 quantities) and table.csv (every number, for tools)."""
    out = Path(out_dir)
    lines = [
        "| ratio | method | params | MACs | latency (ms / batch of 100) | best acc. (%) | final acc. (%) | seeds "
        "| notes |",
        "|---:|:---|---:|---:|---:|---:|---:|---:|:---|",
    ]
    footnotes: list[str] = []  # each distinct warning once, numbered in order of appearance
    for r in rows:
        marks = []
        for text in r.get("warnings") or []:
            if text not in footnotes:
                footnotes.append(text)
            marks.append(f"[{footnotes.index(text) + 1}]")
        params = f"{r['params']:,} ({human(r['params'])})" if r["params"] is not None else "varies"
        macs = f"{r['macs']:,} ({human(r['macs'])})" if r["macs"] is not None else "varies"
        latency = _pm(r["latency_ms_mean"], r["latency_ms_std"])
        best = _pm(r["best_acc_mean"], r["best_acc_std"], 100)
        final = _pm(r["final_acc_mean"], r["final_acc_std"], 100)
        lines.append(f"| {r['ratio']:g} | {r['method']} | {params} | {macs} | {latency} | {best} | {final} "
                     f"| {r['seeds']} | {' '.join(marks)} |")
    metric = rows[0]["budget_metric"] if rows else "params"
    notes = [
        "",
        f"Budgets: the {metric} of the default network scaled uniformly by each ratio; every network meets its budget.",
        f"best acc.: {BEST_NOTE}; final acc.: after the last epoch. Both as mean ± sample standard deviation "
        "(n - 1) over seeds.",
        f"latency: {LATENCY_METHOD}, mean ± std over seeds. params: trainable parameters of the built module; "
        "MACs: conv and linear multiply-accumulates per image.",
        "full: the trained default network that the li (L1-norm pruning) cells start from.",
    ]
    if footnotes:
        notes += ["", "Warnings (the notes column):"] + [f"[{i}] {text}" for i, text in enumerate(footnotes, 1)]
    md = out / TABLE_MD
    atomic_write_text(md, "\n".join(lines + notes) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        values = {k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS}
        values["warnings"] = WARNING_SEPARATOR.join(r.get("warnings") or [])
        writer.writerow(values)
    path = out / TABLE_CSV
    atomic_write_text(path, buffer.getvalue())
    return md, path


def read_table_csv(path: str | Path) -> list[dict[str, Any]]:
    """table.csv back as rows with numbers (empty cells become None)."""
    ints, texts = {"budget", "params", "macs", "seeds"}, {"method", "budget_metric"}
    rows = []
    with open(path, newline="") as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                if key == "warnings":
                    row[key] = value.split(WARNING_SEPARATOR) if value else []
                elif key in texts:
                    row[key] = value
                elif value == "":
                    row[key] = None
                else:
                    row[key] = int(value) if key in ints else float(value)
            rows.append(row)
    return rows


def sweep_figures(rows: Sequence[Mapping[str, Any]]):
    """(Figure 4, Figure 5) as matplotlib Figures: best accuracy (mean ± std over seeds) against params and
    against latency, one line per method."""
    figures = []
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for x_key, x_label, title in (
        ("params", "parameters", "Figure 4: accuracy vs parameters"),
        ("latency_ms_mean", "latency (ms per batch of 100)", "Figure 5: accuracy vs latency"),
    ):
        figure = new_figure((7.6, 4.8))
        axes = figure.add_subplot(1, 1, 1)
        drawn = 0
        for method in methods:
            points = sorted(((r[x_key], r) for r in rows if r["method"] == method and r[x_key] is not None
                             and r["best_acc_mean"] is not None), key=lambda p: p[0])
            if not points:
                continue
            xs = [x for x, _ in points]
            ys = [100 * r["best_acc_mean"] for _, r in points]
            errors = [100 * (r["best_acc_std"] or 0.0) for _, r in points]
            if method == FULL:
                # The full network is the uniform network at ratio 1: a hollow, larger marker drawn below
                # the others rings uniform's point instead of hiding it.
                axes.errorbar(xs, ys, yerr=errors, marker="s", markersize=11, markerfacecolor="none",
                              linestyle="none", capsize=3, zorder=1, label="full (pruned by li)")
            else:
                axes.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=method, zorder=2)
            drawn += 1
        if x_key == "params":
            axes.set_xscale("log")
            plain_log_axis(axes.xaxis)
        axes.set_xlabel(x_label)
        axes.set_ylabel("test accuracy (%), best over epochs")
        figure.suptitle(title)  # over the axes and the legend column: neither can overlap it
        axes.grid(True, which="both", alpha=0.3)
        if drawn:
            legend_outside(figure, axes, fontsize="small")
        else:
            axes.text(0.5, 0.5, "no latency measured (--no-latency)" if x_key != "params" else "no finished cells",
                      ha="center", va="center", transform=axes.transAxes)
        figures.append(figure)
    return figures[0], figures[1]


def write_figures(rows: Sequence[Mapping[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    """Figure 4 (accuracy vs params) and Figure 5 (accuracy vs latency) as PNG files in `out_dir`."""
    fig4, fig5 = sweep_figures(rows)
    out = Path(out_dir)
    return save_png(fig4, out / FIGURE_PARAMS), save_png(fig5, out / FIGURE_LATENCY)
