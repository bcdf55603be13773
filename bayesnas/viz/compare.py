"""The figure of a comparison: test accuracy with its CI per architecture, and validation curves.

Plain data in (the JSON form of a comparison, ``CompareResult.to_dict()``: rows with ``label``,
``arch``, ``accuracy``, ``ci95``, ``val_curves``), a ``matplotlib.figure.Figure`` out;
``path=`` also saves it atomically.

Usage::

    fig = plot_comparison(json.load(open("runs/compare/compare.json")), path="compare.png")
"""
import os
from typing import Any

import numpy as np

from .posterior import save_figure

#: colour of each kind of row: the searched cells, the named baselines, the random cells
KIND_COLOURS = {"searched": "C0", "baseline": "C1", "random": "0.55"}


def row_kind(row):
    """"random" (a cell drawn from the search space), "baseline" (a named architecture) or "searched".

    The row's ``kind`` when it has one; a comparison written before rows had it is read by
    its labels (``random-<n>`` for the random cells).
    """
    if "kind" in row:
        return row["kind"]
    if str(row["label"]).startswith("random-"):
        return "random"
    return "baseline" if isinstance(row["arch"], str) else "searched"


def random_median(rows):
    """The median test accuracy (in [0, 1]) of a comparison's random cells; None without any."""
    random = [r["accuracy"] for r in rows if row_kind(r) == "random"]
    return float(np.median(random)) if random else None


def mean_curve(curves):
    """The seeds' validation curves ``{seed: [[iteration, acc], ...]}`` averaged at the iterations all share."""
    curves = [dict((int(it), acc) for it, acc in c) for c in curves.values() if c]
    if not curves:
        return np.zeros(0), np.zeros(0)
    shared = sorted(set.intersection(*(set(c) for c in curves)))
    return np.array(shared), np.array([np.mean([c[it] for c in curves]) for it in shared])


def _label_ends(ax, ends, gap=0.035):
    """Name each curve at its last point, labels pushed apart to at least ``gap`` of the y range."""
    if not ends:
        return
    low, high = ax.get_ylim()
    step = gap * (high - low)
    ends.sort()
    placed = [value for value, _, _, _ in ends]
    for _ in range(200):  # neighbours closer than a step push each other apart, half each
        moved = False
        for i in range(1, len(placed)):
            short = step - (placed[i] - placed[i - 1])
            if short > 1e-9:
                placed[i - 1] -= short / 2
                placed[i] += short / 2
                moved = True
        if not moved:
            break
    x_right = ax.get_xlim()[1]
    for (value, x, label, colour), at in zip(ends, placed, strict=True):
        ax.annotate(label, (x, value), xytext=(x + 0.02 * x_right, at), textcoords="data", fontsize=7,
                    va="center", color=colour, annotation_clip=False)
    ax.set_xlim(right=x_right * 1.14)


def plot_comparison(result: dict, path: str | os.PathLike | None = None, title: str | None = None) -> Any:
    """Two panels: each architecture's test accuracy with its 95% CI (the dashed line: the median
    of the random cells), and its validation accuracy over training (mean over seeds).

    Args:
        result: a comparison as plain data (``CompareResult.to_dict()``, or ``compare.json``
            loaded, or one setting's ``result`` in ``benchmarks/compare_omniglot.py``'s JSON).
        path: also save there (the extension picks the format); title: the figure's title
            (default: ways, shots and iterations from ``result["config"]``).

    Returns:
        ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    rows = result["rows"]
    fig = Figure(figsize=(12, 0.45 * len(rows) + 2.2), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.3])
    y = np.arange(len(rows))[::-1]
    ends = []
    for yi, row in zip(y, rows, strict=True):
        colour = KIND_COLOURS[row_kind(row)]
        left.errorbar(100 * row["accuracy"], yi, xerr=100 * row["ci95"], fmt="o", color=colour, capsize=3)
        iterations, acc = mean_curve(row.get("val_curves") or {})
        right.plot(iterations, acc, color=colour, linewidth=1.6 if row_kind(row) != "random" else 1.0,
                   marker="." if len(iterations) < 3 else None)
        if len(iterations):
            ends.append([float(acc[-1]), float(iterations[-1]), row["label"], colour])
    _label_ends(right, ends)
    median = random_median(rows)
    if median is not None:
        left.axvline(100 * median, color=KIND_COLOURS["random"], linestyle="--", linewidth=1)
    left.set_yticks(y, [r["label"] for r in rows])
    left.set_xlabel(f"test accuracy, % (95% CI over {result.get('eval_tasks', '?')} tasks)")
    left.grid(axis="x", alpha=0.3)
    right.set_xlabel("iteration")
    right.set_ylabel("validation accuracy")
    right.grid(alpha=0.3)
    handles = [Line2D([], [], color=c, marker="o", label=k) for k, c in KIND_COLOURS.items()]
    if median is not None:
        handles.append(Line2D([], [], color=KIND_COLOURS["random"], linestyle="--", label="random median"))
    left.legend(handles=handles, fontsize=8, loc="best")
    c = result.get("config", {})
    fig.suptitle(title or f"{c.get('ways', '?')}-way {c.get('shots', '?')}-shot, {c.get('iterations', '?')} "
                          f"iterations: retrained and evaluated under one budget")
    if path is not None:
        save_figure(fig, path, dpi=110)
    return fig
