"""Deriving the cell of a fit run: from its meta-level alpha, or from one task's adapted posterior.

The rule itself (paper, appendix B) is :func:`~bayesnas.models.derivation.derive_genotype`.
The probabilities come from the meta-level alpha of a fit run (``softmax(alpha)``,
default) or from a task's adapted posterior ``softmax(phi)`` (``--task-seed``). That task
comes from the validation split by default: choosing a cell is model selection, and the
test classes stay unseen until evaluation.

Usage::

    cell = derive_cell("runs/fit-a")
    print(format_edges_table(cell.table))
"""
import logging
import os
import random
from typing import Any, Callable, NamedTuple, Optional

import torch

from ..config import check_seed
from ..data import SELECT_ON, TaskSampler
from ..data.protocol import held_out_split
from ..errors import ConfigError
from ..fileio import check_writable, write_json
from ..models import CELL_TYPES, NUM_EDGES, NUM_OPS, OPS, Genotype, genotype_from_dict, genotype_to_dict, save_genotype
from ..models.derivation import ChosenEdge, chosen_edges_table, derive_genotype, format_edges_table
from ..models.genotypes import random_genotype
from ..training.card import fit_cell_warning
from ..training.diagnostics import undecided_warning
from ..training.loop import run_device
from ..training.search import load_fit_state
from ..viz.cells import plot_genotype
from .evaluate import mean_confidence_interval
from .evidence import derive_by_evidence
from .posterior import AdaptedPosterior
from .score import cell_edge_weights, score_cells

logger = logging.getLogger(__name__)

__all__ = ["ChosenEdge", "DerivedCell", "chosen_edges_table", "derive_by_score", "derive_cell", "derive_genotype",
           "format_edges_table", "score_candidates", "task_edge_probs"]


class DerivedCell(NamedTuple):
    """What :func:`derive_cell` returns.

    genotype: the derived Genotype; table: its :class:`ChosenEdge` rows; probs_normal,
    probs_reduce: the ``[14, 10]`` probabilities it came from; genotype_path: the JSON
    written; plot_path: the picture written (None without a plot); task_seed: the task's
    seed (None for the meta-level alpha); task_split: the split of that task (None for
    the meta-level alpha); warning: why the cell is noise (alpha never stepped, or the
    posterior barely left its prior), None when nothing says so; it is logged too;
    evidence: the :class:`~bayesnas.analysis.evidence.EvidenceDerivation` (``by="evidence"``);
    scores: the candidates' :class:`~bayesnas.analysis.score.ScoreResult` (``by="score"``,
    whose cell has no edge probabilities: ``table`` is empty and the probabilities are
    the cell's one-hot edge weights).
    """

    genotype: Genotype
    table: list
    probs_normal: torch.Tensor
    probs_reduce: torch.Tensor
    genotype_path: str
    plot_path: Optional[str]
    task_seed: Optional[int]
    task_split: Optional[str] = None
    warning: Optional[str] = None
    evidence: Optional[Any] = None
    scores: Optional[Any] = None


def task_edge_probs(meta, cfg, data, task_seed, iteration=None, which_split="val"):
    """Edge probabilities adapted to one task's support set: ``([14, 10], [14, 10])``.

    The task is task 0 of a sampler over ``which_split`` (the validation classes by
    default) seeded with ``task_seed`` (the fit run's ways and shots); the guide takes the
    run's ``inner_steps`` with the temperature and KL weight of the training schedule at ``iteration`` (default: the
    run's last), exactly as :meth:`bayesnas.Run.task_posterior` does. The guide's own
    randomness is seeded with ``task_seed`` too, so the same seed always gives the same
    probabilities.
    """
    iteration = cfg.iterations if iteration is None else max(int(iteration), 1)
    sampler = TaskSampler(data.split(held_out_split(data, which_split)), cfg.ways, cfg.shots, cfg.queries,
                          seed=int(task_seed), device=meta.mu.device, image_size=cfg.image_size)
    task = sampler.task(0)
    post = AdaptedPosterior.from_schedule(meta, cfg, iteration, task.support_x, task.support_y, seed=int(task_seed))
    return tuple(p.detach() for p in post.probs)


def derive_cell(run_dir: str | os.PathLike, task_seed: int | None = None, out: str | os.PathLike | None = None,
                plot: bool | str | os.PathLike = True, which: str = "last",
                task_split: str | None = "val", by: str = "alpha", evidence_tasks: int = 20, finetune: int = 0,
                prior: str = "alpha", seed: int = 0, progress: Optional[Callable[[int, int], None]] = None,
                device: str | None = None, candidates: int = 50) -> DerivedCell:
    """Derive the cell of a ``bayesnas fit`` run, write it as JSON and draw it.

    Args:
        run_dir: a folder written by :func:`~bayesnas.training.search.fit`.
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
        by: "alpha" (the paper's rule on alpha's probabilities), "evidence" (every op and
            edge chosen by the held-out log-likelihood of the adapted meta-network,
            :func:`~bayesnas.analysis.evidence.derive_by_evidence`, on ``evidence_tasks``
            validation tasks drawn with ``seed``, ``finetune`` SVI steps after each decision,
            posteriors reported against ``prior``; written to ``RUN_DIR/genotype-evidence.json``
            by default, every decision to ``evidence.json`` beside it) or "score"
            (weight-sharing random search, :func:`derive_by_score`: the alpha cell and
            ``candidates`` random cells scored on ``evidence_tasks`` validation tasks, the most
            accurate kept; ``RUN_DIR/genotype-score.json`` and ``score.json``).
        progress: optional ``callable(done, total)`` (evidence derivation, score derivation).
        candidates: with ``by="score"``, how many random cells are scored beside alpha's.
        device: where the task posterior (or the evidence) is computed (default: where the
            run trains, a run made on the CPU on the CPU; :func:`~bayesnas.training.loop.run_device`).

    Returns:
        :class:`DerivedCell`.
    """
    if task_split not in SELECT_ON:
        raise ConfigError(f"task_split={task_split!r}: expected one of {', '.join(SELECT_ON)}")
    if by not in DERIVATIONS:
        raise ConfigError(f"by={by!r}: expected one of {', '.join(DERIVATIONS)}")
    if by == "evidence":
        if task_seed is not None:
            raise ConfigError("by='evidence' scores many validation tasks; it takes no task_seed")
        check_seed(seed, "seed")
        return _derive_by_evidence(run_dir, out, plot, which, evidence_tasks, finetune, prior, seed, progress,
                                   run_device(run_dir, device))
    if by == "score":
        if task_seed is not None:
            raise ConfigError("by='score' scores cells on many validation tasks; it takes no task_seed")
        check_seed(seed, "seed")
        return derive_by_score(run_dir, candidates=candidates, tasks=evidence_tasks, seed=seed, out=out, plot=plot,
                               which=which, progress=progress, device=device)
    if task_seed is not None:
        check_seed(task_seed, "task_seed")
    cfg, meta, data, state = load_fit_state(run_dir, which=which)
    meta = meta.to(run_device(run_dir, device))
    if task_seed is None:
        with torch.no_grad():
            pn, pr = meta.alpha_normal.softmax(-1), meta.alpha_reduce.softmax(-1)
        default_name = "genotype.json"
        task_split = None
    else:
        pn, pr = task_edge_probs(meta, cfg, data, task_seed, iteration=state["iteration"], which_split=task_split)
        default_name = f"genotype-task{int(task_seed)}{'-test' if task_split == 'test' else ''}.json"
    if task_seed is None:
        warning = fit_cell_warning(cfg.to_dict(), state)
    else:  # a task's posterior starts from alpha: one never stepped is no prior to adapt
        warning = undecided_warning(int(state["iteration"]), cfg.arch_warmup, cfg.arch_lr)
    if warning is not None:
        logger.warning("%s: %s", os.fspath(run_dir), warning)
    genotype = derive_genotype(pn, pr)
    table = chosen_edges_table(pn, pr, genotype)
    path = os.fspath(out) if out is not None else os.path.join(os.fspath(run_dir), default_name)
    save_genotype(genotype, path)
    plot_path = None
    if plot:
        plot_path = os.path.splitext(path)[0] + ".png" if plot is True else os.fspath(plot)
        where = "meta-level alpha" if task_seed is None else f"adapted to {task_split} task seed {task_seed}"
        plot_genotype(genotype, path=plot_path, table=table,
                      title=f"{os.path.basename(os.path.normpath(os.fspath(run_dir)))}: {where}")
    return DerivedCell(genotype, table, pn.detach().cpu(), pr.detach().cpu(), path, plot_path, task_seed,
                       task_split, warning)


#: the values of derive_cell's ``by``
DERIVATIONS = ("alpha", "evidence", "score")


def score_candidates(run_dir, candidates, seed=0, which="last"):
    """The cells :func:`derive_by_score` scores: ``{"alpha": alpha's cell, "candidate-1": ..., ...}``.

    The random cells are drawn uniformly from the space (two distinct inputs per node, a
    non-``none`` op on each) from a stream of their own seeded by ``seed``: not compare's
    random-cell stream, so a searched cell is never one of the comparison's random cells by
    construction.
    """
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 0:
        raise ConfigError(f"candidates={candidates!r}: expected an integer >= 0")
    _, meta, _, _ = load_fit_state(run_dir, which=which)
    with torch.no_grad():
        alpha_cell = derive_genotype(meta.alpha_normal.softmax(-1), meta.alpha_reduce.softmax(-1))
    cells = {"alpha": genotype_to_dict(alpha_cell)}
    rng = random.Random(f"bayesnas-score-candidates-{int(seed)}")
    for i in range(candidates):
        cells[f"candidate-{i + 1}"] = genotype_to_dict(random_genotype(rng))
    return cells


def by_score(scores):
    """Scored cells best first, as :func:`derive_by_score` ranks them: mean query accuracy, ties by
    log-likelihood."""
    return sorted(scores, key=lambda s: (s.mean_accuracy, s.mean_loglik), reverse=True)


def derive_by_score(run_dir, candidates=50, tasks=50, seed=0, out=None, plot=True, which="last", progress=None,
                    device=None):
    """Weight-sharing random search: the candidate cell the meta-network scores best.

    Every cell of :func:`score_candidates` (alpha's cell and ``candidates`` random cells)
    fixes the supernet's architecture and is scored on the same ``tasks`` validation tasks
    (:func:`~bayesnas.analysis.score.score_cells`, tasks and sampling noise seeded by
    ``seed``); the cell with the highest mean query accuracy is kept (ties: log-likelihood).
    Accuracy, not log-likelihood, because it ranked retrained cells better on validation
    (docs/search_experiments.md). Writes the genotype (default ``RUN_DIR/genotype-score.json``)
    and ``score.json`` beside it: every candidate's per-task scores, and the kept cell's paired
    difference from the runner-up with its 95% CI over tasks.

    Returns:
        :class:`DerivedCell` whose ``scores`` is the :class:`~bayesnas.analysis.score.ScoreResult`.
    """
    path = os.fspath(out) if out is not None else os.path.join(os.fspath(run_dir), "genotype-score.json")
    check_writable(path)  # before the scoring, not after it
    check_writable(os.path.join(os.path.dirname(os.path.abspath(path)), "score.json"))
    cells = score_candidates(run_dir, candidates, seed, which)
    result = score_cells(run_dir, cells, tasks=tasks, split="val", seed=seed, which=which,
                         device=run_device(run_dir, device), progress=progress)
    ranked = by_score(result.scores)
    best = ranked[0]
    runner_up = ranked[1] if len(ranked) > 1 else None
    difference = ci95 = None
    if runner_up is not None:
        diff = torch.tensor(best.accuracy, dtype=torch.float64) - torch.tensor(runner_up.accuracy, dtype=torch.float64)
        difference, ci95 = mean_confidence_interval(diff)
    genotype = genotype_from_dict(best.genotype)
    save_genotype(genotype, path)
    write_json(os.path.join(os.path.dirname(os.path.abspath(path)), "score.json"), {
        "genotype": os.path.basename(path), "kept": best.label, "by": "accuracy",
        "runner_up": None if runner_up is None else runner_up.label, "difference": difference, "ci95": ci95,
        **result.to_dict()})
    plot_path = None
    if plot:
        plot_path = os.path.splitext(path)[0] + ".png" if plot is True else os.fspath(plot)
        plot_genotype(genotype, path=plot_path,
                      title=f"{os.path.basename(os.path.normpath(os.fspath(run_dir)))}: best of "
                            f"{len(cells)} scored cells ({best.label})")
    # no edge probabilities: the cell's own one-hot edge weights stand in for them, and no table
    z_normal, z_reduce = cell_edge_weights(genotype)
    return DerivedCell(genotype, [], z_normal, z_reduce, path, plot_path, None, None, scores=result)


def _derive_by_evidence(run_dir, out, plot, which, tasks, finetune, prior, seed, progress, device):
    path = os.fspath(out) if out is not None else os.path.join(os.fspath(run_dir), "genotype-evidence.json")
    check_writable(path)  # before the evidence, not after it
    check_writable(os.path.join(os.path.dirname(os.path.abspath(path)), "evidence.json"))
    result = derive_by_evidence(run_dir, tasks=tasks, seed=seed, which=which, prior=prior, finetune=finetune,
                                progress=progress, device=device)
    probs = {c: torch.zeros(NUM_EDGES, NUM_OPS, dtype=torch.float64) for c in CELL_TYPES}
    for d in result.decisions:
        for op, p in d.posterior.items():
            probs[d.cell][d.edge, OPS.index(op)] = p
    table = chosen_edges_table(probs["normal"], probs["reduce"], result.genotype)
    save_genotype(result.genotype, path)
    write_json(os.path.join(os.path.dirname(os.path.abspath(path)), "evidence.json"), {
        "genotype": os.path.basename(path), "tasks": result.tasks, "seed": result.seed, "prior": result.prior,
        "finetune": result.finetune, "seconds": round(result.seconds, 1),
        "decisions": [d._asdict() for d in result.decisions],
        "edges": [{**e._asdict(), "drop": {str(k): v for k, v in e.drop.items()},
                   "drop_ci95": {str(k): v for k, v in e.drop_ci95.items()}} for e in result.edges]})
    plot_path = None
    if plot:
        plot_path = os.path.splitext(path)[0] + ".png" if plot is True else os.fspath(plot)
        plot_genotype(result.genotype, path=plot_path, table=table,
                      title=f"{os.path.basename(os.path.normpath(os.fspath(run_dir)))}: by held-out evidence")
    return DerivedCell(result.genotype, table, probs["normal"], probs["reduce"], path, plot_path, None, None,
                       evidence=result)
