"""Scoring discrete cells with a fit run's meta-network (weight-sharing evaluation).

A discrete cell fixes the architecture of the search supernet: on each of its kept edges
the edge weight is one-hot on the cell's op, every other edge is one-hot on ``none``
(contributes nothing). For each of N held-out tasks (the validation classes by default),
the guide adapts the weight posterior on the support set with the cell fixed (the run's
inner steps, temperature and KL weight at its last iteration) and the cell is scored on
the query set by the posterior predictive: mean log-likelihood of the true labels and
accuracy. Every cell sees the same tasks and the same sampling noise, so differences
between cells are paired per task.

This answers whether a decision read from the meta-network can work at all: if these
scores do not rank cells like their retrained accuracies (:func:`rank_correlation`), no
derivation from the meta-network can. It also gives weight-sharing random search: score
many sampled cells, retrain the best.

Usage::

    result = score_cells("runs/omniglot", {"darts": "darts_v2", "mine": "runs/omniglot"}, tasks=100)
    print(format_scores(result))
    result.best().label
"""
import math
import time
from typing import List, NamedTuple, Optional

import numpy as np
import torch

from ..data import TaskSampler
from ..data.protocol import SELECT_ON, held_out_split
from ..errors import ConfigError
from ..inference import adapt, adapt_held_out, elbo_terms, predictive
from ..models import (
    NUM_EDGES,
    NUM_OPS,
    OPS,
    discrete_cells,
    edge_index,
    genotype_from_dict,
    genotype_to_dict,
    named_genotype,
)
from ..rng import seeded
from ..training.loop import task_samplers
from ..training.schedules import kl_weight, temperature
from ..training.search import load_fit_state
from .compare import architectures
from .evaluate import mean_confidence_interval

__all__ = ["CellScore", "ScoreResult", "RankCorrelation", "cell_edge_weights", "score_cells", "rank_correlation",
           "kendall_tau", "spearman_rho", "format_scores", "score_tasks", "architecture_scores", "held_out",
           "HeldOut", "weight_finetuner"]


def cell_edge_weights(genotype):
    """The fixed edge weights of a discrete cell pair: ``(z_normal, z_reduce)``, each ``[14, 10]``.

    A kept edge ``(op, source)`` of node k is one-hot on ``op``; every other edge is one-hot
    on ``none``. ``genotype``: a :class:`~bayesnas.models.Genotype` or its dict.
    """
    g = genotype_from_dict(genotype) if isinstance(genotype, dict) else genotype
    out = []
    for pairs in (g.normal, g.reduce):
        z = torch.zeros(NUM_EDGES, NUM_OPS)
        z[:, OPS.index("none")] = 1.0
        for i, (op, source) in enumerate(pairs):
            row = edge_index(int(source), i // 2)
            z[row] = 0.0
            z[row, OPS.index(op)] = 1.0
        out.append(z)
    return tuple(out)


class CellScore(NamedTuple):
    """One cell's score: label, its genotype (dict), per-task query log-likelihood per point and
    accuracy (``[N]`` lists), their means and 95% CI half-widths over tasks."""

    label: str
    genotype: dict
    loglik: List[float]
    accuracy: List[float]
    mean_loglik: float
    loglik_ci95: float
    mean_accuracy: float
    accuracy_ci95: float


class ScoreResult(NamedTuple):
    """What :func:`score_cells` returns: the scores in input order and the protocol used."""

    run_dir: str
    scores: List[CellScore]
    tasks: int
    split: str
    seed: int
    samples: int
    iteration: int
    seconds: float
    finetune: int = 0

    def best(self, by="loglik"):
        """The highest-scoring cell by mean query log-likelihood ("loglik") or accuracy ("accuracy")."""
        key = {"loglik": lambda s: s.mean_loglik, "accuracy": lambda s: s.mean_accuracy}[by]
        return max(self.scores, key=key)

    def to_dict(self):
        return {"run_dir": self.run_dir, "tasks": self.tasks, "split": self.split, "seed": self.seed,
                "samples": self.samples, "iteration": self.iteration, "seconds": round(self.seconds, 1),
                "finetune": self.finetune, "scores": [s._asdict() for s in self.scores]}


def _cells(cells, random_cells, random_seed):
    """Labelled genotype dicts, random cells labelled and drawn as ``compare`` draws them
    (so ``random-3`` here is ``random-3`` there); Conv-4 is not a cell and is refused."""
    if not cells and not random_cells:
        raise ConfigError("nothing to score: give cells or random_cells > 0")
    out = []
    for label, arch in architectures(cells, random_cells, (), random_seed):
        if arch == "conv4":
            raise ConfigError(f"{label}: Conv-4 is not a cell of the search space; give genotypes or 'darts_v2'")
        out.append((label, genotype_to_dict(named_genotype(arch)) if isinstance(arch, str) else arch))
    return out


def score_cells(run_dir, cells=(), tasks=100, split="val", seed=0, samples=4, batch=10, which="last",
                device="cpu", random_cells=0, random_seed=0, progress=None, finetune=0, finetune_lr=None):
    """Score discrete cells with a fit run's meta-network on the same held-out tasks.

    Args:
        run_dir: a folder written by :func:`~bayesnas.training.fit`.
        cells: genotype specs (JSON files, fit run folders holding genotype.json, Genotypes,
            genotype dicts, "darts_v2"), or a dict label -> spec.
        tasks: N held-out tasks, task i of a sampler seeded with ``seed`` (the same for every cell).
        split: "val" (default: scoring cells is model selection) or "test".
        seed: seed of the tasks and of the guide's sampling noise.
        samples: posterior draws averaged per prediction.
        batch: tasks adapted at once (memory vs speed; the same batches serve every cell).
        which: fit checkpoint, "last" or "best".
        random_cells: also score this many cells drawn uniformly from the space (the stream
            :func:`~bayesnas.analysis.compare.architectures` draws with ``random_seed``).
        progress: optional ``callable(done, total)`` told after each cell.
        finetune: before each cell is scored, the meta-network's weights (mu, rho) take this
            many first-order SVI steps with that cell fixed, on training tasks, at
            ``finetune_lr`` (default: the run's meta_lr); every cell starts from the run's
            weights and is tuned on the same training tasks (:func:`weight_finetuner`), and
            the weights are restored afterwards. 0 (default): scored as the run left them.

    Returns:
        :class:`ScoreResult`.
    """
    for name, value, low in (("samples", samples, 1), ("random_cells", random_cells, 0), ("finetune", finetune, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name}={value!r}: expected an integer >= {low}")
    labelled = _cells(cells, random_cells, random_seed)
    t0 = time.perf_counter()
    h = held_out(run_dir, tasks, split, seed, batch, which, device)
    tuner = None
    if finetune:
        train, _ = task_samplers(h.cfg, h.data, torch.device(device))
        tuner = weight_finetuner(h.meta, h.cfg, train, finetune, finetune_lr or h.cfg.meta_lr, seed, h.kl_weight,
                                 restart=True)
    scores = score_tasks(h.meta, labelled, h.task_batches, h.cfg.inner_steps, h.tau, h.kl_weight, samples, seed,
                         progress, finetune=tuner)
    return ScoreResult(str(run_dir), scores, tasks, split, int(seed), samples, h.iteration, time.perf_counter() - t0,
                       finetune)


def architecture_scores(meta, z_normal, z_reduce, task_batches, inner_steps, tau, kl_weight, samples=4, seed=0,
                        discrete=True):
    """Per-task held-out scores of one fixed architecture: ``(loglik [N], accuracy [N])`` (float64, CPU).

    ``z_normal``, ``z_reduce``: ``[14, 10]`` edge weights (one-hot rows for a discrete cell,
    any distribution for an undecided edge). Each batch's weights adapt by the guide's
    first-order steps with the architecture fixed; the score is the posterior predictive
    (``samples`` draws) on the query points: the mean log-probability of the true labels,
    and the accuracy. The sampling noise restarts from ``seed``, so two architectures scored
    on the same batches see the same draws (paired).

    ``discrete``: let the supernet compute only the nonzero (edge, op) pairs of a cell type
    whose edge weights are one-hot, or nearly so (:func:`~bayesnas.models.discrete_cells`; the
    same scores up to float rounding, several times faster for a discrete cell); False
    computes every op of every edge.
    """
    device = meta.mu.device
    z_normal, z_reduce = (torch.as_tensor(z).to(device, meta.mu.dtype) for z in (z_normal, z_reduce))
    logliks, accs = [], []
    with seeded(int(seed), device), discrete_cells(discrete):
        for b in task_batches:
            n = b.support_x.shape[0]
            fixed = (z_normal.expand(n, -1, -1), z_reduce.expand(n, -1, -1))
            q = adapt_held_out(meta, b.support_x, b.support_y, inner_steps, tau, kl_weight=kl_weight,
                               edge_weights=fixed)
            probs = predictive(meta, q, b.query_x, samples, tau, False, edge_weights=fixed).mean(0)
            true = probs.gather(-1, b.query_y[..., None])[..., 0]
            logliks.append(true.clamp_min(torch.finfo(true.dtype).tiny).log().mean(-1))
            accs.append((probs.argmax(-1) == b.query_y).to(probs.dtype).mean(-1))
    return torch.cat(logliks).cpu().double(), torch.cat(accs).cpu().double()


def score_tasks(meta, cells, task_batches, inner_steps, tau, kl_weight, samples=4, seed=0, progress=None,
                discrete=True, finetune=None):
    """The core of :func:`score_cells` for a MetaNetwork in hand.

    Args:
        meta: a :class:`~bayesnas.inference.MetaNetwork`; cells: ``[(label, genotype dict)]``;
        task_batches: batches with ``support_x [T, n_s, ...]``, ``support_y``, ``query_x``,
            ``query_y`` (a sampler's Task), the same for every cell;
        inner_steps, tau, kl_weight: the guide's steps (first order), as in training;
        samples: posterior draws per prediction; seed: the sampling noise, restarted per
            cell so every cell sees the same draws (:func:`architecture_scores`).
        discrete: compute only each cell's kept edges (:func:`architecture_scores`).
        finetune: optional ``callable(z_normal, z_reduce)`` run with each cell's edge weights
            before it is scored (:func:`weight_finetuner`); the weights it changes (mu, rho)
            are restored after the cell, so every cell starts from the same meta-network.

    Returns:
        list of :class:`CellScore`, in the order of ``cells``.
    """
    scores = []
    for done, (label, genotype) in enumerate(cells, 1):
        z = cell_edge_weights(genotype)
        saved = [t.detach().clone() for t in (meta.mu, meta.rho)] if finetune is not None else None
        try:
            if finetune is not None:
                with discrete_cells(discrete):
                    finetune(*z)
            loglik, acc = architecture_scores(meta, *z, task_batches, inner_steps, tau, kl_weight, samples, seed,
                                              discrete)
        finally:
            if saved is not None:
                with torch.no_grad():
                    meta.mu.copy_(saved[0])
                    meta.rho.copy_(saved[1])
        scores.append(CellScore(label, genotype, loglik.tolist(), acc.tolist(), *mean_confidence_interval(loglik),
                                *mean_confidence_interval(acc)))
        if progress is not None:
            progress(done, len(cells))
    return scores


def weight_finetuner(meta, cfg, sampler, steps, lr, seed, kl_weight, restart=False):
    """``finetune(z_normal, z_reduce)``: ``steps`` first-order SVI steps on the weights (mu, rho) with
    the architecture fixed to the given ``[14, 10]`` edge weights, on training tasks.

    The tasks are ``cfg.tasks`` at a time from ``sampler``, starting at task ``seed * 1000``;
    Adam at ``lr``. ``restart``: every call starts from those same tasks with a fresh Adam
    and the same sampling noise (a fork of torch's streams seeded with ``seed``), so cells are
    tuned alike and their scores stay paired; otherwise calls continue one task stream, one
    Adam and the global streams (a sequence of decisions). Alpha is not touched.
    """
    state = {}

    def start():
        state["optimiser"] = torch.optim.Adam([meta.mu, meta.rho], lr=lr)
        state["next"] = seed * 1000

    start()

    def finetune(z_normal, z_reduce):
        if restart:
            start()
        with seeded(int(seed) if restart else None, meta.mu.device):
            _steps(z_normal, z_reduce)
        meta.zero_grad(set_to_none=True)

    def _steps(z_normal, z_reduce):
        for _ in range(steps):
            first = state["next"]
            state["next"] += cfg.tasks
            batch = sampler.batch(range(first, first + cfg.tasks))
            n = cfg.tasks
            fixed = tuple(torch.as_tensor(z).to(meta.mu.device, meta.mu.dtype).expand(n, -1, -1)
                          for z in (z_normal, z_reduce))
            state["optimiser"].zero_grad(set_to_none=True)
            # the architecture is fixed, so no z is sampled and the temperature plays no part
            q = adapt(meta, batch.support_x, batch.support_y, cfg.inner_steps, 1.0, kl_weight=kl_weight,
                      first_order=True, edge_weights=fixed)
            terms = elbo_terms(meta, batch.query_x, batch.query_y, q, 1.0, edge_weights=fixed)
            loss = -terms.elbo(kl_weight).mean() / batch.query_y.shape[1]
            loss.backward()
            state["optimiser"].step()

    return finetune


class HeldOut(NamedTuple):
    """A fit run's meta-network with what scoring on held-out tasks needs (:func:`held_out`)."""

    cfg: object
    meta: object
    data: object
    iteration: int
    tau: float
    kl_weight: float
    task_batches: list


def held_out(run_dir, tasks, split="val", seed=0, batch=10, which="last", device="cpu"):
    """Load a fit run for scoring: its config, meta-network (on ``device``) and data, the temperature and
    KL weight of its schedule at the checkpoint, and ``tasks`` tasks of ``split`` (task i of a
    sampler seeded with ``seed``) in batches of ``batch``."""
    if split not in SELECT_ON:
        raise ConfigError(f"split={split!r}: expected one of {', '.join(SELECT_ON)}")
    for name, value in (("tasks", tasks), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r}: expected an integer >= 1")
    cfg, meta, data, state = load_fit_state(run_dir, which)
    device = torch.device(device)
    meta = meta.to(device).eval()
    iteration = max(int(state["iteration"]), 1)
    sampler = TaskSampler(data.split(held_out_split(data, split)), cfg.ways, cfg.shots, cfg.queries, seed=int(seed),
                          device=device, image_size=cfg.image_size)
    batches = [sampler.batch(range(i, min(i + batch, tasks))) for i in range(0, tasks, batch)]
    return HeldOut(cfg, meta, data, iteration, temperature(cfg, iteration), kl_weight(cfg, iteration), batches)


def _ranks(values):
    """Average ranks (1-based; ties share their mean rank)."""
    a = np.asarray(values, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a))
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and a[order[j + 1]] == a[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman_rho(x, y):
    """Spearman's rank correlation (Pearson correlation of average ranks)."""
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def kendall_tau(x, y):
    """Kendall's tau-b: ``(concordant - discordant) / sqrt((n0 - ties_x) (n0 - ties_y))`` over the
    ``n0`` pairs, ties in either variable accounted for."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    upper = np.triu_indices(len(x), 1)
    dx = np.sign(x[:, None] - x[None, :])[upper]
    dy = np.sign(y[:, None] - y[None, :])[upper]
    denom = math.sqrt(float(np.count_nonzero(dx)) * float(np.count_nonzero(dy)))
    return float((dx * dy).sum() / denom) if denom > 0 else float("nan")


class RankCorrelation(NamedTuple):
    """Kendall's tau-b and Spearman's rho of two equally long sequences, with their length and a
    permutation p-value for tau (the share of random pairings at least as large in absolute value)."""

    kendall: float
    spearman: float
    n: int
    kendall_p: Optional[float]


def rank_correlation(x, y, permutations=10000, seed=0):
    """Rank agreement of scores ``x`` and accuracies ``y`` (:class:`RankCorrelation`)."""
    x, y = list(x), list(y)
    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"rank_correlation needs two sequences of the same length >= 3, got {len(x)} and {len(y)}")
    tau = kendall_tau(x, y)
    p = None
    if permutations:
        rng = np.random.default_rng(seed)
        y_arr = np.asarray(y)
        null = [abs(kendall_tau(x, rng.permutation(y_arr))) for _ in range(permutations)]
        p = float((np.sum(np.asarray(null) >= abs(tau) - 1e-12) + 1) / (permutations + 1))
    return RankCorrelation(tau, spearman_rho(x, y), len(x), p)


def format_scores(result):
    """A plain-text table of a :class:`ScoreResult`, best log-likelihood first."""
    lines = [f"{result.tasks} {result.split} tasks, seed {result.seed}, {result.samples} posterior samples, "
             f"meta-network of {result.run_dir} at iteration {result.iteration}",
             f"{'cell':<24} {'query log-lik':>18} {'accuracy':>18}"]
    for s in sorted(result.scores, key=lambda s: -s.mean_loglik):
        lines.append(f"{s.label:<24} {s.mean_loglik:>9.4f} ± {s.loglik_ci95:<6.4f} "
                     f"{100 * s.mean_accuracy:>8.2f}% ± {100 * s.accuracy_ci95:.2f}%")
    return "\n".join(lines)

