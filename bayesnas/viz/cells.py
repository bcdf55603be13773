"""Pictures of a genotype's two cells: nodes and the kept, labelled edges (matplotlib only).

Each cell is an arc diagram: the two input states ``c_{k-2}``, ``c_{k-1}`` and the four
intermediate nodes ``n0..n3`` on a line, every kept edge an arc from its source to its
node labelled with its op (and its probability when a derivation table is given),
colours grouping the ops by kind. Figures are ``matplotlib.figure.Figure`` objects built
without pyplot, so nothing needs a display and nothing leaks between calls.

Usage::

    fig = plot_genotype(DARTS_V2, path="darts_v2.png")
    fig = plot_genotype(cell.genotype, table=cell.table, path="runs/a/genotype.pdf")
    fig.axes[1].get_title()          # 'reduction cell'
"""
import os
from typing import Any, Sequence

import numpy as np

from ..models.genotypes import CELL_TITLES, CELL_TYPES, Genotype, state_name
from .posterior import save_figure

# One colour per kind of op: identity, pooling, separable, dilated, factorised.
OP_COLOURS = {
    "skip_connect": "#555555",
    "max_pool_3x3": "#1f77b4", "avg_pool_3x3": "#17becf",
    "sep_conv_3x3": "#d62728", "sep_conv_5x5": "#e4572e", "sep_conv_7x7": "#a31621",
    "dil_conv_3x3": "#2ca02c", "dil_conv_5x5": "#138a36",
    "conv_7x1_1x7": "#9467bd",
}


SPACING = 1.6  #: distance between neighbouring states on the line
RADIUS = 0.34


def _arc(x0, x1, side):
    """Points of a half-ellipse from ``x0`` to ``x1`` on the line, above (side 1) or below (-1)."""
    theta = np.linspace(np.pi, 0.0, 200)
    half = (x1 - x0) / 2
    return x0 + half + half * np.cos(theta), side * 0.35 * (x1 - x0) * np.sin(theta)


def plot_cell(ax: Any, pairs: Sequence[tuple[str, int]], concat: Sequence[int], title: str | None = None,
              probs: Sequence[float] | None = None) -> Any:
    """Draw one cell on the matplotlib axes ``ax`` as an arc diagram.

    The states lie on a line (``c_{k-2}``, ``c_{k-1}``, ``n0`` .. ``n3``); each kept edge
    is an arc from its source to its node, the node's first input above the line and its
    second below, higher the farther it reaches, so no two labels coincide. A line under
    the diagram says which nodes the output concatenates.

    Args:
        ax: a matplotlib ``Axes``.
        pairs: the cell's ``2 * 4`` ``(op, source)`` pairs, node by node (``genotype.normal``).
        concat: states concatenated into the output (``genotype.normal_concat``).
        title: axes title; probs: optional list of 8 floats, one per pair, shown on the edges.
    """
    from matplotlib.patches import Circle

    states = len(pairs) // 2 + 2
    for state in range(states):
        face = "#dbe9f6" if state < 2 else "#fdebd0"
        ax.add_patch(Circle((state * SPACING, 0.0), RADIUS, facecolor=face, edgecolor="#333333", lw=1.0, zorder=3))
        ax.text(state * SPACING, 0.0, state_name(state), ha="center", va="center", fontsize=8 if state < 2 else 9,
                zorder=4)
    for i, (op, source) in enumerate(pairs):
        target = i // 2 + 2
        side = 1 if i % 2 == 0 else -1
        xs, ys = _arc(source * SPACING, target * SPACING, side)
        # clip the arc to the two circles; the arrow head lands on the target's rim
        outside = np.hypot(xs - source * SPACING, ys) > RADIUS
        outside &= np.hypot(xs - target * SPACING, ys) > RADIUS
        xs, ys = xs[outside], ys[outside]
        colour = OP_COLOURS.get(op, "black")
        ax.plot(xs[:-1], ys[:-1], color=colour, lw=1.6, zorder=2, solid_capstyle="round")
        ax.annotate("", xy=(xs[-1], ys[-1]), xytext=(xs[-4], ys[-4]),
                    arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.6, shrinkA=0, shrinkB=0), zorder=2)
        label = op if probs is None else f"{op} {probs[i]:.2f}"
        top = side * 0.35 * (target - source) * SPACING
        ax.text((source + target) / 2 * SPACING, top, label, ha="center", va="center", fontsize=7, color=colour,
                zorder=5, bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.9))
    reach = 0.35 * (states - 1) * SPACING
    ax.text((states - 1) * SPACING / 2, -reach - 0.45,
            "output c_{k} = concat(" + ", ".join(state_name(c) for c in concat) + ")",
            ha="center", va="center", fontsize=8, color="#444444")
    ax.set_xlim(-0.8, (states - 1) * SPACING + 0.8)
    ax.set_ylim(-reach - 0.75, reach + 0.35)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title)


def plot_genotype(genotype: Genotype, path: str | os.PathLike | None = None, table: Sequence | None = None,
                  title: str | None = None) -> Any:
    """Both cells of ``genotype`` side by side; saved to ``path`` when given.

    Args:
        genotype: a :class:`~bayesnas.models.genotypes.Genotype`.
        path: file to write (format from the extension: png, pdf, svg; written atomically).
        table: optional derivation rows (:func:`bayesnas.models.derivation.chosen_edges_table`)
            whose probabilities label the edges.
        title: figure title.

    Returns:
        a ``matplotlib.figure.Figure`` with two axes ("normal cell", "reduction cell").
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 5.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, which in zip(axes, CELL_TYPES, strict=True):
        pairs = getattr(genotype, which)
        probs = None
        if table is not None:
            probs = [r.prob for r in table if r.cell == which]
            if len(probs) != len(pairs):
                raise ValueError(f"table has {len(probs)} {which} rows, the genotype {len(pairs)} edges")
        plot_cell(ax, pairs, getattr(genotype, which + "_concat"), title=CELL_TITLES[which], probs=probs)
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
    return fig

