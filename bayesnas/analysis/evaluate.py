"""``evaluate``: few-shot accuracy of a retrained network on held-out classes, with a 95% CI.

A fixed, seeded set of test tasks (task i of ``TaskSampler(split, ways, shots, queries,
seed)``, i = 0..tasks-1) is the same for every network evaluated with the same seed, so
numbers of different networks are paired. Each task adapts the meta-trained weights with
``inner_steps`` gradient steps on its support set and is scored on its query set; the
result is the mean over tasks and the 95% confidence interval of that mean,
``1.96 * std / sqrt(n)`` with the sample standard deviation (``ddof=1``), the convention of
the MAML and BASE papers' tables.

Example:

>>> mean, ci = mean_confidence_interval([0.2, 0.4, 0.6, 0.8])
>>> round(mean, 4), round(ci, 4)           # 1.96 * 0.2582 / 2
(0.5, 0.253)
"""
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, List

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import RetrainConfig, check_seed
from ..data import TaskSampler, default_data_path
from ..data.protocol import TEST_SELECTION_WARNING
from ..device import check_precision
from ..errors import BayesNASError, ConfigError
from ..fileio import write_json
from ..models import arch_label, count_parameters
from ..training.distributed import distributed
from ..training.loop import read_run_config, run_device
from ..training.records import file_sha256, read_evaluation
from ..training.retrain import load_retrain, task_accuracies
from ..training.rundir import RunDirectory

Z_95 = 1.96


def mean_confidence_interval(values: Any, z: float = Z_95) -> tuple[float, float]:
    """Mean of ``values`` and the half-width of its normal-approximation confidence interval.

    ``half_width = z * std / sqrt(n)`` with the sample standard deviation (``ddof=1``);
    ``z = 1.96`` gives the 95% interval. One value has no spread: half-width 0.

    Args:
        values: a sequence, array or tensor of ``n >= 1`` numbers (e.g. per-task accuracies ``[n]``).
        z: the standard-normal quantile (1.96 for 95%, 2.576 for 99%).

    Returns:
        ``(mean, half_width)`` as floats.
    """
    a = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError("mean_confidence_interval needs at least one value")
    if not np.isfinite(a).all():
        raise ValueError("mean_confidence_interval: values are not all finite")
    if a.size == 1:
        return float(a[0]), 0.0
    return float(a.mean()), float(z * a.std(ddof=1) / math.sqrt(a.size))


@dataclass
class Evaluation:
    """What :func:`evaluate` returns (and ``--json`` writes, via :meth:`to_dict`).

    accuracy: mean query accuracy over the tasks, in [0, 1]; ci95: half-width of its 95%
    confidence interval; std: sample standard deviation of the per-task accuracies;
    warnings: protocol warnings about the run (a checkpoint selected on the test classes);
    accuracies: the ``tasks`` per-task accuracies, in task order; checkpoint_sha256,
    data_sha256: the evaluated files' sha256 (what :func:`previous_evaluation` matches on);
    device: where it was evaluated ("cpu", "cuda:0"; files written before it was recorded: "cpu");
    precision: the network's forward, "fp32" or "bf16" (files written before it was recorded: "fp32").
    """

    run_dir: str
    arch: str
    checkpoint: str
    split: str
    tasks: int
    seed: int
    ways: int
    shots: int
    queries: int
    inner_steps: int
    inner_lr: float
    parameters: int
    accuracy: float
    ci95: float
    std: float
    seconds: float
    warnings: List[str] = field(default_factory=list)
    accuracies: List[float] = field(repr=False, default_factory=list)
    checkpoint_sha256: str = ""
    data_sha256: str = ""
    device: str = "cpu"
    precision: str = "fp32"

    def to_dict(self):
        return asdict(self)


def evaluate(run_dir: str | os.PathLike, tasks: int = 600, inner_steps: int | None = None, split: str = "test",
             seed: int = 0, json_out: str | os.PathLike | None = None, which: str = "best",
             device: str | None = None, threads: int = 0, progress: bool = False,
             precision: str | None = None) -> "Evaluation":
    """Accuracy of a retrained network on ``tasks`` seeded tasks of held-out classes.

    Args:
        run_dir: a folder written by :func:`~bayesnas.training.retrain.retrain`.
        tasks: number of test tasks (the papers: 600).
        inner_steps: test-time inner steps (default: the run's ``eval_inner_steps``, else
            its ``inner_steps``; the BASE paper uses 5, the MAML paper 10).
        split: the split whose classes are tested ("test"; "val" to tune).
        seed: seed of the task sampler: the same seed gives the same tasks to every network.
        json_out: also write the result as JSON there (atomically).
        which: checkpoint, "best" (by validation accuracy) or "last"; "best" falls back
            to "last" when the run never validated (``result.checkpoint`` says which).
        device: where to evaluate (default: where the run trains, :func:`~bayesnas.training.loop.run_device`:
            a run made on the CPU is evaluated on the CPU on a GPU machine too).
        threads: torch CPU threads (0 = leave torch's setting).
        progress: show a progress bar.
        precision: the network's forward, "fp32" or "bf16" (default: the run's own precision).

    A run that selected its checkpoint on the test classes (``select_on="test"`` in its
    config.json) is evaluated all the same, with a warning in ``result.warnings`` (printed
    by :func:`format_evaluation`, written to the JSON).

    Under torchrun the tasks are split across processes (round robin) and gathered on
    every rank; only rank 0 returns the Evaluation and writes ``json_out`` (the others
    return None).

    Returns:
        :class:`Evaluation` (ways/shots/queries are the run's).
    """
    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1:
        raise ConfigError(f"tasks={tasks!r}: expected an integer >= 1")
    if inner_steps is not None and (isinstance(inner_steps, bool) or not isinstance(inner_steps, int)
                                    or inner_steps < 0):
        raise ConfigError(f"inner_steps={inner_steps!r}: expected an integer >= 0")
    check_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    checkpoint = _checkpoint(run_dir, which)
    cfg, net, data = load_retrain(run_dir, which=checkpoint, device="cpu")
    if precision is not None:
        cfg.precision = check_precision(precision, torch.device("cpu"))
    files = {"checkpoint_sha256": file_sha256(RunDirectory(run_dir).file(f"checkpoint_{checkpoint}.pt")),
             "data_sha256": file_sha256(data.path)}
    with distributed(device if device is not None else str(run_device(run_dir))) as ctx:
        check_precision(cfg.precision, ctx.device)
        return _evaluate(ctx, run_dir, cfg, net, data, checkpoint, tasks, inner_steps, split, seed, json_out,
                         progress, files)


def _checkpoint(run_dir, which):
    """The checkpoint ``which`` names; "best" falls back to "last" in a run that never validated."""
    if which == "best" and not os.path.exists(RunDirectory(run_dir).file("checkpoint_best.pt")):
        return "last"  # a run stopped before its first validation; a missing "last" is reported
    return which


def previous_evaluation(json_path: str | os.PathLike, run_dir: str | os.PathLike, tasks: int = 600,
                        inner_steps: int | None = None, split: str = "test", seed: int = 0,
                        which: str = "best", device: str | None = None,
                        precision: str | None = None) -> "Evaluation | None":
    """The :class:`Evaluation` saved at ``json_path`` if it is what :func:`evaluate` would return now.

    It is when it evaluated the same tasks (``tasks``, ``split``, ``seed``), with the same
    test-time steps (``inner_steps`` None: the run's), of a checkpoint and data file whose
    bytes are unchanged (their sha256), on the same type of device as ``device`` (default:
    the run's, as :func:`evaluate` picks it) and in the same ``precision`` (default: the
    run's); else (no file, unreadable, an older file
    without the hashes, anything different, accuracies that are not one finite value in
    [0, 1] per task: :func:`~bayesnas.training.records.read_evaluation`) None, and the caller
    evaluates. Evaluating is deterministic on CPU, so a match is the number evaluating again
    would give; a GPU rounds differently, so a table never mixes CPU and GPU numbers.
    """
    try:
        saved = read_evaluation(json_path)
        run = RunDirectory(run_dir)
        cfg = read_run_config(run, RetrainConfig)
        checkpoint = _checkpoint(run_dir, which)
        wanted = {"split": split, "tasks": tasks, "seed": seed, "checkpoint": checkpoint,
                  "inner_steps": cfg.test_inner_steps if inner_steps is None else inner_steps}
        if not isinstance(saved, dict) or any(saved.get(k) != v for k, v in wanted.items()):
            return None
        if saved.get("precision", "fp32") != (precision or cfg.precision):
            return None
        data_path = cfg.data if cfg.data is not None else default_data_path()
        if (saved.get("checkpoint_sha256") != file_sha256(run.file(f"checkpoint_{checkpoint}.pt"))
                or saved.get("data_sha256") != file_sha256(data_path)):
            return None
        if str(saved.get("device", "cpu")).split(":")[0] != run_device(run_dir, device).type:
            return None
        defaults = {"device": "cpu", "precision": "fp32"}  # what files written before them held
        result = Evaluation(**{f.name: saved.get(f.name, defaults[f.name]) if f.name in defaults else saved[f.name]
                               for f in fields(Evaluation)})
    except (OSError, ValueError, KeyError, TypeError, BayesNASError):
        return None
    return result if len(result.accuracies) == tasks else None


def _evaluate(ctx, run_dir, cfg, net, data, checkpoint, tasks, inner_steps, split, seed, json_out, progress,
              files):
    net = net.to(ctx.device)
    dev = next(net.parameters()).device
    steps = cfg.test_inner_steps if inner_steps is None else inner_steps
    sampler = TaskSampler(data.split(split), cfg.ways, cfg.shots, cfg.queries, seed=seed, device=dev)
    t0 = time.perf_counter()
    mine = ctx.strided(tasks)
    with tqdm(total=len(mine), desc=f"evaluate {arch_label(cfg.arch)}", disable=not (progress and ctx.is_main),
              dynamic_ncols=True) as bar:
        local = task_accuracies(net, sampler, mine, steps, cfg.inner_lr, progress=lambda done: bar.update(done - bar.n),
                                precision=cfg.precision) if mine else torch.zeros(0)
    accs = torch.zeros(tasks, dtype=torch.float64)
    for indices, values in ctx.gather_objects((mine, local.double().cpu())):
        accs[indices] = values
    seconds = time.perf_counter() - t0
    if not ctx.is_main:
        return None
    mean, ci = mean_confidence_interval(accs)
    result = Evaluation(
        run_dir=os.fspath(run_dir), arch=arch_label(cfg.arch), checkpoint=checkpoint, split=split, tasks=tasks,
        seed=seed, ways=cfg.ways, shots=cfg.shots, queries=cfg.queries, inner_steps=steps, inner_lr=cfg.inner_lr,
        parameters=count_parameters(net, trainable_only=True), accuracy=mean, ci95=ci,
        std=float(accs.std(unbiased=True)) if tasks > 1 else 0.0, seconds=seconds,
        warnings=[TEST_SELECTION_WARNING] if cfg.select_on == "test" else [], accuracies=accs.tolist(), **files,
        device=str(dev), precision=cfg.precision,
    )
    if json_out is not None:
        write_json(json_out, result.to_dict())
    return result


def format_evaluation(result: "Evaluation") -> str:
    """A plain-text table of an :class:`Evaluation` (what ``bayesnas evaluate`` prints).
    """
    setting = f"{result.ways}-way {result.shots}-shot"
    acc = f"{100 * result.accuracy:.2f}% ± {100 * result.ci95:.2f}%"
    header = (f"{'run':<28} {'arch':<9} {'split':<5} {'tasks':>5} {'steps':>5}  {'setting':<13} "
              f"{'accuracy (95% CI)':<18} {'parameters':>10}")
    line = (f"{os.path.basename(os.path.normpath(result.run_dir)):<28} {result.arch:<9} {result.split:<5} "
            f"{result.tasks:>5} {result.inner_steps:>5}  {setting:<13} {acc:<18} {result.parameters:>10,}")
    return "\n".join([header, line] + [f"warning: {w}" for w in result.warnings])
