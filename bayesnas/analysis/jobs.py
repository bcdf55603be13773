"""The runs of a comparison: one job per (architecture, seed), run here or in a pool of processes.

Runs are independent (each seeds itself and writes its own folder), so the results are the
same whichever process ran them; a rerun continues unfinished runs and reuses finished ones.

>>> worker_gpus(2, "cpu", 4) is None
True
"""
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Optional

import torch

from ..config import RetrainConfig
from ..errors import RunError
from ..models import count_parameters
from ..training.card import write_run_card
from ..training.records import EVALUATION, read_evaluation
from .evaluate import evaluate, previous_evaluation
from .plateau import EXTEND_BY, train_to_plateau, val_curve


@dataclass(frozen=True)
class Job:
    """One run of a comparison: what :func:`run_job` needs, picklable for a worker process."""

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


def run_job(job):
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


def init_worker(threads, gpus):
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
            yield run_job(job)
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
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=init_worker,
                             initargs=(share, gpus)) as pool:
        for future in as_completed([pool.submit(run_job, job) for job in jobs]):
            yield future.result()
