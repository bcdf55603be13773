"""Figures of edge posteriors: a heatmap per cell type, and op probabilities over training.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot state, no GUI
backend needed); a notebook displays the returned figure, ``path=`` saves it atomically.

Usage::

    fig = plot_edge_posterior(run.edge_posterior().probs, path="edges.png")
    fig = plot_posterior_history(run.posterior_history(), path="history.png")
"""
import os

import numpy as np

from ..errors import ConfigError
from ..fileio import atomic_path
from ..models.derivation import derive_genotype
from ..models.genotypes import CELL_TITLES, CELL_TYPES, EDGES, STEPS, edge_index, state_name
from ..models.operations import OPS


def _edge_label(edge):
    source, target = EDGES[edge]
    return f"{state_name(source)} \u2192 n{target}"


def save_figure(fig, path, dpi=150):
    """Save ``fig`` to ``path`` atomically; the format comes from the extension (png, pdf, svg, ...).
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    supported = fig.canvas.get_supported_filetypes()
    if ext not in supported:
        raise ConfigError(f"{path}: cannot save a figure as {ext or 'a file without extension'!r}; "
                          f"expected one of .{', .'.join(sorted(supported))}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=ext, dpi=dpi)
    return path


def figure_to_array(fig, dpi=80):
    """Render ``fig`` to an RGB image: a uint8 array ``[height, width, 3]`` (Agg, no display).

    Sets the figure's dpi (pixels per inch of its size), so render a figure made for this.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def plot_edge_posterior(probs, genotype=None, path=None, title=None, annotate=True):
    """Heatmaps (edges x ops) of edge probabilities, one per cell type.

    The op chosen on each edge kept by ``genotype`` (default: the one derived from
    ``probs``) is outlined in red; lines separate the edges of different target nodes.

    Args:
        probs: ``(normal, reduce)`` op probabilities ``[14, 10]`` each (an EdgePosterior's
            ``.probs``).
        genotype: the genotype whose chosen ops are outlined (default: derived from ``probs``).
        path: also save there.
        title: the figure's title.
        annotate: write each probability in its cell.

    Returns:
        ``matplotlib.figure.Figure`` with two heatmap axes and a colour bar.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    genotype = derive_genotype(*probs) if genotype is None else genotype
    # fixed margins rather than constrained layout: the same picture, a second faster to save
    fig = Figure(figsize=(13, 6.5))
    fig.subplots_adjust(left=0.12, right=0.9, bottom=0.2, top=0.88, wspace=0.06)
    axes = fig.subplots(1, 2, sharey=True)
    image = None
    for ax, cell, cell_probs in zip(axes, CELL_TYPES, probs, strict=True):
        cell_probs = cell_probs.numpy()
        image = ax.imshow(cell_probs, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_title(CELL_TITLES[cell])
        ax.set_xticks(range(len(OPS)), OPS, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(EDGES)), [_edge_label(e) for e in range(len(EDGES))], fontsize=8)
        ax.set_xlabel("operation")
        for boundary in np.cumsum([k + 2 for k in range(STEPS)])[:-1]:
            ax.axhline(boundary - 0.5, color="white", linewidth=1.5)
        if annotate:
            for e in range(cell_probs.shape[0]):
                for o in range(cell_probs.shape[1]):
                    ax.text(o, e, f"{cell_probs[e, o]:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if cell_probs[e, o] > 0.6 else "white")
        for i, (op, source) in enumerate(getattr(genotype, cell)):
            e = edge_index(source, i // 2)
            ax.add_patch(Rectangle((OPS.index(op) - 0.5, e - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    axes[0].set_ylabel("edge (source \u2192 target node)")
    fig.colorbar(image, cax=fig.add_axes((0.92, 0.2, 0.015, 0.68)), label="probability")
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_posterior_history(history, path=None, title=None):
    """Each edge's op probabilities over training, per cell type a grid (target node x source state).

    Panel (row t, column s) of a cell type shows edge ``s -> node t``: one line per op
    (the same colour for an op everywhere; one legend). The normal cell is on the left,
    the reduction cell on the right; panels of a cell type share their axes.

    Args:
        history: a :class:`~bayesnas.analysis.posterior.PosteriorHistory`
            (``iteration [n]``, ``probs`` per cell ``[n, 14, 10]``).
        path: also save there.
        title: the figure's title.

    Returns:
        ``matplotlib.figure.Figure`` (28 panels with data).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    iterations = history.iteration.numpy()
    colours = [f"C{o}" for o in range(len(OPS))]
    columns = STEPS + 1
    # no constrained layout: with 40 panels it costs seconds per save; fixed margins do
    fig = Figure(figsize=(20, 8))
    grid = fig.add_gridspec(STEPS, 2 * columns + 1, width_ratios=[1] * columns + [0.3] + [1] * columns,
                            left=0.04, right=0.99, bottom=0.12, top=0.88, wspace=0.12, hspace=0.45)
    lines = []
    for half, (cell, probs) in enumerate(zip(CELL_TYPES, history.probs, strict=True)):
        probs = probs.numpy()
        offset = half * (columns + 1)
        first = None
        for target in range(STEPS):
            for source in range(target + 2):
                ax = fig.add_subplot(grid[target, offset + source], sharex=first, sharey=first)
                if first is None:
                    # few ticks: matplotlib spends most of a save of this figure on them
                    ax.xaxis.set_major_locator(MaxNLocator(3, integer=True))
                    ax.yaxis.set_major_locator(MaxNLocator(3))
                    first = ax
                e = edge_index(source, target)
                lines = [ax.plot(iterations, probs[:, e, o], color=colours[o], linewidth=1.2,
                                 marker="." if len(iterations) < 3 else None)[0] for o in range(len(OPS))]
                ax.set_title(_edge_label(e), fontsize=8)
                ax.tick_params(labelsize=7, labelleft=source == 0)
                if source == 0:
                    ax.set_ylabel("probability", fontsize=8)
                if target == STEPS - 1:
                    ax.set_xlabel("iteration", fontsize=8)
        centre = (grid[0, offset].get_position(fig).x0 + grid[0, offset + columns - 1].get_position(fig).x1) / 2
        fig.text(centre, 0.92, CELL_TITLES[cell], ha="center", fontsize=12)
    fig.legend(lines, OPS, loc="lower center", ncols=len(OPS), fontsize=8, frameon=False)
    fig.suptitle(title or f"{history.label}: op probability per edge over training")
    if path is not None:
        save_figure(fig, path, dpi=100)
    return fig


def plot_search_diagnostics(history, path=None, title=None):
    """How decided the meta-level posterior got over training, against iteration.

    Top panel: mean and max edge entropy over the 28 edges (nats; dashed: uniform,
    ``log(10)``). Bottom panel: mean top-op probability (dashed: uniform, 0.1), with a
    tick at every logged iteration where the derived genotype changed.

    Args:
        history: a :class:`~bayesnas.analysis.posterior.PosteriorHistory`.
        path: also save there.
        title: the figure's title.

    Returns:
        ``matplotlib.figure.Figure`` with two axes.
    """
    from matplotlib.figure import Figure

    rows = history.diagnostics()
    iterations = history.iteration.numpy()
    marker = "." if len(iterations) < 3 else None
    fig = Figure(figsize=(8, 6))
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.1, top=0.9, hspace=0.12)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(iterations, [d.edge_entropy_mean for d in rows], color="C0", marker=marker, label="mean over edges")
    top.plot(iterations, [d.edge_entropy_max for d in rows], color="C0", linestyle=":", marker=marker,
             label="max over edges")
    top.axhline(np.log(len(OPS)), color="grey", linestyle="--", linewidth=1, label="uniform")
    top.set_ylim(0, 1.05 * np.log(len(OPS)))
    top.set_ylabel("edge entropy (nats)")
    top.legend(fontsize=8, frameon=False)
    bottom.plot(iterations, [d.top_prob_mean for d in rows], color="C1", marker=marker)
    bottom.axhline(1 / len(OPS), color="grey", linestyle="--", linewidth=1)
    changed = [it for it, d in zip(iterations, rows, strict=True) if d.genotype_changed]
    bottom.plot(changed, [0.0] * len(changed), linestyle="none", marker="|", markersize=10, color="C3",
                label="derived genotype changed")
    bottom.set_ylim(0, 1)
    bottom.set_ylabel("mean top-op probability")
    bottom.set_xlabel("iteration")
    bottom.legend(fontsize=8, frameon=False, loc="upper left")
    fig.suptitle(title or f"{history.label}: how decided the edge posterior is")
    if path is not None:
        save_figure(fig, path)
    return fig
