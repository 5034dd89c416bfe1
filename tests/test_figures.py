"""Every figure the CLI writes is laid out cleanly: constrained layout, no two pieces of text overlapping,
nothing cut off at the figure's edge, no legend over a data point, log axes labelled in plain numbers.

The run folders come from tests/figure_runs.py (real prune and descent runs on digits; a TinyNet sampling
run with synthetic accuracies; hand-made sweep rows), so the checks see what a user's run would draw.
"""
from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from figure_runs import make_runs, sweep_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("figures")
    try:
        yield folder, make_runs(folder)
    finally:
        torch.set_num_threads(before)


def _figures(kind: str, folder):
    from pyns.neuralscale.plots import descent_figure, figure2
    from pyns.sweep.report import sweep_figures
    from pyns.tinynet.plots import tiny_figures

    if kind == "prune":
        return [figure2(folder / "prune")]
    if kind == "descent":
        return [descent_figure(folder / "descent")]
    if kind == "tiny":
        return list(tiny_figures(folder / "tiny", fraction=0.6))
    return list(sweep_figures(sweep_rows()))


def _drawn_texts(fig):
    """(text, window extent) of every non-empty text matplotlib actually draws (tick labels outside the
    view are never drawn, so they are not reported): Text.draw is wrapped for one draw of the figure."""
    from matplotlib.text import Text

    drawn = []
    original = Text.draw

    def recording(self, renderer):
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append((self.get_text(), self.get_window_extent(renderer)))

    Text.draw = recording
    try:
        fig.canvas.draw()
    finally:
        Text.draw = original
    return drawn


def _layout_problems(fig) -> list[str]:
    problems = []
    if fig.get_layout_engine() is None or type(fig.get_layout_engine()).__name__ != "ConstrainedLayoutEngine":
        problems.append("not drawn with constrained layout")
    texts = _drawn_texts(fig)
    width, height = fig.bbox.width, fig.bbox.height
    for text, box in texts:
        if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > width + 0.5 or box.y1 > height + 0.5:
            problems.append(f"text {text!r} is cut off at the figure's edge ({box.bounds})")
        if re.search(r"\\times|×10|\$\\mathdefault", text):
            problems.append(f"tick label {text!r} in scientific notation")
    for (a, box_a), (b, box_b) in itertools.combinations(texts, 2):
        inter_w = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
        inter_h = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
        if inter_w > 1 and inter_h > 1:  # more than a pixel of shared area
            problems.append(f"{a!r} overlaps {b!r}")
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend()
        legends = [legend] if legend is not None else []
        legends += [leg for leg in fig.legends]
        points = []
        for line in ax.get_lines():
            xy = np.column_stack(line.get_data())
            if len(xy) and line.get_marker() not in (None, "None", "", " "):
                points.append(ax.transData.transform(xy.astype(float)))
        for collection in ax.collections:
            offsets = collection.get_offsets()
            if len(offsets):
                points.append(ax.transData.transform(np.asarray(offsets, dtype=float)))
        for leg in legends:
            box = leg.get_window_extent(renderer)
            for xy in points:
                inside = (xy[:, 0] > box.x0) & (xy[:, 0] < box.x1) & (xy[:, 1] > box.y0) & (xy[:, 1] < box.y1)
                if inside.any():
                    problems.append(f"a legend covers {int(inside.sum())} data point(s)")
    return problems


@pytest.mark.parametrize("kind", ["prune", "descent", "tiny", "sweep"])
def test_figures_are_laid_out_cleanly(runs, kind):
    folder, written = runs
    assert written[kind] and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written[kind])
    for fig in _figures(kind, folder):
        assert _layout_problems(fig) == []


def test_descent_figure_names_every_iteration_and_its_axes(runs):
    folder, _ = runs
    fig = _figures("descent", folder)[0]
    labels = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert labels == ["iteration 0", "iteration 1", "iteration 2"]
    assert fig.axes[0].get_xlabel() and fig.axes[0].get_ylabel()


def test_sweep_full_marker_does_not_hide_uniform(runs):
    fig = _figures("sweep", None)[0]
    ax = fig.axes[0]
    full = [line for line in ax.get_lines() if line.get_marker() == "s"]
    assert full and all(line.get_markerfacecolor() == "none" for line in full)  # hollow: uniform shows through
    uniform = next(line for line in ax.get_lines() if line.get_label() == "uniform" or line.get_marker() == "o")
    assert full[0].get_zorder() < uniform.get_zorder()


def test_checker_catches_what_it_is_for():
    """The checks are not vacuous: the figures this change fixed are flagged."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    old = Figure(figsize=(12.0, 3.8))  # TinyNet Figure 3 as it was: long titles, tight_layout, no engine
    FigureCanvasAgg(old)
    for k, name in enumerate("rdw"):
        ax = old.add_subplot(1, 3, k + 1)
        ax.scatter([1, 2], [1, 2])
        ax.set_title(f"{name} of the selected models (Spearman ρ = 0.81)")
    old.tight_layout()
    problems = _layout_problems(old)
    assert any("constrained" in p for p in problems) and any("overlaps" in p or "cut off" in p for p in problems)

    ticks = Figure(figsize=(6.4, 4.8), layout="constrained")  # Figure 2 as it was: 4×10^1 tick labels
    FigureCanvasAgg(ticks)
    ax = ticks.add_subplot(1, 1, 1)
    ax.plot([25, 60], [25, 60], marker="o")
    ax.set_xscale("log")
    ax.set_yscale("log")
    assert any("scientific notation" in p for p in _layout_problems(ticks))
