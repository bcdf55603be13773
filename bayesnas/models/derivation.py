"""Deriving a discrete cell (a genotype) from edge probabilities (the paper's appendix B).

For each intermediate node k (0..3) of a cell, every earlier state j = 0..k+1 feeds it
through one edge. The edge's *strength* is the probability of its strongest operation
other than ``none``. The node keeps the 2 strongest edges, which by construction come from
2 different states (a node has exactly one edge per source, so two ops of one edge can
never both be kept), and on each kept edge the op that gave the strength.

Ties are broken deterministically, never by floating-point noise of a sort:
  * between ops of one edge, the op listed first in ``bayesnas.models.OPS`` wins;
  * between edges of one node, the edge from the lower-numbered source state wins.
A kept pair of a node is listed in increasing order of source state, so two derivations
that keep the same edges give equal genotypes.

The rule reads only probabilities: the search's diagnostics, the run card and
:func:`bayesnas.analysis.derive.derive_cell` all derive with it (DARTS keeps it beside its
search model the same way).
"""
from typing import NamedTuple

import torch

from ..errors import GenotypeError
from .genotypes import CELL_TYPES, NUM_EDGES, STEPS, Genotype, edge_index, state_name
from .operations import NUM_OPS, OPS


class ChosenEdge(NamedTuple):
    """One kept edge of a derived cell.

    cell: "normal" or "reduce"; node: intermediate node 0..3; source: the state feeding
    the edge (0, 1: cell inputs; j >= 2: node j - 2); op: the kept op's name; prob: its
    probability on that edge.
    """

    cell: str
    node: int
    source: int
    op: str
    prob: float


def edge_tensor(value, name, dtype=torch.float32, error=ValueError):
    """``value`` as a detached CPU tensor ``[14, 10]`` (edges x ops) of ``dtype``; ``error``
    naming ``name`` for another shape."""
    t = torch.as_tensor(value).detach().to("cpu", dtype)
    if tuple(t.shape) != (NUM_EDGES, NUM_OPS):
        raise error(f"{name} has shape {tuple(t.shape)}, expected ({NUM_EDGES}, {NUM_OPS}) (edges, ops)")
    return t


def _as_probs(probs, which):
    """``probs`` as a float64 CPU tensor ``[14, 10]``, checked to be per-edge distributions."""
    t = edge_tensor(probs, f"probs_{which}", torch.float64, GenotypeError)
    rows_sum_to_one = bool(((t.sum(-1) - 1).abs() <= 1e-3).all())
    if not torch.isfinite(t).all() or (t < 0).any() or not rows_sum_to_one:
        raise GenotypeError(f"probs_{which}: expected probabilities (non-negative, each edge's row summing "
                            f"to 1); pass softmax(alpha), not the logits alpha")
    return t


def _cell_choice(probs):
    """The 8 ``(op_index, source, prob)`` choices of one cell, node by node, sources increasing."""
    chosen = []
    for node in range(STEPS):
        candidates = []
        for source in range(node + 2):
            row = probs[edge_index(source, node)].tolist()
            # strictly-greater scan: the first op in OPS order wins a tie
            best = 1
            for o in range(2, NUM_OPS):
                if row[o] > row[best]:
                    best = o
            candidates.append((row[best], source, best))
        # strongest first; equal strength -> lower source first
        candidates.sort(key=lambda c: (-c[0], c[1]))
        kept = sorted(candidates[:2], key=lambda c: c[1])
        chosen.extend((op, source, prob) for prob, source, op in kept)
    return chosen


def derive_genotype(probs_normal: torch.Tensor, probs_reduce: torch.Tensor) -> Genotype:
    """The genotype of two cells' edge probabilities by the paper's rule (module docstring).

    Args:
        probs_normal: ``[14, 10]`` tensor (or array) of the normal cell's per-edge operation
            probabilities, edges in ``bayesnas.models.EDGES`` order, ops in ``OPS`` order.
            Each row must be a distribution (one-hot rows are fine).
        probs_reduce: the same for the reduction cell.

    Returns:
        a :class:`~bayesnas.models.genotypes.Genotype` with 8 ``(op, source)`` pairs per
        cell (two per node, sources increasing) and every intermediate node concatenated.
    """
    cells = []
    for which, probs in zip(CELL_TYPES, (probs_normal, probs_reduce), strict=True):
        cells.append([(OPS[op], source) for op, source, _ in _cell_choice(_as_probs(probs, which))])
    concat = list(range(2, STEPS + 2))
    return Genotype(cells[0], list(concat), cells[1], list(concat))


def chosen_edges_table(probs_normal: torch.Tensor, probs_reduce: torch.Tensor,
                       genotype: Genotype | None = None) -> list["ChosenEdge"]:
    """The kept edges with their probabilities: 16 :class:`ChosenEdge` rows (normal cell first).

    Args:
        probs_normal: ``[14, 10]`` edge probabilities of the normal cell, as for :func:`derive_genotype`.
        probs_reduce: the same for the reduction cell.
        genotype: the genotype whose edges to list (default: the one derived from these
            probabilities); ``prob`` is the probability of its op on its edge.

    Returns:
        list of :class:`ChosenEdge` (cell, node, source, op, prob), node by node.
    """
    probs = [_as_probs(p, w) for w, p in zip(CELL_TYPES, (probs_normal, probs_reduce), strict=True)]
    if genotype is None:
        genotype = derive_genotype(*probs)
    rows = []
    for which, p, pairs in zip(CELL_TYPES, probs, (genotype.normal, genotype.reduce), strict=True):
        for i, (op, source) in enumerate(pairs):
            node = i // 2
            rows.append(ChosenEdge(which, node, int(source), op, float(p[edge_index(source, node), OPS.index(op)])))
    return rows


def format_edges_table(rows: list["ChosenEdge"]) -> str:
    """A plain-text table of :class:`ChosenEdge` rows (what ``bayesnas derive-cell`` prints).
    """
    lines = [f"{'cell':<7} {'node':>4}  {'source':<8} {'op':<14} {'prob':>6}"]
    for r in rows:
        lines.append(f"{r.cell:<7} {'n' + str(r.node):>4}  {state_name(r.source):<8} {r.op:<14} {r.prob:>6.3f}")
    return "\n".join(lines)
