"""``compare``: several architectures retrained and evaluated under one identical budget.

How users judge whether a search found something (the paper's Table 1): the derived
cell(s), DARTS_V2, Conv-4 and R cells drawn uniformly from the same search space are each
retrained with the same :class:`~bayesnas.inference.maml.RetrainConfig` (same iterations,
inner loop, tasks, width and depth) for every seed of the same seed set, then evaluated on
the same seeded test tasks. The S seeds of an architecture are scored on the same n test
tasks, so their S x n accuracies are not S x n independent samples: each task's accuracy
is first averaged over the seeds, and the mean and 95% CI are taken over the n tasks
(pooling would shrink the interval by up to sqrt(S) with no new information). Each
architecture's difference from the first (the reference) is paired the same way: the
per-task difference of seed-averaged accuracies, its mean and 95% CI over the tasks.
Training time is the summed step time of an architecture's runs divided by the number of
seeds (validation excluded).

Every run keeps its own folder ``OUT/<label>-seed<S>``; running ``compare`` again with the
same ``out`` continues unfinished runs and reuses finished ones.

Usage::

    result = compare(["runs/fit-a"], random_cells=2, config=RetrainConfig(iterations=300), out="runs/cmp")
    print(format_compare_table(result))
    result.rows[0].accuracy, result.rows[0].ci95
"""
import dataclasses
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import List

import numpy as np

from ..data import resolve_rotations
from ..data.protocol import TEST_SELECTION_WARNING
from ..errors import ConfigError, GenotypeError, RunError
from ..fileio import write_json
from ..models import count_parameters, random_genotype
from .card import EVALUATION, write_run_card
from .evaluate import Z_95, evaluate, mean_confidence_interval
from .maml import BASELINES, RetrainConfig, arch_config, retrain
from .rundir import RunDirectory, default_run_path
from .tensorboard_logger import summary_writer_class


@dataclass
class CompareRow:
    """One architecture of a comparison.

    label: its name in the table; arch: the config value ("conv4", "darts_v2" or a genotype
    dict); accuracy, ci95: mean and 95% CI over the test tasks of each task's accuracy
    averaged over the seeds, in [0, 1] (:func:`over_tasks`); difference, difference_ci95:
    the paired difference from the reference row (:func:`paired_difference`; 0 for the
    reference itself); val_acc: mean over seeds of the best validation accuracy;
    parameters: trainable scalars; train_seconds: mean training time per seed; run_dirs:
    one retrain folder per seed; accuracies: the per-task seed means ``[n]``, in task order.
    """

    label: str
    arch: object
    accuracy: float
    ci95: float
    difference: float
    difference_ci95: float
    val_acc: float
    parameters: int
    train_seconds: float
    eval_seconds: float
    run_dirs: List[str] = field(default_factory=list)
    accuracies: List[float] = field(default_factory=list, repr=False)


@dataclass
class CompareResult:
    """What :func:`compare` returns: one :class:`CompareRow` per architecture, and the shared budget.

    reference: the label differences are taken against (the first row); warnings:
    protocol warnings (checkpoints selected on the test classes).
    """

    rows: List[CompareRow]
    config: dict
    seeds: List[int]
    eval_tasks: int
    eval_inner_steps: int
    eval_seed: int
    out: str
    seconds: float
    reference: str = None
    warnings: List[str] = field(default_factory=list)

    def to_dict(self):
        return asdict(self)


def _per_seed(accuracies, what="accuracies"):
    """``accuracies`` as a float64 array ``[S, n]`` (one row per seed, the same n tasks in each)."""
    a = np.asarray(accuracies, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.size == 0:
        raise ConfigError(f"{what}: expected per-task accuracies [seeds, tasks], got shape {list(a.shape)}")
    return a


def over_tasks(accuracies, z=Z_95):
    """Mean and CI over test tasks of S seeds' accuracies on the same n tasks.

    Each task's accuracy is averaged over the seeds first: the S accuracies of one task
    share its support and query images, so they are not independent samples, and pooling
    the S x n values would narrow the interval by up to sqrt(S) with no new information.

    Args:
        accuracies: ``[S, n]`` per-seed, per-task accuracies (``[n]`` for one seed).
        z: the normal quantile (1.96: 95%).

    Returns:
        ``(mean, half_width, per_task)``: floats, and the seed means ``[n]`` (float64 array).

    Example::

        mean, ci, per_task = over_tasks([[0.2, 0.4, 0.6, 0.8], [0.4, 0.2, 0.8, 0.6]])
        # per_task [0.3, 0.3, 0.7, 0.7]: mean 0.5, ci 1.96 * 0.2309 / 2 = 0.2263
    """
    per_task = _per_seed(accuracies).mean(0)
    mean, ci = mean_confidence_interval(per_task, z=z)
    return mean, ci, per_task


def paired_difference(accuracies_a, accuracies_b, z=Z_95):
    """Mean and CI over tasks of the per-task difference a - b of seed-averaged accuracies.

    Args:
        accuracies_a, accuracies_b: ``[S_a, n]`` and ``[S_b, n]`` accuracies of two
            architectures on the same n seeded test tasks (any numbers of seeds).
        z: the normal quantile (1.96: 95%).

    Returns:
        ``(mean, half_width)`` of the paired difference, as floats.

    Example::

        diff, ci = paired_difference(derived_accs, darts_accs)   # [S, 600] each
        f"{100 * diff:+.2f}% ± {100 * ci:.2f}%"
    """
    a, b = _per_seed(accuracies_a, "accuracies_a").mean(0), _per_seed(accuracies_b, "accuracies_b").mean(0)
    if a.shape != b.shape:
        raise ConfigError(f"paired_difference: {a.size} and {b.size} tasks; a paired comparison needs the same "
                          f"test tasks")
    return mean_confidence_interval(a - b, z=z)


def _label_of(spec, taken):
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text.strip().lower() in BASELINES:
            label = text.strip().lower()
        else:
            base = os.path.normpath(text)
            label = os.path.basename(base) if os.path.isdir(base) else os.path.splitext(os.path.basename(base))[0]
            if label == "genotype" and os.path.dirname(base):
                label = os.path.basename(os.path.dirname(base))
    else:
        label = "genotype"
    label = "".join(c if c.isalnum() or c in "-_." else "_" for c in label) or "genotype"
    unique, n = label, 1
    while unique in taken:
        n += 1
        unique = f"{label}-{n}"
    return unique


def architectures(genotypes=(), random_cells=0, baselines=("darts_v2", "conv4"), random_seed=0):
    """The labelled architectures of a comparison, in table order.

    Args:
        genotypes: specs accepted by :func:`~bayesnas.inference.maml.arch_config` (JSON
            files, fit run folders, Genotypes), or a dict label -> spec.
        random_cells: R, how many cells to draw uniformly from the space
            (:func:`~bayesnas.models.genotypes.random_genotype`, one stream seeded by
            ``random_seed``: the same R cells every time).
        baselines: names among "darts_v2", "conv4".

    Returns:
        list of ``(label, arch)`` with ``arch`` in config form.

    Example::

        architectures(["runs/fit-a"], random_cells=2)
        # [('fit-a', {...}), ('darts_v2', 'darts_v2'), ('conv4', 'conv4'), ('random-1', {...}), ('random-2', {...})]
        [label for label, _ in architectures(random_cells=1)]
    """
    items = list(genotypes.items()) if isinstance(genotypes, dict) else [(None, g) for g in genotypes]
    out, taken = [], set()
    for label, spec in items:
        label = label or _label_of(spec, taken)
        out.append((label, arch_config(spec)))
        taken.add(label)
    for name in baselines:
        key = str(name).strip().lower()
        if key not in BASELINES:
            raise GenotypeError(f"baseline {name!r}: expected one of {', '.join(BASELINES)}")
        out.append((_label_of(key, taken), key))
        taken.add(out[-1][0])
    if isinstance(random_cells, bool) or not isinstance(random_cells, int) or random_cells < 0:
        raise ConfigError(f"random_cells={random_cells!r}: expected an integer >= 0")
    rng = random.Random(random_seed)
    for i in range(random_cells):
        label = _label_of(f"random-{i + 1}", taken)
        out.append((label, arch_config(random_genotype(rng))))
        taken.add(label)
    if not out:
        raise ConfigError("nothing to compare: give genotypes, baselines or random cells")
    return out


def _train(arch, cfg, path, progress, tensorboard, command):
    """Retrain into ``path``, continuing it when an earlier compare left it there."""
    run = RunDirectory(path)
    if os.path.exists(run.file("checkpoint_last.pt")):
        saved, wanted, defaults = run.config(), cfg.to_dict(), RetrainConfig().to_dict()
        # a setting the saved config lacks was written before it existed: it ran with the default
        differ = sorted(k for k in wanted if k != "iterations" and saved.get(k, defaults[k]) != wanted[k])
        if differ or saved.get("iterations", 0) > cfg.iterations:
            raise RunError(f"{path}: holds a run with other settings ({', '.join(differ) or 'iterations'}); "
                           f"the comparison would not share one budget: choose another --out")
        return retrain(arch, cfg, resume=path, progress=progress, tensorboard=tensorboard, command=command)
    return retrain(arch, cfg, out=path, progress=progress, tensorboard=tensorboard, command=command)


def compare(genotypes=(), random_cells=2, config=None, seeds=(0,), eval_tasks=600, eval_inner_steps=None,
            eval_seed=0, out=None, baselines=("darts_v2", "conv4"), random_seed=0, json_out=None, progress=True,
            log=None, tensorboard=False, command=None):
    """Retrain and evaluate every architecture under one budget and seed set; a Table-1-like result.

    Args:
        genotypes: the searched cells (see :func:`architectures`).
        random_cells: R random cells from the same space.
        config: the shared :class:`RetrainConfig` (its ``arch`` and ``seed`` are set per run).
        seeds: training seeds; every architecture is trained once per seed.
        eval_tasks, eval_inner_steps, eval_seed: the test tasks (same for all) and test-time steps.
        out: folder of the runs and of ``compare.json`` (default: a new ``runs/compare-<time>``).
        baselines: named architectures to include ("darts_v2", "conv4").
        random_seed: seed of the random cells; json_out: also write the JSON there.
        progress: progress bars; log: optional ``callable(str)`` told when each run ends.
        tensorboard: every retrain run writes TensorBoard event files to its own
            ``OUT/<label>-seed<S>/tensorboard/``.
        command: the command line recorded in each run's card (default: the retrain call).

    Each run folder also keeps its evaluation (``evaluation.json``), shown in its run card.

    Returns:
        :class:`CompareResult` (also written to ``OUT/compare.json``).

    Example::

        cfg = RetrainConfig(iterations=200, channels=8, layers=3)
        result = compare(["runs/fit-a/genotype.json"], random_cells=2, config=cfg, seeds=[0, 1])
        print(format_compare_table(result))
    """
    if tensorboard:
        summary_writer_class()  # a missing package stops the comparison before any run starts
    if isinstance(config, RetrainConfig):
        cfg = dataclasses.replace(config)
    else:
        from ..config import resolve_config

        cfg = resolve_config(RetrainConfig, overrides=config or {})
    cfg.validate()
    from .svi import open_data

    # resolved once, so every run (and a rerun's check of the saved configs) states the same value
    cfg.rotations = resolve_rotations(cfg.rotations, open_data(cfg.data))
    seeds = [int(s) for s in seeds]
    if not seeds or any(s < 0 for s in seeds):
        raise ConfigError(f"seeds={seeds}: expected at least one non-negative integer")
    archs = architectures(genotypes, random_cells, baselines, random_seed)
    out = os.fspath(out) if out is not None else default_run_path("compare")
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    rows, reference_accs = [], None
    for label, arch in archs:
        accs, val_accs, train_s, eval_s, dirs, params = [], [], 0.0, 0.0, [], 0
        for seed in seeds:
            run_cfg = dataclasses.replace(cfg, arch=arch, seed=seed)
            path = os.path.join(out, f"{label}-seed{seed}")
            trained = _train(arch, run_cfg, path, progress, tensorboard, command)
            result = evaluate(path, tasks=eval_tasks, inner_steps=eval_inner_steps, seed=eval_seed,
                              json_out=os.path.join(path, EVALUATION), progress=progress)
            write_run_card(path)
            accs.append(result.accuracies)
            val_accs.append(max(r["val_acc"] for r in trained.rows if r.get("val_acc") is not None))
            train_s += trained.train_seconds
            eval_s += result.seconds
            params = count_parameters(trained.net, trainable_only=True)
            dirs.append(path)
            if log is not None:
                log(f"{label} seed {seed}: {100 * result.accuracy:.2f}% ± {100 * result.ci95:.2f}% "
                    f"({trained.train_seconds:.0f} s training)")
        mean, ci, per_task = over_tasks(accs)
        if reference_accs is None:
            reference_accs, diff, diff_ci = accs, 0.0, 0.0
        else:
            diff, diff_ci = paired_difference(accs, reference_accs)
        rows.append(CompareRow(label, arch, mean, ci, diff, diff_ci, sum(val_accs) / len(val_accs), params,
                               train_s / len(seeds), eval_s / len(seeds), dirs, per_task.tolist()))
    result = CompareResult(rows=rows, config={k: v for k, v in cfg.to_dict().items() if k not in ("arch", "seed")},
                           seeds=seeds, eval_tasks=eval_tasks,
                           eval_inner_steps=cfg.test_inner_steps if eval_inner_steps is None else eval_inner_steps,
                           eval_seed=eval_seed, out=out, seconds=time.perf_counter() - t0, reference=rows[0].label,
                           warnings=[TEST_SELECTION_WARNING] if cfg.select_on == "test" else [])
    write_json(os.path.join(out, "compare.json"), result.to_dict())
    if json_out is not None:
        write_json(json_out, result.to_dict())
    return result


def format_compare_table(result):
    """The comparison as a plain-text table (what ``bayesnas compare`` prints).

    Example::

        print(format_compare_table(compare(random_cells=1, config=cfg)))
        # architecture     accuracy (95% CI)   vs darts_v2 (paired)  val acc  parameters  train s
        # darts_v2         91.20% ± 1.10%      reference               0.905      31,117      410
        # random-1         88.40% ± 1.30%      -2.80% ± 1.02%          0.880      24,650      380
    """
    c = result.config
    lines = [
        f"{c['ways']}-way {c['shots']}-shot, {c['iterations']} iterations x {c['tasks']} tasks, "
        f"{c['inner_steps']} inner steps ({'first' if c['first_order'] else 'second'} order), "
        f"channels {c['channels']}, layers {c['layers']}; seeds {', '.join(map(str, result.seeds))}; "
        f"{result.eval_tasks} test tasks (seed {result.eval_seed}, {result.eval_inner_steps} steps)",
        f"{'architecture':<16} {'accuracy (95% CI)':<19} {'vs ' + str(result.reference) + ' (paired)':<21} "
        f"{'val acc':>7} {'parameters':>11} {'train s':>8}",
    ]
    for i, r in enumerate(result.rows):
        acc = f"{100 * r.accuracy:.2f}% ± {100 * r.ci95:.2f}%"
        diff = "reference" if i == 0 else f"{100 * r.difference:+.2f}% ± {100 * r.difference_ci95:.2f}%"
        lines.append(f"{r.label:<16} {acc:<19} {diff:<21} {r.val_acc:>7.3f} {r.parameters:>11,} "
                     f"{r.train_seconds:>8.0f}")
    if len(result.seeds) > 1:
        lines.append(f"CIs over the {result.eval_tasks} test tasks, each task's accuracy averaged over the "
                     f"{len(result.seeds)} seeds first")
    lines.extend(f"warning: {w}" for w in result.warnings)
    return "\n".join(lines)
