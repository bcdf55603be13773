"""Deriving a cell by held-out evidence instead of by alpha's size (``derive-cell --by evidence``).

The Bayesian form of selection by measurement: each decision compares architectures by how
well the meta-network, adapted to held-out tasks, predicts their query labels. Undecided
edges keep the meta-level mixture ``softmax(alpha)`` as edge weights; decided edges are
one-hot.

1. Operations, one edge at a time in a random order (both cell types): every non-``none``
   op is put on the edge in turn and scored on the same N validation tasks
   (:func:`~bayesnas.analysis.score.architecture_scores`: query log predictive likelihood per
   task, the weights adapted by the guide's steps with the architecture fixed). The edge keeps
   the op with the highest mean; the decision records the paired difference from the
   runner-up with its 95% CI over tasks, and the posterior it implies,
   ``p(op) ∝ prior(op) * exp(E_op)`` with ``E_op`` the total held-out log-likelihood of the N
   tasks' query points and the prior ``softmax(alpha)`` over the non-``none`` ops (or uniform).
   With ``finetune`` > 0 the weights then take that many SVI steps with the decided
   architecture before the next edge.
2. Edges, node by node: with every edge on its op, each incoming edge of a node is set to
   ``none`` in turn; the node keeps the two edges whose removal costs most (the paired drop
   and its CI recorded), every other edge becomes ``none``.

Its cost is ``(9 ops x 28 edges + 1 + 28)`` scorings of N tasks. The supernet computes only
the nonzero (edge, op) pairs of a cell type whose edges are one-hot or nearly so
(:func:`~bayesnas.models.discrete_cells`; at most :data:`~bayesnas.models.supernet.SPARSE_MAX_PAIRS`,
i.e. 3 undecided edges): every scoring of step 2, and the cells of a type with few undecided
edges left in step 1. The rest of step 1 runs the whole fused supernet.

Usage::

    result = derive_by_evidence("runs/omniglot", tasks=20)
    result.genotype, result.decisions[0].posterior
"""
import random
import time
from typing import Dict, List, NamedTuple

import torch

from ..errors import ConfigError
from ..models import CELL_TYPES, EDGES, NUM_OPS, OPS, STEPS, Genotype, edge_index
from ..training.loop import task_samplers
from .evaluate import mean_confidence_interval
from .score import architecture_scores, held_out, weight_finetuner

__all__ = ["OpDecision", "EdgeChoice", "EvidenceDerivation", "derive_by_evidence", "evidence_derivation"]

NONE = OPS.index("none")


class OpDecision(NamedTuple):
    """The op kept on one edge: cell, edge row, source state, target node, op; mean_loglik: each
    candidate op's mean held-out log-likelihood per query point; difference, ci95: best minus
    runner-up, paired over tasks; posterior: ``p(op) ∝ prior * exp(total log-likelihood)``."""

    cell: str
    edge: int
    source: int
    node: int
    op: str
    mean_loglik: Dict[str, float]
    difference: float
    ci95: float
    posterior: Dict[str, float]


class EdgeChoice(NamedTuple):
    """The two edges a node keeps: cell, node, kept sources; drop: each source's mean loss of
    held-out log-likelihood when its edge is removed, with ``drop_ci95`` over tasks."""

    cell: str
    node: int
    kept: List[int]
    drop: Dict[int, float]
    drop_ci95: Dict[int, float]


class EvidenceDerivation(NamedTuple):
    """What :func:`derive_by_evidence` returns."""

    genotype: Genotype
    decisions: List[OpDecision]
    edges: List[EdgeChoice]
    tasks: int
    seed: int
    prior: str
    finetune: int
    seconds: float


def _posterior(prior, total_loglik):
    """``prior * exp(total_loglik)`` normalised, computed in log space. Both ``[ops]``."""
    log_post = prior.clamp_min(1e-30).log() + total_loglik
    return (log_post - log_post.logsumexp(0)).exp()


def evidence_derivation(meta, task_batches, inner_steps, tau, kl_weight, samples=1, seed=0, prior="alpha",
                        finetune=None, progress=None):
    """The derivation on a MetaNetwork in hand (:func:`derive_by_evidence` loads a run for it).

    Args:
        meta: the MetaNetwork; task_batches: held-out batches (a sampler's Tasks), the same for
            every decision; inner_steps, tau, kl_weight: the guide's steps as in training;
        samples: posterior draws per prediction; seed: the order of the edges and the noise;
        prior: "alpha" (``softmax(alpha)`` over the non-``none`` ops) or "uniform";
        finetune: optional ``callable(z_normal, z_reduce)`` run after each op decision;
        progress: optional ``callable(done, total)``.

    Returns:
        ``(genotype, decisions, edge choices)``.
    """
    if prior not in ("alpha", "uniform"):
        raise ConfigError(f"prior={prior!r}: expected 'alpha' or 'uniform'")
    with torch.no_grad():
        z = {"normal": meta.alpha_normal.softmax(-1).detach().cpu().clone(),
             "reduce": meta.alpha_reduce.softmax(-1).detach().cpu().clone()}
    priors = {c: (z[c].clone() if prior == "alpha" else torch.full_like(z[c], 1.0 / NUM_OPS)) for c in CELL_TYPES}
    n_query = task_batches[0].query_y.shape[1]
    order = [(c, e) for c in CELL_TYPES for e in range(len(EDGES))]
    random.Random(seed).shuffle(order)
    total = len(order) + 1 + len(order)
    done = 0

    def scores(zs):
        return architecture_scores(meta, zs["normal"], zs["reduce"], task_batches, inner_steps, tau, kl_weight,
                                   samples, seed)[0]

    def one_hot(op):
        row = torch.zeros(NUM_OPS)
        row[op] = 1.0
        return row

    decisions = []
    for cell, e in order:
        per_op = {}
        for op in range(NUM_OPS):
            if op == NONE:
                continue
            trial = {c: z[c].clone() for c in CELL_TYPES}
            trial[cell][e] = one_hot(op)
            per_op[op] = scores(trial)
        ranked = sorted(per_op, key=lambda o: (-float(per_op[o].mean()), o))
        best, runner = ranked[0], ranked[1]
        diff, ci = mean_confidence_interval(per_op[best] - per_op[runner])
        ops = sorted(per_op)
        prior_row = priors[cell][e][ops]
        post = _posterior(prior_row / prior_row.sum(), torch.stack([per_op[o].sum() * n_query for o in ops]))
        source, node = EDGES[e]
        decisions.append(OpDecision(cell, e, source, node, OPS[best], {OPS[o]: float(per_op[o].mean()) for o in ops},
                                    diff, ci, {OPS[o]: float(p) for o, p in zip(ops, post, strict=True)}))
        z[cell][e] = one_hot(best)
        if finetune is not None:
            finetune(z["normal"], z["reduce"])
        done += 1
        if progress is not None:
            progress(done, total)

    full = scores(z)
    done += 1
    edges, cells = [], {}
    for cell in CELL_TYPES:
        pairs = []
        for node in range(STEPS):
            drop, drop_ci = {}, {}
            for source in range(node + 2):
                trial = {c: z[c].clone() for c in CELL_TYPES}
                trial[cell][edge_index(source, node)] = one_hot(NONE)
                drop[source], drop_ci[source] = mean_confidence_interval(full - scores(trial))
                done += 1
                if progress is not None:
                    progress(done, total)
            kept = sorted(sorted(drop, key=lambda s: (-drop[s], s))[:2])
            edges.append(EdgeChoice(cell, node, kept, drop, drop_ci))
            pairs.extend((OPS[int(z[cell][edge_index(s, node)].argmax())], s) for s in kept)
        cells[cell] = pairs
    concat = list(range(2, STEPS + 2))
    return Genotype(cells["normal"], concat, cells["reduce"], list(concat)), decisions, edges


def derive_by_evidence(run_dir, tasks=20, split="val", seed=0, samples=1, batch=10, which="last", prior="alpha",
                       finetune=0, finetune_lr=None, device="cpu", progress=None):
    """Derive a fit run's cell by held-out evidence (module docstring).

    Args:
        run_dir: a fit run folder; which: its checkpoint.
        tasks: N validation tasks every decision is scored on (task i of a sampler seeded
            with ``seed``), in batches of ``batch``; split: "val" (default) or "test".
        seed: the tasks, the order of the edges and the sampling noise.
        samples: posterior draws per prediction.
        prior: "alpha" (the run's softmax(alpha)) or "uniform" for the reported posteriors.
        finetune: SVI steps on the weights after each op decision (0: none), at
            ``finetune_lr`` (default: the run's meta_lr), on training tasks.

    Returns:
        :class:`EvidenceDerivation`.
    """
    if isinstance(finetune, bool) or not isinstance(finetune, int) or finetune < 0:
        raise ConfigError(f"finetune={finetune!r}: expected an integer >= 0")
    t0 = time.perf_counter()
    h = held_out(run_dir, tasks, split, seed, batch, which, device)
    tuner = None
    if finetune:
        train, _ = task_samplers(h.cfg, h.data, torch.device(device))
        tuner = weight_finetuner(h.meta, h.cfg, train, finetune, finetune_lr or h.cfg.meta_lr, seed, h.kl_weight)
    genotype, decisions, edges = evidence_derivation(h.meta, h.task_batches, h.cfg.inner_steps, h.tau, h.kl_weight,
                                                     samples, seed, prior, tuner, progress)
    return EvidenceDerivation(genotype, decisions, edges, tasks, seed, prior, finetune, time.perf_counter() - t0)
