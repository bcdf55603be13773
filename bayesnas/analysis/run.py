"""A fit run folder as one object: its config, metrics, checkpoints and posteriors.

This is the notebook entry point after ``bayesnas fit``: the meta-level edge posterior,
the posterior of a new task (the guide's own unrolled steps on its support set), its
model-averaged predictions, the posterior's history over training, and calibration.

Usage::

    import bayesnas
    run = bayesnas.load_run("runs/fit-20261127-120000")
    run.edge_posterior().table(sort_by="prob", descending=True)[:5]
    task = run.task_sampler("test").task(0)
    run.adapt(task).predict(task.query_x).probs          # [ways * queries, ways]
"""
import os
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import FitConfig
from ..data import TaskSampler, open_data
from ..data.protocol import held_out_split
from ..device import resolve_device
from ..errors import ConfigError
from ..training.loop import read_run_config
from ..training.rundir import RunDirectory
from ..training.schedules import temperature
from ..training.search import load_fit, load_fit_checkpoint
from .posterior import AdaptedPosterior, EdgePosterior, PosteriorHistory, expected_calibration_error

CHECKPOINTS = ("last", "best")


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu") -> "Run":
    """Open the run folder ``path`` written by ``bayesnas fit`` (or :func:`bayesnas.training.fit`).

    Checks at once that the folder holds a fit config, a readable last checkpoint of the
    current format with a meta-network in it, and metrics; anything missing, another
    command's run or an older checkpoint format raises one :class:`~bayesnas.errors.RunError`
    naming the file.

    Args:
        path: the run folder.
        device: where task posteriors are computed ("cpu", "cuda", "auto").

    Returns:
        :class:`Run`.
    """
    return Run(path, device=device)


class Calibration(NamedTuple):
    """Calibration of a run's predictions on held-out tasks: one posterior sample vs S averaged.

    tasks, samples, points: how many tasks, posterior samples S, query points in all;
    ece_*: expected calibration error (15 bins); acc_*: accuracy; nll_*: mean negative
    log-likelihood of the true class (nats); conf_*: mean probability of the predicted
    class (above the accuracy: overconfident; below: underconfident). ``single`` uses the
    first posterior sample of each task alone, ``averaged`` the mean of all S (Bayesian
    model averaging).
    """

    tasks: int
    samples: int
    points: int
    ece_single: float
    ece_averaged: float
    acc_single: float
    acc_averaged: float
    nll_single: float
    nll_averaged: float
    conf_single: float
    conf_averaged: float


def calibration_seeds(seed, task):
    """Seeds of task ``task``'s adaptation and of its predictions: two independent streams.

    Both come from ``numpy.random.SeedSequence([seed, task, stream])``, stream 0 for the
    guide's steps and 1 for the posterior samples of the prediction; equal seeds would
    make prediction sample 0 replay the noise of inner step 0.
    """
    return tuple(int(np.random.SeedSequence([int(seed), int(task), stream]).generate_state(1, np.uint64)[0] >> 1)
                 for stream in (0, 1))


class Run:
    """A fit run folder, opened by :func:`load_run`.

    Attributes:
        path: the folder; directory: its :class:`~bayesnas.training.rundir.RunDirectory`;
        config: the run's :class:`~bayesnas.config.FitConfig`; device: torch.device of
        task posteriors; iteration: the iteration of the last checkpoint.
    """

    def __init__(self, path, device="cpu"):
        self.directory = RunDirectory(path)
        self.path = self.directory.path
        self.config = read_run_config(self.directory, FitConfig)
        self.device = resolve_device(device)
        self._states = {}
        self._metas = {}
        self._data = None
        self.iteration = int(self._state("last")["iteration"])
        self.directory.read_metrics()

    def _state(self, which):
        if which not in CHECKPOINTS:
            raise ConfigError(f"which={which!r}: expected one of {', '.join(CHECKPOINTS)}")
        if which not in self._states:
            state = load_fit_checkpoint(self.directory, which)
            self._states[which] = state
        return self._states[which]

    @property
    def checkpoints(self):
        """``{"last": path, "best": path}`` for the checkpoint files that exist.
        """
        files = {w: self.directory.file(f"checkpoint_{w}.pt") for w in CHECKPOINTS}
        return {w: p for w, p in files.items() if os.path.exists(p)}

    @property
    def metrics(self):
        """``metrics.csv`` as a list of dicts, one per iteration (floats, the genotype a string; None where not logged).

        Read on every access, so a run still training shows its newest rows.
        """
        return self.directory.read_metrics()

    def metrics_frame(self):
        """``metrics.csv`` as a ``pandas.DataFrame`` indexed by iteration (needs pandas).
        """
        try:
            import pandas
        except ImportError:
            raise ImportError("metrics_frame() needs pandas: pip install pandas "
                              "(or use run.metrics, a list of dicts)") from None
        frame = pandas.DataFrame(self.metrics)
        if "iteration" in frame:
            frame["iteration"] = frame["iteration"].astype("int64")
            frame = frame.set_index("iteration")
        return frame

    def checkpoint_iteration(self, which="last"):
        """The iteration at which checkpoint ``which`` ("last" or "best") was written.
        """
        return int(self._state(which)["iteration"])

    def temperature(self, which="last"):
        """tau of the training schedule at checkpoint ``which``: what posteriors of it use by default.
        """
        return temperature(self.config, max(self.checkpoint_iteration(which), 1))

    def meta_network(self, which="last"):
        """The :class:`~bayesnas.inference.meta.MetaNetwork` of checkpoint ``which``, on ``self.device``.
        """
        if which not in self._metas:
            self._state(which)
            _, meta, data = load_fit(self.path, which, self.device)
            self._metas[which] = meta
            self._data = data
        return self._metas[which]

    @property
    def data(self):
        """The :class:`~bayesnas.data.FewShotData` the run trained on (opened on first use).
        """
        if self._data is None:
            self._data = open_data(self.config.data)
        return self._data

    def edge_posterior(self, which="last"):
        """The meta-level edge posterior ``softmax(alpha)`` of checkpoint ``which``.

        Returns:
            :class:`~bayesnas.analysis.posterior.EdgePosterior` (``.probs`` per cell
            ``[14, 10]``, tau = the schedule's temperature at that checkpoint).
        """
        meta = self._state(which)["stateful"]["meta"]
        label = f"meta-level posterior ({which} checkpoint, iteration {self.checkpoint_iteration(which)})"
        return EdgePosterior(meta["alpha_normal"], meta["alpha_reduce"], tau=self.temperature(which), label=label)

    def task_posterior(self, support_x, support_y, steps=None, samples=8, tau=None, which="last", seed=None):
        """The posterior q(theta, z | D) of a new task, by the guide's unrolled steps on its support set.

        Args:
            support_x: ``[n, C, H, W]`` images in [0, 1].
            support_y: ``[n]`` labels 0..ways-1.
            steps: unrolled steps (default: the run's ``inner_steps``, as in training).
            samples: default number of posterior samples of ``.predict``.
            tau: temperature (default: the schedule's value at the checkpoint; the KL
                weight is the schedule's too, so the steps are those of training).
            which: "last" or "best" checkpoint.
            seed: seed the steps' samples.

        Returns:
            :class:`~bayesnas.analysis.posterior.AdaptedPosterior`: the EdgePosterior API
            for this task plus ``.predict(query_x)``.
        """
        labels = torch.as_tensor(support_y)
        ways = self.config.ways
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= ways):
            raise ConfigError(f"support_y holds labels {int(labels.min())}..{int(labels.max())}; "
                              f"this run's network has {ways} classes (labels 0..{ways - 1})")
        steps = self.config.inner_steps if steps is None else int(steps)
        return AdaptedPosterior.from_schedule(
            self.meta_network(which), self.config, self.checkpoint_iteration(which), support_x, labels, steps=steps,
            tau=tau, samples=samples, seed=seed,
            label=f"task posterior ({which} checkpoint, {steps} step{'s' * (steps != 1)})")

    def adapt(self, task, **kwargs):
        """:meth:`task_posterior` of a task object (anything with ``support_x`` and ``support_y``).
        """
        return self.task_posterior(task.support_x, task.support_y, **kwargs)

    def task_sampler(self, split=None, seed=0, shots=None, queries=None):
        """A :class:`~bayesnas.data.TaskSampler` of the run's data with its ways (and shots, queries).

        ``split`` defaults to the held-out one: "test" when the data has it, else "val".
        """
        data = self.data
        split = held_out_split(data, split)
        cfg = self.config
        return TaskSampler(data.split(split), cfg.ways, cfg.shots if shots is None else shots,
                           cfg.queries if queries is None else queries, seed=seed, device="cpu",
                           image_size=cfg.image_size)

    def posterior_history(self):
        """The meta-level edge posterior at every logged iteration (``posterior_history.h5``).

        Returns:
            :class:`~bayesnas.analysis.posterior.PosteriorHistory` (``iteration [n]``,
            ``probs`` per cell ``[n, 14, 10]``, ``.plot()``).
        """
        h = self.directory.read_history()
        return PosteriorHistory(h["iteration"], h["alpha_normal"], h["alpha_reduce"],
                                label=f"posterior history of {os.path.basename(os.path.normpath(self.path))}")

    def calibration(self, tasks=50, samples=8, split=None, bins=15, seed=0, which="last", steps=None,
                    progress=False):
        """Calibration on held-out tasks: one posterior sample vs ``samples`` averaged.

        Every task is adapted by :meth:`task_posterior`; its query points are predicted
        by the first posterior sample alone and by the average of all S. Points of all
        tasks are pooled before computing the ECE. Adaptation and prediction draw from
        independent random streams (:func:`calibration_seeds`): prediction sample 0 must
        not reuse the noise the guide's steps were fitted to.

        Args:
            tasks: number of tasks (indices 0..tasks-1 of :meth:`task_sampler`).
            samples: S, posterior samples averaged per prediction.
            split: as in :meth:`task_sampler`.
            bins: ECE bins.
            seed: seeds the task stream, the steps' samples and the posterior samples
                (the same seed gives the same result).
            progress: show a tqdm bar.

        Returns:
            :class:`Calibration`.
        """
        if int(tasks) < 1 or int(samples) < 1:
            raise ConfigError(f"tasks={tasks}, samples={samples}: expected both >= 1")
        sampler = self.task_sampler(split, seed=seed)
        singles, averaged, labels = [], [], []
        for i in tqdm(range(int(tasks)), desc="calibration", disable=not progress, leave=False):
            task = sampler.task(i)
            adapt_seed, predict_seed = calibration_seeds(seed, i)
            post = self.adapt(task, samples=samples, which=which, steps=steps, seed=adapt_seed)
            pred = post.predict(task.query_x, seed=predict_seed)
            singles.append(pred.sample_probs[0])
            averaged.append(pred.probs)
            labels.append(task.query_y)
        labels = torch.cat(labels)
        single, mean = torch.cat(singles), torch.cat(averaged)

        def nll(probs):
            return float(-probs.gather(-1, labels[:, None]).clamp_min(1e-12).log().mean())

        def acc(probs):
            return float((probs.argmax(-1) == labels).float().mean())

        def conf(probs):
            return float(probs.max(-1).values.mean())

        return Calibration(int(tasks), int(samples), labels.numel(),
                           expected_calibration_error(single, labels, bins),
                           expected_calibration_error(mean, labels, bins),
                           acc(single), acc(mean), nll(single), nll(mean), conf(single), conf(mean))

    def __repr__(self):
        cfg = self.config
        return (f"<Run {self.path}: fit, iteration {self.iteration}/{cfg.iterations}, {cfg.variant}, "
                f"{cfg.ways}-way {cfg.shots}-shot, C={cfg.channels}, {cfg.cells} cells>")
