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

The probabilities come from the meta-level alpha of a fit run (``softmax(alpha)``,
default) or from a task's adapted posterior ``softmax(phi)`` (``--task-seed``). That task
comes from the validation split by default: choosing a cell is model selection, and the
test classes stay unseen until evaluation.

Usage::

    g = derive_genotype(meta.alpha_normal.softmax(-1), meta.alpha_reduce.softmax(-1))
    rows = chosen_edges_table(probs_normal, probs_reduce, g)
    print(format_edges_table(rows))
"""
import os
from typing import NamedTuple, Optional

import torch

from ..data import SELECT_ON, TaskSampler
from ..errors import ConfigError, GenotypeError
from ..models import NUM_EDGES, NUM_OPS, OPS, STEPS, Genotype, edge_index, save_genotype
from .posterior import state_name

CELL_TYPES = ("normal", "reduce")


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


def _as_probs(probs, which):
    """``probs`` as a float64 CPU tensor ``[14, 10]``, checked to be per-edge distributions."""
    t = torch.as_tensor(probs).detach().to("cpu", torch.float64)
    expected = (NUM_EDGES, NUM_OPS)
    if tuple(t.shape) != expected:
        raise GenotypeError(f"probs_{which}: expected edge probabilities of shape {list(expected)} "
                            f"(edges x ops), got {list(t.shape)}")
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


def derive_genotype(probs_normal, probs_reduce):
    """The genotype of two cells' edge probabilities by the paper's rule (module docstring).

    Args:
        probs_normal, probs_reduce: ``[14, 10]`` tensors (or arrays) of per-edge operation
            probabilities, edges in ``bayesnas.models.EDGES`` order, ops in ``OPS`` order.
            Each row must be a distribution (one-hot rows are fine).

    Returns:
        a :class:`~bayesnas.models.genotypes.Genotype` with 8 ``(op, source)`` pairs per
        cell (two per node, sources increasing) and every intermediate node concatenated.

    Example::

        g = derive_genotype(meta.alpha_normal.softmax(-1), meta.alpha_reduce.softmax(-1))
        g.normal[:2]          # node 0's two inputs, e.g. [('sep_conv_3x3', 0), ('skip_connect', 1)]
        save_genotype(g, "genotype.json")
    """
    cells = []
    for which, probs in zip(CELL_TYPES, (probs_normal, probs_reduce)):
        cells.append([(OPS[op], source) for op, source, _ in _cell_choice(_as_probs(probs, which))])
    concat = list(range(2, STEPS + 2))
    return Genotype(cells[0], list(concat), cells[1], list(concat))


def chosen_edges_table(probs_normal, probs_reduce, genotype=None):
    """The kept edges with their probabilities: 16 :class:`ChosenEdge` rows (normal cell first).

    Args:
        probs_normal, probs_reduce: ``[14, 10]`` edge probabilities, as for :func:`derive_genotype`.
        genotype: the genotype whose edges to list (default: the one derived from these
            probabilities); ``prob`` is the probability of its op on its edge.

    Returns:
        list of :class:`ChosenEdge` (cell, node, source, op, prob), node by node.

    Example::

        rows = chosen_edges_table(pn, pr)
        rows[0]               # ChosenEdge(cell='normal', node=0, source=0, op='sep_conv_3x3', prob=0.41)
        print(format_edges_table(rows))
    """
    probs = [_as_probs(p, w) for w, p in zip(CELL_TYPES, (probs_normal, probs_reduce))]
    if genotype is None:
        genotype = derive_genotype(*probs)
    rows = []
    for which, p, pairs in zip(CELL_TYPES, probs, (genotype.normal, genotype.reduce)):
        for i, (op, source) in enumerate(pairs):
            node = i // 2
            rows.append(ChosenEdge(which, node, int(source), op, float(p[edge_index(source, node), OPS.index(op)])))
    return rows


def format_edges_table(rows):
    """A plain-text table of :class:`ChosenEdge` rows (what ``bayesnas derive-cell`` prints).

    Example::

        rows = chosen_edges_table(pn, pr)
        text = format_edges_table(rows)
        print(text)           # cell    node  source   op            prob
    """
    lines = [f"{'cell':<7} {'node':>4}  {'source':<8} {'op':<14} {'prob':>6}"]
    for r in rows:
        lines.append(f"{r.cell:<7} {'n' + str(r.node):>4}  {state_name(r.source):<8} {r.op:<14} {r.prob:>6.3f}")
    return "\n".join(lines)


class DerivedCell(NamedTuple):
    """What :func:`derive_cell` returns.

    genotype: the derived Genotype; table: its :class:`ChosenEdge` rows; probs_normal,
    probs_reduce: the ``[14, 10]`` probabilities it came from; genotype_path: the JSON
    written; plot_path: the picture written (None without a plot); task_seed: the task's
    seed (None for the meta-level alpha); task_split: the split of that task (None for
    the meta-level alpha).
    """

    genotype: Genotype
    table: list
    probs_normal: torch.Tensor
    probs_reduce: torch.Tensor
    genotype_path: str
    plot_path: Optional[str]
    task_seed: Optional[int]
    task_split: Optional[str] = None


def task_edge_probs(meta, cfg, data, task_seed, iteration=None, which_split="val"):
    """Edge probabilities adapted to one task's support set: ``([14, 10], [14, 10])``.

    The task is task 0 of a sampler over ``which_split`` (the validation classes by
    default) seeded with ``task_seed`` (the fit run's ways and shots); the guide takes the run's ``inner_steps`` with the
    temperature and KL weight of the training schedule at ``iteration`` (default: the
    run's last), exactly as :meth:`bayesnas.Run.task_posterior` does. The guide's own
    randomness is seeded with ``task_seed`` too, so the same seed always gives the same
    probabilities.

    Example::

        cfg, meta, data = load_fit("runs/fit-a")
        pn, pr = task_edge_probs(meta, cfg, data, task_seed=3)
        derive_genotype(pn, pr)
    """
    from .posterior import AdaptedPosterior
    from .svi import kl_weight, temperature

    iteration = cfg.iterations if iteration is None else max(int(iteration), 1)
    sampler = TaskSampler(data.split(which_split), cfg.ways, cfg.shots, cfg.queries, seed=int(task_seed),
                          device=meta.mu.device, image_size=cfg.image_size)
    task = sampler.task(0)
    post = AdaptedPosterior.from_support(meta, task.support_x, task.support_y, steps=cfg.inner_steps,
                                         tau=temperature(cfg, iteration), relaxed=cfg.variant == "gumbel",
                                         kl_weight=kl_weight(cfg, iteration), seed=int(task_seed))
    return tuple(p.detach() for p in post.probs)


def derive_cell(run_dir, task_seed=None, out=None, plot=True, which="last", task_split="val"):
    """Derive the cell of a ``bayesnas fit`` run, write it as JSON and draw it.

    Args:
        run_dir: a folder written by :func:`~bayesnas.inference.svi.fit`.
        task_seed: None for the meta-level alpha; an int to adapt the posterior to the
            support set of one task of ``task_split`` sampled with that seed.
        out: genotype JSON to write (default ``RUN_DIR/genotype.json``, or
            ``RUN_DIR/genotype-task<SEED>.json`` with a task seed, ``-test`` added for a
            test task, so that the meta-level cell is never overwritten). Written atomically.
        plot: True draws both cells to the JSON's path with ``.png``; a path
            (``.png``/``.pdf``/``.svg``) draws there; False draws nothing.
        which: the fit checkpoint to read, "last" or "best".
        task_split: the split of the ``task_seed`` task: "val" (default; deriving a cell
            is model selection) or "test".

    Returns:
        :class:`DerivedCell`.

    Example::

        cell = derive_cell("runs/fit-a")
        print(format_edges_table(cell.table))
        derive_cell("runs/fit-a", task_seed=7, plot=False).genotype
    """
    from .svi import load_fit_state

    if task_split not in SELECT_ON:
        raise ConfigError(f"task_split={task_split!r}: expected one of {', '.join(SELECT_ON)}")
    cfg, meta, data, state = load_fit_state(run_dir, which=which)
    if task_seed is None:
        with torch.no_grad():
            pn, pr = meta.alpha_normal.softmax(-1), meta.alpha_reduce.softmax(-1)
        default_name = "genotype.json"
        task_split = None
    else:
        pn, pr = task_edge_probs(meta, cfg, data, task_seed, iteration=state["iteration"], which_split=task_split)
        default_name = f"genotype-task{int(task_seed)}{'-test' if task_split == 'test' else ''}.json"
    genotype = derive_genotype(pn, pr)
    table = chosen_edges_table(pn, pr, genotype)
    path = os.fspath(out) if out is not None else os.path.join(os.fspath(run_dir), default_name)
    save_genotype(genotype, path)
    plot_path = None
    if plot:
        from ..viz.cells import plot_genotype

        plot_path = os.path.splitext(path)[0] + ".png" if plot is True else os.fspath(plot)
        where = "meta-level alpha" if task_seed is None else f"adapted to {task_split} task seed {task_seed}"
        plot_genotype(genotype, path=plot_path, table=table,
                      title=f"{os.path.basename(os.path.normpath(os.fspath(run_dir)))}: {where}")
    return DerivedCell(genotype, table, pn.detach().cpu(), pr.detach().cpu(), path, plot_path, task_seed,
                       task_split)
