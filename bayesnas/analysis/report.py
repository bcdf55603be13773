"""Plain-text tables of a fit run's edge posterior, and a run's summary: what ``bayesnas inspect`` prints.
"""
import math
import os

from ..models.derivation import format_edges_table
from ..models.genotypes import CELL_TYPES, node_lines, state_name
from ..training.rundir import RunDirectory
from .compare import format_compare_table
from .evaluate import format_evaluation

__all__ = ["format_run_summary", "format_posterior_table", "format_derived_cells", "format_diagnostics_table",
           "format_calibration", "format_edges_table", "format_evaluation", "format_compare_table"]


def format_run_summary(card, rows=None):
    """A few lines on a run: what it is, how far it got, its last and best validation, its warnings.

    Args:
        card: the run's :class:`~bayesnas.training.card.RunCard` (the whole card is ``card.markdown``).
        rows: its ``metrics.csv`` rows (default: read from the folder; none when it has no file).
    """
    if rows is None:
        path = os.path.join(card.path, "metrics.csv")
        rows = RunDirectory(card.path).read_metrics() if os.path.exists(path) else []
    checkpoint = ("no checkpoint yet" if card.checkpoint_iteration is None
                  else f"last checkpoint at iteration {card.checkpoint_iteration}")
    lines = [f"{card.kind} run {card.path}: {card.status}; iteration {card.iteration} of {card.iterations}, "
             f"{checkpoint}"]
    scored = [r for r in rows if r.get("val_acc") is not None]
    if scored:
        best = max(scored, key=lambda r: r["val_acc"])
        last = scored[-1]
        lines.append(f"validation accuracy: last {last['val_acc']:.4g} (iteration {int(last['iteration'])}), "
                     f"best {best['val_acc']:.4g} (iteration {int(best['iteration'])})")
    if card.evaluation is not None:
        e = card.evaluation
        lines.append(f"evaluation: {100 * e['accuracy']:.2f}% ± {100 * e['ci95']:.2f}% (95% CI) over {e['tasks']} "
                     f"{e['split']} tasks")
    lines += [f"warning: {w}" for w in card.warnings]
    lines.append(f"run card: {os.path.join(card.path, 'README.md')} (--card prints it)")
    return "\n".join(lines)


def format_posterior_table(posterior, top=3, sort_by="edge"):
    """Each edge's ``top`` ops with their probabilities and the edge's entropy, per cell type.

    Args:
        posterior: an :class:`~bayesnas.analysis.posterior.EdgePosterior`; top: ops per edge (1..10);
        sort_by: "edge" (index order) or "entropy" (surest edge first).
    """
    rows = posterior.top(top)
    lines = []
    for cell, h in zip(CELL_TYPES, posterior.entropy(), strict=True):
        lines.append(f"\n{cell} cell: op probabilities per edge (entropy in nats; uniform = {math.log(10):.3f})")
        lines.append(f"  {'edge':<18}{'entropy':>8}  top {top} op{'s' * (top != 1)}")
        edges = range(h.numel())
        if sort_by == "entropy":
            edges = sorted(edges, key=lambda e: float(h[e]))
        for e in edges:
            mine = [r for r in rows if r.cell == cell and r.edge == e]
            ops = "  ".join(f"{r.op} {r.prob:.3f}" for r in mine)
            name = f"{state_name(mine[0].source)} -> n{mine[0].target}"
            lines.append(f"  {name:<18}{float(h[e]):>8.3f}  {ops}")
    return "\n".join(lines)


def format_derived_cells(genotype):
    """Both cells of a genotype, node by node (``n0 <- op(c_{k-2}) + op(c_{k-1})``)."""
    lines = ["derived cells (the rule of derive-cell):"]
    for cell in CELL_TYPES:
        lines.append(f"  {cell} cell:")
        lines.extend(f"    {line}" for line in node_lines(getattr(genotype, cell)))
    return "\n".join(lines)


def format_diagnostics_table(history, max_rows=None):
    """The search diagnostics of a :class:`PosteriorHistory` as a plain-text table.

    One row per logged iteration: mean and max edge entropy (nats), mean top-op
    probability, and whether the derived genotype changed. With more entries than
    ``max_rows``, evenly spaced ones are shown (always the first and the last), and
    ``changed`` counts the changes since the previous row shown. A last line says how
    often and when the genotype last changed.
    """
    rows = history.diagnostics()
    n = len(rows)
    if max_rows is not None and int(max_rows) < 2:
        raise ValueError(f"max_rows={max_rows}: expected at least 2 (the first and last entries), or None for all")
    if max_rows is None or n <= int(max_rows):
        shown = list(range(n))
    else:
        shown = sorted({round(i * (n - 1) / (int(max_rows) - 1)) for i in range(int(max_rows))})
    lines = [f"{'iteration':>10}  {'entropy mean':>12}  {'entropy max':>11}  {'top-op prob':>11}  {'changed':>7}"]
    previous = -1
    for index in shown:
        d = rows[index]
        changed = sum(r.genotype_changed for r in rows[previous + 1:index + 1])
        lines.append(f"{int(history.iteration[index]):>10}  {d.edge_entropy_mean:>12.3f}  {d.edge_entropy_max:>11.3f}  "
                     f"{d.top_prob_mean:>11.3f}  {changed:>7}")
        previous = index
    changes = [int(history.iteration[i]) for i, r in enumerate(rows) if r.genotype_changed]
    if changes:
        lines.append(f"the derived genotype changed {len(changes)} time{'s' * (len(changes) != 1)} in {n} logged "
                     f"steps, last at iteration {changes[-1]}")
    else:
        lines.append(f"the derived genotype did not change in {n} logged steps")
    return "\n".join(lines)


def format_calibration(cal):
    """A :class:`~bayesnas.analysis.run.Calibration` as two lines: one posterior sample vs S averaged."""
    lines = [f"calibration on {cal.tasks} held-out tasks ({cal.points} query points), 15-bin ECE:"]
    for name, ece, acc, nll, conf in (
            ("1 posterior sample", cal.ece_single, cal.acc_single, cal.nll_single, cal.conf_single),
            (f"{cal.samples} samples averaged", cal.ece_averaged, cal.acc_averaged, cal.nll_averaged,
             cal.conf_averaged)):
        lines.append(f"  {name:<22}ECE {ece:.4f}  accuracy {acc:.4f}  mean confidence {conf:.4f}  NLL {nll:.4f}")
    return "\n".join(lines)
