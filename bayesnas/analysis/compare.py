"""``compare``: several architectures retrained and evaluated under one identical budget.

How users judge whether a search found something (the paper's Table 1): the derived
cell(s), DARTS_V2, Conv-4 and R cells drawn uniformly from the same search space are each
retrained with the same :class:`~bayesnas.config.RetrainConfig` (same iterations,
inner loop, tasks and depth) for every seed of the same seed set, then evaluated on the
same seeded test tasks. What is compared, on which tasks and seeds, at which widths and for
how long is a :class:`~bayesnas.config.CompareSettings` (the ``compare`` command's flags).
Training time is the summed step time of an architecture's runs divided by the number of
seeds (validation excluded).

This module is the orchestration; the parts are modules of their own:

- :mod:`~bayesnas.analysis.labels`: the rows and their labels (:func:`architectures`);
- :mod:`~bayesnas.analysis.stats`: means and CIs over test tasks of seed-averaged accuracies
  (:func:`over_tasks`), paired differences (:func:`paired_difference`);
- :mod:`~bayesnas.analysis.widths`: each row's width at one parameter count (:func:`row_widths`);
- :mod:`~bayesnas.analysis.plateau`: the plateau rule (:func:`train_to_plateau`);
- :mod:`~bayesnas.analysis.jobs`: the runs, here or in worker processes (:func:`run_jobs`).

Every run keeps its own folder ``OUT/<label>-seed<S>``; running ``compare`` again with the
same ``out`` continues unfinished runs and reuses finished ones, and their evaluations
when the test tasks and the checkpoint are unchanged.

Usage::

    settings = CompareSettings(seeds=(0, 1), random_cells=5, eval_tasks=600)
    result = compare(["runs/fit-a"], config=RetrainConfig(iterations=800), settings=settings)
    print(format_compare_table(result))
"""
import dataclasses
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

from ..config import CompareSettings, RetrainConfig, from_dict
from ..data import open_data, resolve_rotations
from ..data.protocol import TEST_SELECTION_WARNING
from ..errors import ConfigError
from ..fileio import make_folder, write_json
from ..training.loop import session_config
from ..training.rundir import default_run_path
from ..training.tensorboard_logger import summary_writer_class
from ..viz.compare import plot_comparison
from .jobs import Job, init_worker, run_job, run_jobs, worker_gpus
from .labels import architectures
from .plateau import (
    EXTEND_BY,
    PLATEAU_LAG,
    PLATEAU_RISE,
    PLATEAU_WINDOW,
    budget_text,
    check_plateau_budget,
    train_to_plateau,
    val_curve,
    validation_rise,
)
from .pool import (
    Standing,
    check_pool,
    format_standings,
    load_pool,
    pool_from_results,
    protocol_differences,
    protocol_of,
    standing,
)
from .pool import save_pool as save_pool_file
from .stats import over_tasks, paired_difference
from .widths import MAX_CHANNELS, PARAM_TOLERANCE, count_retrain_parameters, matched_channels, row_widths

__all__ = [
    "CompareResult", "CompareRow", "CompareSettings", "compare", "format_compare_table",
    # the parts, importable from here as before the split
    "architectures", "over_tasks", "paired_difference", "matched_channels", "row_widths", "count_retrain_parameters",
    "PARAM_TOLERANCE", "MAX_CHANNELS", "validation_rise", "train_to_plateau", "val_curve", "budget_text",
    "PLATEAU_WINDOW", "PLATEAU_LAG", "PLATEAU_RISE", "EXTEND_BY", "Job", "run_job", "run_jobs", "worker_gpus",
    "init_worker",
]


@dataclass
class CompareRow:
    """One architecture of a comparison.

    label: its name in the table (``name`` in the JSON); arch: the config value ("conv4",
    "darts_v2" or a genotype dict); accuracy, ci95: mean and 95% CI over the test tasks of
    each task's accuracy averaged over the seeds, in [0, 1] (:func:`over_tasks`); difference,
    difference_ci95: the paired difference from the reference row (:func:`paired_difference`;
    0 for the reference itself; ``paired_difference`` in the JSON); val_acc: mean over seeds
    of the best validation accuracy; parameters: trainable scalars; channels: the width it
    was trained at; train_seconds: mean training time per seed; run_dirs: one retrain folder
    per seed; accuracies: the per-task seed means ``[n]``, in task order; val_curves: each
    seed's validation accuracy by iteration from its ``metrics.csv``,
    ``{"<seed>": [[iteration, val_acc], ...]}``; val_rise: :func:`validation_rise` of those
    curves (None: too short to tell); iterations: each seed's training budget (the configured
    one, or more when the comparison trains until the plateau, :func:`train_to_plateau`);
    kind: "searched" (a genotype given), "baseline" (a named architecture) or "random" (a cell
    drawn from the search space), set by :func:`compare` from where the row came from, never
    from its label.
    """

    label: str
    arch: object
    accuracy: float
    ci95: float
    difference: float
    difference_ci95: float
    val_acc: float
    parameters: int
    channels: int
    train_seconds: float
    eval_seconds: float
    run_dirs: List[str] = field(default_factory=list)
    accuracies: List[float] = field(default_factory=list, repr=False)
    val_curves: Dict[str, List[List[float]]] = field(default_factory=dict, repr=False)
    val_rise: Optional[float] = None
    iterations: List[int] = field(default_factory=list)
    kind: str = "searched"


@dataclass
class CompareResult:
    """What :func:`compare` returns: one :class:`CompareRow` per architecture, and the shared budget.

    reference: the label differences are taken against (the first row); param_target: the
    trainable parameter count every row's width was matched to within ``param_tolerance``
    (None: matching off, every row at ``config["channels"]``); max_iterations, extend_by: the
    plateau rule's cap and step when runs were trained until validation plateaued (None: every
    run had ``config["iterations"]``); warnings: protocol warnings (checkpoints selected on the
    test classes); pool: with ``compare(pool=...)``, ``{"path", "size", "labels", "standings"}``:
    the pool's cells (their rows are in ``rows`` too) and each other row's
    :class:`~bayesnas.analysis.pool.Standing` as a dict.
    """

    rows: List[CompareRow]
    config: dict
    seeds: List[int]
    eval_tasks: int
    eval_inner_steps: int
    eval_seed: int
    out: str
    seconds: float
    reference: Optional[str] = None
    param_target: Optional[int] = None
    param_tolerance: float = PARAM_TOLERANCE
    max_iterations: Optional[int] = None
    extend_by: Optional[int] = None
    warnings: List[str] = field(default_factory=list)
    pool: Optional[dict] = None

    def to_dict(self):
        """JSON-ready: every field, and each row also as ``name`` and ``paired_difference``
        (``{"mean", "ci95", "against"}``), the names the comparison's readers look for."""
        d = asdict(self)
        for row in d["rows"]:
            row["name"] = row["label"]
            row["paired_difference"] = {"mean": row["difference"], "ci95": row["difference_ci95"],
                                        "against": self.reference}
        return d


def compare(genotypes: Any = (), config: RetrainConfig | dict | None = None, settings: CompareSettings | None = None,
            *, out: str | os.PathLike | None = None, json_out: str | os.PathLike | None = None, progress: bool = True,
            log: Callable[[str], Any] | None = None, tensorboard: bool = False, command: str | None = None,
            pool: str | os.PathLike | dict | None = None, save_pool: str | os.PathLike | None = None,
            eval_inner_steps: int | None = None, **overrides: Any) -> CompareResult:
    """Retrain and evaluate every architecture under one budget and seed set; a Table-1-like result.

    Args:
        genotypes: the searched cells (see :func:`architectures`).
        config: the shared :class:`RetrainConfig` (its ``arch``, ``seed`` and ``channels`` are
            set per run), or a dict of its fields.
        settings: the :class:`~bayesnas.config.CompareSettings` (rows, seeds, test tasks, widths,
            budget rule); ``**overrides`` are its fields as keywords, taking precedence
            (``compare(config=cfg, seeds=[0, 1], random_cells=0)``). In short: ``random_cells``
            random cells and ``baselines`` join the ``genotypes``; every architecture is trained
            once per seed of ``seeds``; ``eval_tasks`` test tasks of ``eval_seed``, the same for
            all; ``match_params`` gives each architecture the width at which its trainable
            parameter count is within ±10% of ``param_target`` (:func:`row_widths`); ``workers``
            runs at once, each in its own spawned process (each takes ``config.threads`` torch
            threads, or an equal share of the cores when that is 0; progress bars only with
            1); ``max_iterations`` trains every run until validation has plateaued
            (:func:`train_to_plateau`): ``config.iterations`` first, then ``extend_by`` more at
            a time while its :func:`validation_rise` is above :data:`PLATEAU_RISE`, at most
            ``max_iterations`` (each row's ``iterations`` says what it got).
        out: folder of the runs and of ``compare.json`` (default: a new ``runs/compare-<time>``).
        json_out: also write the JSON there.
        progress: progress bars.
        log: optional ``callable(str)`` told when each run ends.
        tensorboard: every retrain run writes TensorBoard event files to its own
            ``OUT/<label>-seed<S>/tensorboard/``.
        command: the command line recorded in each run's card (default: the retrain call).
        pool: a pool file of retrained random cells (:mod:`~bayesnas.analysis.pool`) made under
            this same protocol (config, test tasks, seeds, parameter target, plateau rule; a
            difference is a ConfigError naming it): its cells join the table without being
            retrained (a row of the same label and cell is taken from the pool, not trained),
            and every other row's standing in the pool is reported.
        save_pool: write the random cells of the result (the pool's included) as a pool file
            there (:func:`~bayesnas.analysis.pool.pool_from_results`): a pool grows by running
            with more random cells, ``pool`` and ``save_pool`` the same file.
        eval_inner_steps: test-time inner steps (default: the config's).

    Every width is chosen before the first run starts: a target no width of some
    architecture meets raises :class:`ConfigError` naming it, and nothing is written.
    Each run folder also keeps its evaluation (``evaluation.json``), shown in its run card.

    Returns:
        :class:`CompareResult` (also written to ``OUT/compare.json``, and drawn by
        :func:`~bayesnas.viz.compare.plot_comparison` in ``OUT/compare.png``).
    """
    s = _resolve_settings(settings, overrides)
    if tensorboard:
        summary_writer_class()  # a missing package stops the comparison before any run starts
    cfg, _ = session_config(None, RetrainConfig, config, None)
    data = open_data(cfg.data)
    # resolved once, so every run (and a rerun's check of the saved configs) states the same value
    cfg = dataclasses.replace(cfg, rotations=resolve_rotations(cfg.rotations, data))
    seeds = list(s.seeds)
    if s.max_iterations is not None:
        check_plateau_budget(s.max_iterations, s.extend_by, cfg.iterations)
    extend_by = None if s.max_iterations is None else s.extend_by
    archs = architectures(genotypes, s.random_cells, s.baselines, s.random_seed)
    target, widths = row_widths(archs, cfg, data.channels, data.image_size, s.match_params, s.param_target)
    eval_steps = cfg.test_inner_steps if eval_inner_steps is None else eval_inner_steps
    pool_path, pool = (None, None) if pool is None else _pool_for(pool, {
        "config": cfg.to_dict(), "eval_tasks": s.eval_tasks, "eval_seed": s.eval_seed, "eval_inner_steps": eval_steps,
        "seeds": seeds, "param_target": target, "param_tolerance": PARAM_TOLERANCE,
        "max_iterations": s.max_iterations, "extend_by": extend_by}, archs)
    pooled = {} if pool is None else {r["label"]: r for r in pool["rows"]}
    out = os.fspath(out) if out is not None else default_run_path("compare")
    make_folder(out)
    t0 = time.perf_counter()
    # the width is part of each run's config, so a rerun finds and reuses the finished run
    jobs = [Job(label, arch, seed, dataclasses.replace(cfg, arch=arch, seed=seed, channels=channels),
                os.path.join(out, f"{label}-seed{seed}"), s.eval_tasks, eval_inner_steps, s.eval_seed,
                progress and s.workers == 1, tensorboard, command, s.max_iterations, s.extend_by)
            for (label, arch), (channels, _) in zip(archs, widths, strict=True) for seed in seeds
            if label not in pooled]
    runs = {}
    for done in run_jobs(jobs, s.workers, cfg.threads):
        runs[(done["label"], done["seed"])] = done
        if log is not None:
            log(f"{done['label']} seed {done['seed']}: {100 * done['accuracy']:.2f}% ± {100 * done['ci95']:.2f}% "
                f"({done['train_seconds']:.0f} s training)")
    rows: List[CompareRow] = []
    reference_accs = None
    first_random = len(archs) - s.random_cells  # architectures() lists the random cells last
    for index, ((label, arch), (channels, _)) in enumerate(zip(archs, widths, strict=True)):
        if label in pooled:
            continue
        mine = [runs[(label, seed)] for seed in seeds]
        accs = [r["accuracies"] for r in mine]
        mean, ci, per_task = over_tasks(accs)
        if reference_accs is None:
            reference_accs, diff, diff_ci = accs, 0.0, 0.0
        else:
            diff, diff_ci = paired_difference(accs, reference_accs)
        curves = {str(seed): r["curve"] for seed, r in zip(seeds, mine, strict=True)}
        rows.append(CompareRow(label, arch, mean, ci, diff, diff_ci, sum(r["val_acc"] for r in mine) / len(seeds),
                               mine[-1]["parameters"], channels, sum(r["train_seconds"] for r in mine) / len(seeds),
                               sum(r["eval_seconds"] for r in mine) / len(seeds), [r["path"] for r in mine],
                               per_task.tolist(), curves, validation_rise(curves), [r["iterations"] for r in mine],
                               kind="random" if index >= first_random else
                               "baseline" if isinstance(arch, str) else "searched"))
    pool_summary = None
    if pool is not None:
        standings = [standing(r.label, r.accuracies, pool)._asdict() for r in rows]
        for row in pool["rows"]:
            if reference_accs is None:  # every row of this comparison came from the pool
                reference_accs = row["accuracies"]
            diff, diff_ci = paired_difference(row["accuracies"], reference_accs)
            rows.append(_pool_row(row, diff, diff_ci))
        pool_summary = {"path": pool_path, "size": len(pool["rows"]), "labels": [r["label"] for r in pool["rows"]],
                        "standings": standings}
    result = CompareResult(rows=rows, config={k: v for k, v in cfg.to_dict().items() if k not in ("arch", "seed")},
                           seeds=seeds, eval_tasks=s.eval_tasks, eval_inner_steps=eval_steps, eval_seed=s.eval_seed,
                           out=out, seconds=time.perf_counter() - t0, reference=rows[0].label, param_target=target,
                           max_iterations=s.max_iterations, extend_by=extend_by,
                           warnings=[TEST_SELECTION_WARNING] if cfg.select_on == "test" else [], pool=pool_summary)
    write_json(os.path.join(out, "compare.json"), result.to_dict())
    plot_comparison(result.to_dict(), path=os.path.join(out, "compare.png"))
    if json_out is not None:
        write_json(json_out, result.to_dict())
    if save_pool is not None:
        save_pool_file(pool_from_results([result.to_dict()]), save_pool)
    return result


def _resolve_settings(settings, overrides):
    """``settings`` (default: :class:`CompareSettings`'s defaults) with ``overrides`` (its fields as
    keywords) applied and checked: a new object; an unknown keyword is a ConfigError naming it."""
    values = settings.to_dict() if settings is not None else {}
    for name, value in overrides.items():
        # the list settings take any iterable, as compare's keywords always did
        values[name] = tuple(value) if name in ("seeds", "baselines") and not isinstance(value, str) else value
    return from_dict(CompareSettings, values, source="compare")


def _pool_for(pool, protocol, archs):
    """The pool (path or dict) checked against this comparison's ``protocol`` and its labelled cells:
    ``(path or None, pool)``; a ConfigError names a protocol difference or a label holding another cell."""
    path = None
    if isinstance(pool, (str, os.PathLike)):
        path, pool = os.fspath(pool), load_pool(pool)
    else:
        pool = check_pool(pool)
    source = path or "pool"
    diff = protocol_differences(protocol_of(protocol), pool["protocol"])
    if diff:
        raise ConfigError(f"{source}: made under another protocol than this comparison: {'; '.join(diff)}")
    for label, arch in archs:
        for row in pool["rows"]:
            if row["label"] == label and row["arch"] != arch:
                raise ConfigError(f"{source}: {label} is another cell in the pool; rename one of them")
    return path, pool


def _pool_row(row, difference, difference_ci95):
    """A pool row as a :class:`CompareRow` (its difference taken against this comparison's reference)."""
    return CompareRow(row["label"], row["arch"], row["accuracy"], row["ci95"], difference, difference_ci95,
                      row.get("val_acc", float("nan")), row.get("parameters", 0), row.get("channels", 0),
                      row.get("train_seconds", 0.0), row.get("eval_seconds", 0.0), list(row.get("run_dirs", [])),
                      list(row["accuracies"]), dict(row.get("val_curves", {})), row.get("val_rise"),
                      list(row.get("iterations", [])), kind="random")


def format_compare_table(result: CompareResult) -> str:
    """The comparison as a plain-text table (what ``bayesnas compare`` prints).
    """
    c = result.config
    if result.param_target is None:
        width = f"equal channels {c['channels']}"
    else:
        width = f"parameters matched to {result.param_target:,} ±{100 * result.param_tolerance:.0f}%"
    lines = [
        f"{c['ways']}-way {c['shots']}-shot, {budget_text(c['iterations'], result.max_iterations, result.extend_by)}"
        f" x {c['tasks']} tasks, "
        f"{c['inner_steps']} inner steps ({'first' if c['first_order'] else 'second'} order), "
        f"{width}, layers {c['layers']}; seeds {', '.join(map(str, result.seeds))}; "
        f"{result.eval_tasks} test tasks (seed {result.eval_seed}, {result.eval_inner_steps} steps)",
        f"{'architecture':<16} {'accuracy (95% CI)':<19} {'vs ' + str(result.reference) + ' (paired)':<21} "
        f"{'val acc':>7} {'val rise':>8} {'iters':>5} {'parameters':>11} {'channels':>8} {'train s':>8}",
    ]
    for i, r in enumerate(result.rows):
        acc = f"{100 * r.accuracy:.2f}% ± {100 * r.ci95:.2f}%"
        diff = "reference" if i == 0 else f"{100 * r.difference:+.2f}% ± {100 * r.difference_ci95:.2f}%"
        rise = "-" if r.val_rise is None else f"{r.val_rise:+.3f}"
        iters = max(r.iterations) if r.iterations else c["iterations"]
        lines.append(f"{r.label:<16} {acc:<19} {diff:<21} {r.val_acc:>7.3f} {rise:>8} {iters:>5} {r.parameters:>11,} "
                     f"{r.channels:>8} {r.train_seconds:>8.0f}")
    rising = [r.label for r in result.rows if r.val_rise is not None and r.val_rise > PLATEAU_RISE]
    if rising:
        lines.append(f"still learning (val rise: mean validation accuracy over the last {PLATEAU_WINDOW} iterations "
                     f"minus {PLATEAU_LAG} earlier, above {PLATEAU_RISE}): {', '.join(rising)}")
    if len(result.seeds) > 1:
        lines.append(f"CIs over the {result.eval_tasks} test tasks, each task's accuracy averaged over the "
                     f"{len(result.seeds)} seeds first")
    if result.pool:
        lines.append(format_standings([Standing(**s) for s in result.pool["standings"]]))
    lines.extend(f"warning: {w}" for w in result.warnings)
    return "\n".join(lines)
