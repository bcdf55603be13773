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
import os
from typing import NamedTuple, Optional

import torch

from ..data import SELECT_ON, TaskSampler
from ..data.protocol import held_out_split
from ..errors import ConfigError
from ..models import Genotype, save_genotype
from ..models.derivation import ChosenEdge, chosen_edges_table, derive_genotype, format_edges_table
from ..training.loop import run_device
from ..training.search import load_fit_state
from ..viz.cells import plot_genotype
from .posterior import AdaptedPosterior

__all__ = ["ChosenEdge", "DerivedCell", "chosen_edges_table", "derive_cell", "derive_genotype",
           "format_edges_table", "task_edge_probs"]


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
    """
    iteration = cfg.iterations if iteration is None else max(int(iteration), 1)
    sampler = TaskSampler(data.split(held_out_split(data, which_split)), cfg.ways, cfg.shots, cfg.queries, seed=int(task_seed),
                          device=meta.mu.device, image_size=cfg.image_size)
    task = sampler.task(0)
    post = AdaptedPosterior.from_schedule(meta, cfg, iteration, task.support_x, task.support_y, seed=int(task_seed))
    return tuple(p.detach() for p in post.probs)


def derive_cell(run_dir, task_seed=None, out=None, plot=True, which="last", task_split="val", device=None):
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
        device: where the task posterior is adapted (default: where the run trains, a run
            made on the CPU on the CPU; :func:`~bayesnas.training.loop.run_device`).

    Returns:
        :class:`DerivedCell`.
    """
    if task_split not in SELECT_ON:
        raise ConfigError(f"task_split={task_split!r}: expected one of {', '.join(SELECT_ON)}")
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
                       task_split)
