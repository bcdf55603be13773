"""``compare``: several architectures retrained and evaluated under one identical budget.

How users judge whether a search found something (the paper's Table 1): the derived
cell(s), DARTS_V2, Conv-4 and R cells drawn uniformly from the same search space are each
retrained with the same :class:`~bayesnas.config.RetrainConfig` (same iterations,
inner loop, tasks and depth) for every seed of the same seed set, then evaluated on the
same seeded test tasks. The S seeds of an architecture are scored on the same n test
tasks, so their S x n accuracies are not S x n independent samples: each task's accuracy
is first averaged over the seeds, and the mean and 95% CI are taken over the n tasks
(pooling would shrink the interval by up to sqrt(S) with no new information). Each
architecture's difference from the first (the reference) is paired the same way: the
per-task difference of seed-averaged accuracies, its mean and 95% CI over the tasks.
Training time is the summed step time of an architecture's runs divided by the number of
seeds (validation excluded).

At equal width the cells differ up to 10x in parameters, so by default each architecture
gets its own width (``channels``: Conv-4 filters, or the first cell's C) chosen so that its
trainable parameter count is within ±10% of one target (:func:`matched_channels`); the
target defaults to the largest row's count at the configured channels (:func:`row_widths`
says why), so no row is narrower than that. ``match_params=False`` gives every row the
configured channels.

With ``max_iterations`` every run is instead trained until its validation accuracy has
plateaued (:func:`train_to_plateau`): the same rule for every row, each row's budget recorded.

Every run keeps its own folder ``OUT/<label>-seed<S>``; running ``compare`` again with the
same ``out`` continues unfinished runs and reuses finished ones, and their evaluations
when the test tasks and the checkpoint are unchanged.

Example (two seeds on the same four tasks: seeds are averaged per task first):

>>> mean, ci, per_task = over_tasks([[0.2, 0.4, 0.6, 0.8], [0.4, 0.2, 0.8, 0.6]])
>>> [round(float(v), 4) for v in per_task], round(mean, 4), round(ci, 4)
([0.3, 0.3, 0.7, 0.7], 0.5, 0.2263)
"""
import dataclasses
import multiprocessing
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional

import numpy as np
import torch

from ..config import RetrainConfig, check_seed
from ..data import open_data, resolve_rotations
from ..data.protocol import TEST_SELECTION_WARNING
from ..errors import ConfigError, GenotypeError, RunError
from ..fileio import make_folder, write_json
from ..models import BASELINES, arch_config, count_parameters, random_genotype
from ..training.card import EVALUATION, read_evaluation, write_run_card
from ..training.loop import continuable, session_config
from ..training.retrain import build_retrain_network, retrain
from ..training.rundir import RunDirectory, default_run_path
from ..training.tensorboard_logger import summary_writer_class
from ..viz.compare import plot_comparison
from .evaluate import Z_95, evaluate, mean_confidence_interval, previous_evaluation
from .pool import (Standing, check_pool, format_standings, load_pool, pool_from_results, protocol_differences,
                   protocol_of, standing)
from .pool import save_pool as save_pool_file

#: how far from the target a row's parameter count may be when parameters are matched
PARAM_TOLERANCE = 0.10
#: the widest network the width search tries
MAX_CHANNELS = 1024
#: the plateau rule (:func:`validation_rise`): mean validation accuracy over the last
#: ``PLATEAU_WINDOW`` iterations against the same window ``PLATEAU_LAG`` iterations earlier
PLATEAU_WINDOW, PLATEAU_LAG = 100, 300
#: a rise above this is "still learning"
PLATEAU_RISE = 0.02
#: iterations added at a time when runs are trained until the plateau (:func:`train_to_plateau`)
EXTEND_BY = 200


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


def validation_rise(curves, window=PLATEAU_WINDOW, lag=PLATEAU_LAG):
    """How much validation accuracy was still rising at the end of training (the plateau test).

    For one curve ``[[iteration, val_acc], ...]`` ending at iteration N: the mean of the
    validations in ``(N - window, N]`` minus the mean of those in ``(N - lag - window, N - lag]``.
    Several curves (a dict ``{seed: curve}`` or a list), e.g. one per training seed: the mean of
    their rises. The validation tasks are the same at every validation, so the rise is not
    blurred by which tasks were drawn. A run "has plateaued" when the rise is at most
    :data:`PLATEAU_RISE`; that choice is a convention, stated wherever it is used.

    Returns:
        the rise (float), or None when a curve has no validation in one of the windows.

    >>> curve = [[100, 0.5], [200, 0.6], [300, 0.7], [400, 0.72], [500, 0.74]]
    >>> validation_rise(curve, window=200, lag=200)  # mean of (300, 500] minus mean of (100, 300]
    0.08
    """
    curves = list(curves.values()) if isinstance(curves, dict) else list(curves)
    if curves and curves[0] and not isinstance(curves[0][0], (list, tuple)):
        curves = [curves]  # one curve
    rises = []
    for curve in curves:
        if not curve:
            return None
        end = max(it for it, _ in curve)
        late = [v for it, v in curve if end - window < it <= end]
        early = [v for it, v in curve if end - lag - window < it <= end - lag]
        if not late or not early:
            return None
        rises.append(sum(late) / len(late) - sum(early) / len(early))
    return round(sum(rises) / len(rises), 6) if rises else None


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
        genotypes: specs accepted by :func:`~bayesnas.models.genotypes.arch_config` (JSON
            files, fit run folders, Genotypes), or a dict label -> spec.
        random_cells: R, how many cells to draw uniformly from the space
            (:func:`~bayesnas.models.genotypes.random_genotype`, one stream seeded by
            ``random_seed``: the same R cells every time). They obey the rule
            derive-cell's cells do: two distinct input states per node, listed in
            increasing order, a non-``none`` op on each, every node concatenated.
        baselines: names among "darts_v2", "conv4".

    Returns:
        list of ``(label, arch)`` with ``arch`` in config form.
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


def count_retrain_parameters(config, in_channels=1, image_size=28):
    """Trainable parameters of the network a :class:`RetrainConfig` builds.

    The network is built on the meta device: no memory is allocated and nothing computed,
    so counting a wide network is cheap.
    """
    with torch.device("meta"):
        net = build_retrain_network(config, in_channels, image_size)
    return count_parameters(net, trainable_only=True)


def matched_channels(arch, target, config, in_channels=1, image_size=28, tolerance=PARAM_TOLERANCE, label=None):
    """The width at which ``arch`` has the trainable parameter count nearest ``target``.

    The count grows with the width (Conv-4 filters, or the first cell's C), so the search
    doubles the width until the count reaches ``target``, bisects to the first width at or
    above it, and keeps that width or the one below, whichever count is nearer.

    Args:
        arch: the architecture in config form ("conv4", "darts_v2", a genotype dict).
        target: the parameter count to match; config: the :class:`RetrainConfig` whose
            other settings (layers, ways) shape the network.
        in_channels, image_size: of the data (Conv-4's head depends on the image size).
        tolerance: the largest accepted relative distance from ``target`` (0.1: ±10%).
        label: the architecture's name in the error (default: its config value).

    Returns:
        ``(channels, parameters)``.

    Raises:
        ConfigError: no width from 1 to :data:`MAX_CHANNELS` lands within the tolerance;
        the message names the architecture, the target and the nearest counts.
    """
    counts = {}

    def count(channels):
        if channels not in counts:
            counts[channels] = count_retrain_parameters(dataclasses.replace(config, arch=arch, channels=channels),
                                                        in_channels, image_size)
        return counts[channels]

    high = 1
    while count(high) < target and high < MAX_CHANNELS:
        high = min(2 * high, MAX_CHANNELS)
    if count(high) >= target:
        low = high // 2  # count(low) < target, or low == 0 (no width below 1)
        while high - low > 1:
            middle = (low + high) // 2
            if count(middle) >= target:
                high = middle
            else:
                low = middle
    candidates = [c for c in (high - 1, high) if c >= 1]
    best = min(candidates, key=lambda c: abs(count(c) - target))
    if abs(count(best) - target) > tolerance * target:
        name = label or (arch if isinstance(arch, str) else "genotype")
        nearest = ", ".join(f"channels {c}: {count(c):,}" for c in candidates)
        edge = " (the narrowest)" if high == 1 else " (the widest tried)" if count(high) < target else ""
        raise ConfigError(f"{name}: no width gives {target:,} trainable parameters ±{100 * tolerance:.0f}%; "
                          f"nearest {nearest}{edge}; a larger --param-target or --channels leaves finer steps, "
                          f"--no-match-params turns matching off")
    return best, count(best)


def row_widths(archs, config, in_channels=1, image_size=28, match_params=True, param_target=None,
               tolerance=PARAM_TOLERANCE):
    """Every row's width, chosen before anything is trained (an unreachable target then writes nothing).

    Args:
        archs: ``(label, arch)`` pairs from :func:`architectures`; config: the shared
            :class:`RetrainConfig` (its ``channels``: the width the default target is
            counted at, and every row's without matching).
        in_channels, image_size: of the data.
        match_params: choose each width by :func:`matched_channels`; False: every row at
            ``config.channels``.
        param_target: the count to match; None: the largest row's count at ``config.channels``.

    Why the largest by default: the count grows about as the square of the width, so
    neighbouring narrow widths are far apart (Conv-4: 157 parameters at 2 filters, 314 at
    3) and a cell much heavier than the target could have no width within ±10%. Matched to
    the largest, every row is at least ``config.channels`` wide, and from about 10 channels
    up neighbouring widths differ by under 20%, so every row lands within ±10%. The target
    then depends on the rows: give ``param_target`` to keep the widths (and the runs a
    rerun reuses) when rows are added.

    Returns:
        ``(target, [(channels, parameters), ...])``, one pair per row; ``target`` is None
        without matching.
    """
    if not match_params:
        if param_target is not None:
            raise ConfigError(f"param_target={param_target}: a parameter target needs matching on "
                              f"(drop --no-match-params)")
        return None, [(config.channels, count_retrain_parameters(dataclasses.replace(config, arch=arch), in_channels,
                                                                 image_size)) for _, arch in archs]
    if param_target is None:
        # the largest row: no row is narrowed below config.channels, where widths are coarse
        param_target = max(count_retrain_parameters(dataclasses.replace(config, arch=arch), in_channels, image_size)
                           for _, arch in archs)
    elif isinstance(param_target, bool) or not isinstance(param_target, int) or param_target < 1:
        raise ConfigError(f"param_target={param_target!r}: expected a parameter count, an integer >= 1")
    return param_target, [matched_channels(arch, param_target, config, in_channels, image_size, tolerance, label)
                          for label, arch in archs]


def val_curve(path):
    """A run's validation accuracy by iteration, from its ``metrics.csv``: ``[[iteration, val_acc], ...]``."""
    return [[int(r["iteration"]), r["val_acc"]] for r in RunDirectory(path).read_metrics()
            if r.get("val_acc") is not None]


def _train(arch, cfg, path, progress, tensorboard, command):
    """Retrain into ``path``, continuing it when an earlier compare left it there."""
    where = {"resume": path} if continuable(path, cfg) else {"out": path}
    return retrain(arch, cfg, progress=progress, tensorboard=tensorboard, command=command, **where)


def _saved_iterations(path):
    """The budget of the run already in ``path`` (0: none there)."""
    if not os.path.exists(os.path.join(path, "checkpoint_last.pt")):
        return 0
    return int(RunDirectory(path).config().get("iterations", 0))


def train_to_plateau(arch, cfg, path, max_iterations, extend_by=EXTEND_BY, progress=False, tensorboard=False,
                     command=None):
    """Retrain for ``cfg.iterations``, then ``extend_by`` more at a time until validation has plateaued.

    After each stretch the run's :func:`validation_rise` is measured on its validation curve
    (the model-selection classes, never the test classes); training goes on while it is above
    :data:`PLATEAU_RISE` or cannot yet be told (a curve shorter than the rule's windows), and
    stops at ``max_iterations`` whatever the rise. The meta-optimiser has no schedule tied to
    the budget (:meth:`RetrainConfig.extended`), so a run extended this way is the same as one
    given the longer budget from the start. A folder holding a run already extended further
    (an earlier call) continues from that budget. ``max_iterations`` None: just ``cfg.iterations``.

    Returns:
        (the retrain result, the budget it ended with).
    """
    if max_iterations is not None:
        cfg = cfg.extended(min(max(cfg.iterations, _saved_iterations(path)), max_iterations))
    while True:
        trained = _train(arch, cfg, path, progress, tensorboard, command)
        if max_iterations is None or cfg.iterations >= max_iterations:
            return trained, cfg.iterations
        rise = validation_rise(val_curve(path))
        if rise is not None and rise <= PLATEAU_RISE:
            return trained, cfg.iterations
        cfg = cfg.extended(min(cfg.iterations + extend_by, max_iterations))


@dataclass(frozen=True)
class _Job:
    """One run of a comparison: what :func:`_run` needs, picklable for a worker process."""

    label: str
    arch: object
    seed: int
    config: RetrainConfig
    path: str
    eval_tasks: int
    eval_inner_steps: object
    eval_seed: int
    progress: bool
    tensorboard: bool
    command: object
    max_iterations: Optional[int] = None
    extend_by: int = EXTEND_BY


def _run(job):
    """Retrain one (architecture, seed) run (continuing or reusing it) and evaluate it; a plain dict.

    A finished run's saved evaluation of the same tasks and unchanged checkpoint is reused
    (:func:`~bayesnas.analysis.evaluate.previous_evaluation`), so rows added to a comparison
    cost only their own runs.
    """
    saved = os.path.join(job.path, EVALUATION)
    if os.path.isfile(saved):
        try:
            read_evaluation(saved)
        except RunError:
            os.remove(saved)  # this comparison's own file, unusable: the run is evaluated again below
    trained, iterations = train_to_plateau(job.arch, job.config, job.path, job.max_iterations, job.extend_by,
                                           job.progress, job.tensorboard, job.command)
    test = {"tasks": job.eval_tasks, "inner_steps": job.eval_inner_steps, "seed": job.eval_seed}
    result = previous_evaluation(saved, job.path, **test) or evaluate(job.path, json_out=saved,
                                                                      progress=job.progress, **test)
    write_run_card(job.path)
    return {"label": job.label, "seed": job.seed, "path": job.path, "accuracies": list(result.accuracies),
            "accuracy": result.accuracy, "ci95": result.ci95,
            "val_acc": max(r["val_acc"] for r in trained.rows if r.get("val_acc") is not None),
            "train_seconds": trained.train_seconds, "eval_seconds": result.seconds,
            "parameters": count_parameters(trained.net, trainable_only=True), "curve": val_curve(job.path),
            "iterations": iterations, "process": os.getpid()}


def worker_gpus(workers, device, gpu_count):
    """The GPU index each of ``workers`` worker processes runs on, or None for each on the CPU.

    ``device`` (the runs' setting) "cuda", or "auto" on a machine with GPUs: round robin
    over the ``gpu_count`` visible GPUs (worker i on GPU i mod count); "cuda:N": every
    worker on N, as asked; "cpu", or "auto" without GPUs: None.

    >>> worker_gpus(3, "cuda", 2), worker_gpus(2, "cuda:1", 4), worker_gpus(2, "cpu", 4)
    ([0, 1, 0], [1, 1], None)
    """
    name = str(device).strip().lower()
    if name == "cpu" or gpu_count < 1 or not (name == "auto" or name.startswith("cuda")):
        return None
    if name.startswith("cuda:"):
        return [int(name.split(":", 1)[1])] * workers
    return [i % gpu_count for i in range(workers)]


def _init_worker(threads, gpus):
    """A worker's setup: its torch threads and, from the queue ``gpus``, the GPU "cuda" means in it."""
    torch.set_num_threads(threads)
    if gpus is not None:
        torch.cuda.set_device(gpus.get())


def run_jobs(jobs, workers, threads):
    """Yield each job's result as it finishes: in this process, or in ``workers`` spawned processes.

    Runs are independent (each seeds itself and writes its own folder), so they are the
    same either way. A worker takes ``threads`` torch threads, or an equal share of the
    CPU cores when that is 0. On CUDA the workers spread over the visible GPUs
    (:func:`worker_gpus`): "cuda" in a worker means its own GPU (the runs' configs, and
    so their folders, are the same whichever GPU ran them).
    """
    if workers == 1:
        for job in jobs:
            yield _run(job)
        return
    share = threads or max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    gpus = None
    assigned = worker_gpus(workers, jobs[0].config.device if jobs else "cpu",
                           torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if assigned is not None:
        gpus = context.Queue()
        for index in assigned:
            gpus.put(index)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=(share, gpus)) as pool:
        for future in as_completed([pool.submit(_run, job) for job in jobs]):
            yield future.result()


def compare(genotypes: Any = (), random_cells: int = 5, config: dict | None = None, seeds: Iterable[int] = (0,),
            eval_tasks: int = 600, eval_inner_steps: int | None = None, eval_seed: int = 0,
            out: str | os.PathLike | None = None, baselines: Iterable[str] = ("darts_v2", "conv4"),
            random_seed: int = 0, json_out: str | os.PathLike | None = None, progress: bool = True,
            log: Callable[[str], Any] | None = None,
            tensorboard: bool = False, command: str | None = None, match_params: bool = True,
            param_target: int | None = None, workers: int = 1, max_iterations: int | None = None,
            extend_by: int = EXTEND_BY, pool: str | os.PathLike | dict | None = None,
            save_pool: str | os.PathLike | None = None) -> CompareResult:
    """Retrain and evaluate every architecture under one budget and seed set; a Table-1-like result.

    Args:
        genotypes: the searched cells (see :func:`architectures`).
        random_cells: R random cells from the same space.
        config: the shared :class:`RetrainConfig` (its ``arch`` and ``seed`` are set per run).
        seeds: training seeds; every architecture is trained once per seed.
        eval_tasks: the number of test tasks (the same tasks for every row).
        eval_inner_steps: test-time adaptation steps.
        eval_seed: seed of the test tasks.
        out: folder of the runs and of ``compare.json`` (default: a new ``runs/compare-<time>``).
        baselines: named architectures to include ("darts_v2", "conv4").
        random_seed: seed of the random cells.
        json_out: also write the JSON there.
        progress: progress bars.
        log: optional ``callable(str)`` told when each run ends.
        tensorboard: every retrain run writes TensorBoard event files to its own
            ``OUT/<label>-seed<S>/tensorboard/``.
        command: the command line recorded in each run's card (default: the retrain call).
        match_params: give each architecture the width at which its trainable parameter
            count is within ±10% of ``param_target`` (:func:`row_widths`); False: every
            row at ``config.channels``.
        param_target: the count to match (default: the largest row's at ``config.channels``).
        workers: runs trained and evaluated at once, each in its own process (spawned; each
            takes ``config.threads`` torch threads, or an equal share of the cores when that
            is 0); 1 runs them one after another here. The results are the same: every run
            seeds itself and has its own folder. Progress bars are shown only with 1.
        max_iterations: train every run until validation has plateaued (:func:`train_to_plateau`):
            ``config.iterations`` first, then ``extend_by`` more at a time while its
            :func:`validation_rise` is above :data:`PLATEAU_RISE`, at most ``max_iterations``.
            Every row gets the same rule rather than the same budget; each row's ``iterations``
            says what it got. None (default): every run trains ``config.iterations``.
        pool: a pool file of retrained random cells (:mod:`~bayesnas.analysis.pool`) made under
            this same protocol (config, test tasks, seeds, parameter target, plateau rule; a
            difference is a ConfigError naming it): its cells join the table without being
            retrained (a row of the same label and cell is taken from the pool, not trained),
            and every other row's standing in the pool is reported.
        save_pool: write the random cells of the result (the pool's included) as a pool file
            there (:func:`~bayesnas.analysis.pool.pool_from_results`): a pool grows by running
            with more random cells, ``pool`` and ``save_pool`` the same file.

    Every width is chosen before the first run starts: a target no width of some
    architecture meets raises :class:`ConfigError` naming it, and nothing is written.
    Each run folder also keeps its evaluation (``evaluation.json``), shown in its run card.

    Returns:
        :class:`CompareResult` (also written to ``OUT/compare.json``, and drawn by
        :func:`~bayesnas.viz.compare.plot_comparison` in ``OUT/compare.png``).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r}: expected an integer >= 1")
    if tensorboard:
        summary_writer_class()  # a missing package stops the comparison before any run starts
    cfg, _ = session_config(None, RetrainConfig, config, None)
    data = open_data(cfg.data)
    # resolved once, so every run (and a rerun's check of the saved configs) states the same value
    cfg.rotations = resolve_rotations(cfg.rotations, data)
    seeds = [check_seed(s, "seeds") for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={seeds}: expected at least one seed, each once (a seed's runs share one folder)")
    if max_iterations is not None:
        _check_plateau_budget(max_iterations, extend_by, cfg.iterations)
    archs = architectures(genotypes, random_cells, baselines, random_seed)
    target, widths = row_widths(archs, cfg, data.channels, data.image_size, match_params, param_target)
    eval_steps = cfg.test_inner_steps if eval_inner_steps is None else eval_inner_steps
    pool_path, pool = (None, None) if pool is None else _pool_for(pool, {
        "config": cfg.to_dict(), "eval_tasks": eval_tasks, "eval_seed": eval_seed, "eval_inner_steps": eval_steps,
        "seeds": seeds, "param_target": target, "param_tolerance": PARAM_TOLERANCE,
        "max_iterations": max_iterations, "extend_by": None if max_iterations is None else extend_by}, archs)
    pooled = {} if pool is None else {r["label"]: r for r in pool["rows"]}
    out = os.fspath(out) if out is not None else default_run_path("compare")
    make_folder(out)
    t0 = time.perf_counter()
    # the width is part of each run's config, so a rerun finds and reuses the finished run
    jobs = [_Job(label, arch, seed, dataclasses.replace(cfg, arch=arch, seed=seed, channels=channels),
                 os.path.join(out, f"{label}-seed{seed}"), eval_tasks, eval_inner_steps, eval_seed,
                 progress and workers == 1, tensorboard, command, max_iterations, extend_by)
            for (label, arch), (channels, _) in zip(archs, widths) for seed in seeds if label not in pooled]
    runs = {}
    for done in run_jobs(jobs, workers, cfg.threads):
        runs[(done["label"], done["seed"])] = done
        if log is not None:
            log(f"{done['label']} seed {done['seed']}: {100 * done['accuracy']:.2f}% ± {100 * done['ci95']:.2f}% "
                f"({done['train_seconds']:.0f} s training)")
    rows, reference_accs = [], None
    first_random = len(archs) - random_cells  # architectures() lists the random cells last
    for index, ((label, arch), (channels, _)) in enumerate(zip(archs, widths)):
        if label in pooled:
            continue
        mine = [runs[(label, seed)] for seed in seeds]
        accs = [r["accuracies"] for r in mine]
        mean, ci, per_task = over_tasks(accs)
        if reference_accs is None:
            reference_accs, diff, diff_ci = accs, 0.0, 0.0
        else:
            diff, diff_ci = paired_difference(accs, reference_accs)
        curves = {str(seed): r["curve"] for seed, r in zip(seeds, mine)}
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
                           seeds=seeds, eval_tasks=eval_tasks,
                           eval_inner_steps=cfg.test_inner_steps if eval_inner_steps is None else eval_inner_steps,
                           eval_seed=eval_seed, out=out, seconds=time.perf_counter() - t0, reference=rows[0].label,
                           param_target=target, max_iterations=max_iterations,
                           extend_by=None if max_iterations is None else extend_by,
                           warnings=[TEST_SELECTION_WARNING] if cfg.select_on == "test" else [], pool=pool_summary)
    write_json(os.path.join(out, "compare.json"), result.to_dict())
    plot_comparison(result.to_dict(), path=os.path.join(out, "compare.png"))
    if json_out is not None:
        write_json(json_out, result.to_dict())
    if save_pool is not None:
        save_pool_file(pool_from_results([result.to_dict()]), save_pool)
    return result


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


def _check_plateau_budget(max_iterations, extend_by, iterations):
    """ConfigError unless the plateau rule's cap and step are positive integers and the cap is
    at least the configured budget."""
    for name, value in (("max_iterations", max_iterations), ("extend_by", extend_by)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r}: expected an integer >= 1")
    if max_iterations < iterations:
        raise ConfigError(f"max_iterations={max_iterations}: expected at least the configured iterations "
                          f"({iterations})")


def budget_text(iterations, max_iterations=None, extend_by=None):
    """The training budget in words: fixed, or the plateau rule's (:func:`train_to_plateau`)."""
    if max_iterations is None:
        return f"{iterations} iterations"
    return (f"{iterations} iterations, +{extend_by} at a time while val rise > {PLATEAU_RISE} "
            f"(at most {max_iterations})")


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
