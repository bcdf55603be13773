"""The meta-training loop shared by ``fit`` and ``retrain``.

It owns what both have in common: iterations with a progress bar (losses, accuracy,
ETA), validation at a fixed interval, ``metrics.csv``, atomic ``last``/``best``
checkpoints holding every RNG stream, ``--resume`` that continues exactly where the last
checkpoint left off, and a clear stop on a non-finite loss that keeps the last good
checkpoint. The method-specific work is two callables.

It also holds how a session starts: a new run folder or a resumed one
(:func:`session_config`, :func:`session_run`, :func:`continuable`).
"""
import contextlib
import dataclasses
import logging
import math
import os
import shutil
import sys
import time

import torch
from tqdm.auto import tqdm

from ..config import from_dict, resolve_config
from ..data import TaskSampler, resolve_rotations, selection_split
from ..device import check_precision, determinism, resolve_device
from ..errors import ConfigError, GenotypeError, NonFiniteLossError, RunError
from ..fileio import read_json, write_json
from ..inference.unroll import require_finite
from ..models import BASELINES
from ..rng import capture_rng, restore_rng, rng_states, same_rng, set_rng_states
from .distributed import requested_device
from .rundir import RunDirectory, default_run_path

logger = logging.getLogger(__name__)


def process_device(ctx, cfg):
    """Check that ``cfg.tasks`` splits across the processes and the device runs ``cfg.precision``, set threads,
    return the device.

    Alone, the run's own device setting rules (a resumed run keeps its device); under
    torchrun, the device the process group was set up for.
    """
    ctx.share(cfg.tasks)
    device = ctx.device if ctx.active else resolve_device(cfg.device)
    check_precision(cfg.precision, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return device


def create_run_on_main(ctx, out, kind, config):
    """Create the run folder (``out`` or ``runs/<kind>-<time>``) on rank 0; None on other ranks."""
    path = out or default_run_path(kind)
    run = ctx.on_main(lambda: RunDirectory.create(path, config))
    if not ctx.is_main:
        return None
    run.write_metrics([])
    return run


def read_run_config(run, cls):
    """The config of the run folder ``run`` (a RunDirectory) as a ``cls`` dataclass.

    A missing, unknown or wrongly typed value is one :class:`RunError` naming config.json.
    """
    path = run.file("config.json")
    kind = cls.__name__.replace("Config", "").lower()  # FitConfig -> fit, RetrainConfig -> retrain
    saved = run.config()
    if not isinstance(saved, dict):
        raise RunError(f"{path}: expected a JSON object of {cls.__name__} fields, found {type(saved).__name__}")
    arch = saved.get("arch")
    if isinstance(arch, str) and arch.strip().lower() not in BASELINES:
        # a saved config holds the genotype itself: a path in it is never read (it could name a device)
        raise RunError(f"{path}: arch={arch!r}: expected one of {', '.join(BASELINES)} or a genotype object")
    try:
        return from_dict(cls, saved, source=path)
    except (ConfigError, GenotypeError) as exc:
        raise RunError(f"{exc}; not usable as the config of a {kind} run") from None


def resume_run(run, cls, iterations=None):
    """What a resumed run continues from: ``(config, checkpoint state)`` of the folder ``run``.

    The config is the run's own (checked as by :func:`read_run_config`), its budget raised
    to ``iterations`` when that is larger: through the config's ``extended``, which keeps
    its schedules continuous, and written back to config.json (the folder states its own
    budget) only once the last checkpoint has loaded.
    """
    cfg = read_run_config(run, cls)
    state = run.load_checkpoint()
    run.lock()
    if iterations is not None and iterations > cfg.iterations:
        cfg = cfg.extended(iterations)
        write_json(run.file("config.json"), cfg.to_dict())
    return cfg, state


def session_config(ctx, cls, config, resume):
    """What a session trains with: ``(config, checkpoint state)``.

    A new run: ``config`` (a ``cls`` or a dict of its fields) resolved and validated, no
    state. A resumed run (``resume``, its folder): the run's own config and last
    checkpoint (:func:`resume_run`, read on rank 0); ``config`` may only raise the budget and
    name the device and the precision (a config dataclass's default ones count as not given).
    """
    if resume is not None:
        requested = config.get("iterations") if isinstance(config, dict) else getattr(config, "iterations", None)
        cfg, state = ctx.on_main(lambda: resume_run(RunDirectory(resume), cls, requested))
        device = resume_device(resume, config)
        if ctx.is_main and device == "cpu" and cfg.device == "auto" and torch.cuda.is_available():
            print(f"note: {resume} was made on the CPU and continues there (--device cuda moves it)", file=sys.stderr)
        precision = config.get("precision") if isinstance(config, dict) else getattr(config, "precision", "fp32")
        if precision is None or (not isinstance(config, dict) and precision == "fp32"):
            precision = cfg.precision  # the run's own
        return dataclasses.replace(cfg, device=device, precision=check_precision(precision, torch.device("cpu"))), state
    cfg = config.resolved() if isinstance(config, cls) else resolve_config(cls, overrides=config or {})
    cfg.validate()
    return cfg, None


def resume_device(resume, config=None):
    """The device setting a resumed run trains with.

    ``config`` (what the resume was called with: a dict of the settings given, or a config
    dataclass, whose default "auto" counts as not given) may name it: the user's
    ``--device``. Otherwise the run's own setting, except
    that "auto" keeps the device type of the run's last session, so that a run made on the
    CPU stays there on a GPU machine (a GPU run resumed where there is none goes to the CPU,
    as "auto" says). The folder's problems are left to the resume itself to report.
    """
    requested = requested_device(config)
    if requested is not None and (isinstance(config, dict) or requested != "auto"):
        return requested
    run = RunDirectory(resume)
    try:
        saved = run.config().get("device", "auto")
    except (RunError, AttributeError):
        return "auto"
    if saved != "auto":
        return saved
    # sessions.json read loosely here (training.card checks it in full, and imports this module)
    path = run.file("sessions.json")
    try:
        sessions = read_json(path, RunError, "JSON list of session records") if os.path.lexists(path) else []
    except RunError:
        sessions = []
    last = sessions[-1] if isinstance(sessions, list) and sessions else None
    return "cpu" if isinstance(last, dict) and str(last.get("device")) == "cpu" else "auto"


def run_device(run_dir, device=None):
    """The torch.device to read or evaluate the run in ``run_dir`` on.

    ``device`` when given (a device this machine lacks is a ConfigError naming it); else the
    one the run trains on when resumed (:func:`resume_device`: a run made on the CPU stays
    there), or, when this machine lacks that one, what "auto" picks here.
    """
    if device is not None:
        return resolve_device(device)
    try:
        return resolve_device(resume_device(run_dir))
    except ConfigError:
        return resolve_device("auto")


def session_run(ctx, cfg, out, resume, kind):
    """The run folder a session writes on rank 0 (None on the others): ``resume``'s, or a new one holding ``cfg``.

    Called once ``cfg`` states what will run (values resolved from the data filled in).
    """
    if resume is not None:
        return RunDirectory(resume) if ctx.is_main else None
    return create_run_on_main(ctx, out, kind, cfg.to_dict())


def folder_contents(path):
    """The names in folder ``path`` (None: it does not exist), to tell later what a session added."""
    return set(os.listdir(path)) if os.path.isdir(path) else None


def discard_new_run(path, before):
    """Remove what a new session wrote to ``path`` (``before``: :func:`folder_contents` before it began).

    For a run that could not take its first iteration (a setting the device cannot honour):
    nothing of it is left, and the same folder can be used again.
    """
    if before is None:
        shutil.rmtree(path, ignore_errors=True)
        return
    for name in set(os.listdir(path)) - before:
        target = os.path.join(path, name)
        if os.path.isdir(target):
            shutil.rmtree(target, ignore_errors=True)
        else:
            os.remove(target)


@contextlib.contextmanager
def training_session(cfg, run, resume, before, loop):
    """The block that runs ``loop``, under ``cfg.deterministic`` (:func:`~bayesnas.device.determinism`).

    A :class:`ConfigError` raised before the first iteration of a new run (an op without a
    deterministic kernel) removes the run folder's new files: nothing is left written.
    """
    try:
        with determinism(cfg.deterministic):
            yield
    except ConfigError:
        if run is not None and resume is None and not loop.rows:
            discard_new_run(run.path, before)
        raise


def continuable(path, cfg):
    """Whether ``path`` holds a run of ``cfg``'s settings to continue (False: no run there).

    A run with other settings (the budget may only grow) is a :class:`RunError`: continuing
    it would not train what ``cfg`` says. A setting its config.json lacks was written
    before the setting existed, and ran with the default.
    """
    run = RunDirectory(path)
    if not os.path.exists(run.file("checkpoint_last.pt")):
        return False
    saved, wanted, defaults = run.config(), cfg.to_dict(), type(cfg)().to_dict()
    differ = sorted(k for k in wanted if k != "iterations" and saved.get(k, defaults[k]) != wanted[k])
    if differ or saved.get("iterations", 0) > cfg.iterations:
        raise RunError(f"{path}: holds a run with other settings ({', '.join(differ) or 'iterations'}); "
                       f"the comparison would not share one budget: choose another --out")
    return True


def data_config(cfg, data):
    """``cfg`` with the settings the data decides when left to it (``rotations`` None: on for an
    Omniglot file only) made explicit: a new config, so the run folder records what ran."""
    return dataclasses.replace(cfg, rotations=resolve_rotations(cfg.rotations, data))


def task_samplers(cfg, data, device):
    """Training and validation samplers of a FitConfig or RetrainConfig, under the protocol rules.

    Training tasks come from the ``train`` split, validation tasks from the model-selection
    split (:func:`~bayesnas.data.protocol.selection_split`: ``val``; a file without one is a
    DataError naming it unless ``cfg.select_on == "test"``). ``cfg.rotations`` None (auto) is
    decided by the file (on for Omniglot only): :func:`data_config` says so in a new config,
    the one a run folder records.
    """
    size = getattr(cfg, "image_size", None)
    val_split = selection_split(data, cfg.select_on)
    train = TaskSampler(data.split("train"), cfg.ways, cfg.shots, cfg.queries, seed=cfg.seed,
                        rotations=resolve_rotations(cfg.rotations, data), device=device, image_size=size)
    val = TaskSampler(data.split(val_split), cfg.ways, cfg.shots, cfg.queries, seed=cfg.seed + 1, device=device,
                      image_size=size)
    return train, val


def rank_rng(saved, rank, world_size):
    """The RNG state process ``rank`` of ``world_size`` resumes from, and a note when it is not its own.

    ``saved``: a checkpoint's ``"rng"``, a list with one state per process of the run that
    wrote it (older checkpoints: one dict, rank 0's). The same number of processes: each its
    own. Another number: rank 0's for every process. fit and retrain draw identically on
    every rank (see :func:`~bayesnas.inference.model.task_share`), so when the saved
    states are all equal the run still continues exactly, and the note says so.
    """
    states = saved if isinstance(saved, list) else [saved]
    if len(states) == world_size:
        return states[rank], None
    if not isinstance(saved, list):
        why = "an older checkpoint holds rank 0's only"
    elif all(same_rng(states[0], s) for s in states[1:]):
        why = f"the {len(states)} saved ones are equal, so the run continues as it would have"
    else:
        why = f"the {len(states)} saved ones differ, so random draws differ from an uninterrupted run"
    return states[0], (f"resumed with {_processes(world_size)} from a checkpoint of {_processes(len(states))}: "
                       f"each process restores rank 0's random streams; {why}")


def _processes(n):
    return f"{n} process" + ("es" if n != 1 else "")


def check_finite(loss, what):
    """Raise NonFiniteLossError naming ``what`` unless the scalar ``loss`` is finite (or, inside
    :func:`~bayesnas.inference.unroll.deferred_finite_checks`, record the check for one read per step)."""
    require_finite(loss, what)


def read_step(metrics, checks):
    """The step's metrics as floats, and its deferred finiteness checks, in one host sync.

    Args:
        metrics: dict name -> scalar tensor (or float); checks: the step's
            :class:`~bayesnas.inference.unroll.FiniteChecks`.

    Returns:
        dict name -> float. Raises the NonFiniteLossError of the first failed check.
    """
    names = [k for k, v in metrics.items() if torch.is_tensor(v)]
    parts = [checks.values()] + [metrics[k].detach().reshape(1).to(torch.float64) for k in names]
    device = next((p.device for p in parts if p.numel()), torch.device("cpu"))
    values = torch.cat([p.to(device) for p in parts]).tolist()
    count = len(checks.whats)
    checks.raise_first(values[:count])
    read = dict(zip(names, values[count:], strict=True))
    return {k: read[k] if k in read else v for k, v in metrics.items()}


def backward_per_task(num_tasks, task_loss, what, rng_device=None, context=None):
    """The memory-bounded backward: one task's graph at a time.

    ``task_loss(t) -> (loss_t, output_t)`` builds task t's share of the meta-batch loss;
    its backward runs before the next task's graph is built. Each task's meta-gradient is
    computed whole and then added to ``.grad`` in task order, so splitting the T tasks into
    shares gives bitwise equal gradients in one process, and T processes with one task
    each (summed by all-reduce) train to the same parameters up to float32 rounding
    (tests/test_distributed.py: ``torch.equal`` in one process, rtol 1e-4 across processes).
    With ``rng_device``, every task starts from the random state of the call; ``context(t)``,
    a context manager, is active around task t's loss and backward (the backward may
    recompute inner steps, which must draw the same noise: see
    :func:`~bayesnas.inference.model.task_share`).

    Returns:
        ``(loss, outputs)``: the detached sum of the task losses, and the ``output_t`` in order.
    """
    states = rng_states(rng_device) if rng_device is not None else None
    loss, outputs = 0.0, []
    for t in range(num_tasks):
        if states is not None:
            set_rng_states(states, rng_device)
        with context(t) if context is not None else contextlib.nullcontext():
            part, output = task_loss(t)
            check_finite(part, what)
            part.backward()
        loss = loss + part.detach()
        outputs.append(output)
    return loss, outputs


class Callback:
    """What a :class:`TrainingLoop` tells the objects that watch a run: the one hook mechanism.

    Each hook does nothing unless a subclass overrides it. The loop calls them in the order
    of its ``callbacks``: :meth:`on_step` after every iteration (its metrics row complete,
    validation scores included), :meth:`on_checkpoint` after every checkpoint is written,
    :meth:`on_end` when :meth:`TrainingLoop.run` ends, however it ends (an exception
    included). A plain ``callable(iteration, row)`` given as a callback is told each step
    (:class:`StepFunction`).

    Example (a callback that keeps the validation accuracies)::

        class Scores(Callback):
            def __init__(self):
                self.seen = []

            def on_step(self, iteration, row, validated):
                if validated:
                    self.seen.append(row["val_acc"])
    """

    def on_step(self, iteration: int, row: dict, validated: bool) -> None:
        """After iteration ``iteration``; ``row`` its metrics; ``validated``: it validated."""

    def on_checkpoint(self, iteration: int, extra: dict) -> None:
        """After the checkpoint of ``iteration`` is written; ``extra`` the method's state saved with it."""

    def on_end(self) -> None:
        """When the loop stops, however it stops: release what the callback holds."""


class StepFunction(Callback):
    """A plain ``callable(iteration, row)`` as a :class:`Callback`, told every step."""

    def __init__(self, function):
        self.function = function

    def on_step(self, iteration, row, validated):
        self.function(iteration, row)


def as_callback(hook):
    """``hook`` as a :class:`Callback`: itself, or a plain callable wrapped in :class:`StepFunction`."""
    return hook if isinstance(hook, Callback) else StepFunction(hook)


class TrainingLoop:
    """Iterate, log, validate and checkpoint; resume from a checkpoint.

    Args:
        run: a :class:`~bayesnas.training.rundir.RunDirectory`, or None for no files.
        stateful: dict name -> object with ``state_dict``/``load_state_dict`` (modules,
            optimisers) saved in every checkpoint.
        iterations: total number of iterations (a resumed loop runs up to this number).
        val_every, checkpoint_every: intervals in iterations (the last iteration always
            validates and checkpoints).
        score_key: the validation metric that decides ``best`` (higher is better).
        extra: a dict of state of the method (e.g. a posterior history) saved in
            checkpoints, as plain data (tensors, numbers, strings, lists, dicts); a
            callback's ``on_checkpoint`` writes its files.
        progress: show a tqdm bar; desc: its label (also of the log lines: the start, each
            validation's scores, through :mod:`logging` at INFO).
        callbacks: :class:`Callback` objects (e.g. a
            :class:`~bayesnas.training.tensorboard_logger.TensorBoardLogger`) or plain
            callables ``(iteration, row)``, told of each step, checkpoint and the end, in order.
        device: the device this process trains on (its GPU's random stream is checkpointed).
        ctx: the :class:`~bayesnas.training.distributed.DistributedContext`; a checkpoint
            holds every rank's random streams, and each rank resumes from its own.
    """

    def __init__(self, run, stateful, iterations, val_every=50, checkpoint_every=25, score_key="val_acc",
                 extra=None, progress=True, desc="train", callbacks=(), device=None, ctx=None):
        self.run_dir = run
        self.stateful = stateful
        self.iterations = int(iterations)
        self.val_every = int(val_every)
        self.checkpoint_every = int(checkpoint_every)
        self.score_key = score_key
        self.extra = extra if extra is not None else {}
        self.progress = progress
        self.desc = desc
        self.callbacks = [as_callback(c) for c in callbacks]
        self.device = device if device is not None else torch.device("cpu")
        self.ctx = ctx
        self.start = 0
        self.rows = []
        self.best = -math.inf
        self.last_checkpoint = None
        self.resume_notes = []

    def resume(self, state):
        """Load a checkpoint dict written by this loop: modules, optimisers, RNG, metrics, extra."""
        missing = [k for k in self.stateful if k not in state.get("stateful", {})]
        if missing:
            raise RunError(f"checkpoint lacks {', '.join(missing)}; it was written by another command or version")
        for name, obj in self.stateful.items():
            obj.load_state_dict(state["stateful"][name])
        self.start = int(state["iteration"])
        self.rows = list(state["rows"])
        self.best = state["best"]
        self.extra.update(state.get("extra", {}))
        rank, world = (self.ctx.rank, self.ctx.world_size) if self.ctx is not None else (0, 1)
        rng, note = rank_rng(state["rng"], rank, world)
        device_note = restore_rng(rng, self.device)
        self.last_checkpoint = self.start
        self.resume_notes = [n for n in (note, device_note) if n is not None]
        if rank == 0:
            for line in self.resume_notes:
                print(f"note: {line}", file=sys.stderr)

    def _checkpoint(self, iteration, best):
        # on every rank (each holds the same parameters), before the collective that gathers the streams
        for name, obj in self.stateful.items():
            if isinstance(obj, torch.nn.Module) and not all(torch.isfinite(p).all() for p in obj.parameters()):
                raise self._non_finite(iteration, f"the parameters of '{name}' are not finite")
        rng = capture_rng(self.device)
        rng = self.ctx.gather_objects(rng) if self.ctx is not None else [rng]
        if self.run_dir is None:
            return
        state = {
            "iteration": iteration,
            "stateful": {k: v.state_dict() for k, v in self.stateful.items()},
            "rows": self.rows,
            "best": self.best,
            "extra": self.extra,
            "rng": rng,
        }
        self.run_dir.save_checkpoint(state, best=best)
        for callback in self.callbacks:
            callback.on_checkpoint(iteration, self.extra)
        self.last_checkpoint = iteration

    def _non_finite(self, iteration, detail):
        if self.last_checkpoint is None or self.run_dir is None:
            kept = "no checkpoint was written yet"
        else:
            kept = (f"the last good checkpoint ({self.run_dir.file('checkpoint_last.pt')}, "
                    f"iteration {self.last_checkpoint}) is kept")
        return NonFiniteLossError(f"iteration {iteration}: {detail}; {kept}. Try a smaller step size or --kl-anneal.")

    def run(self, step, validate):
        """Run iterations ``start+1 .. iterations``.

        ``step(iteration) -> dict`` of floats (must include "loss"); ``validate(iteration)
        -> dict`` of floats (including ``score_key``). Returns the list of metric rows.
        A new run first writes a checkpoint at iteration 0 (the initial parameters and
        RNG streams), so a run killed before its first regular checkpoint resumes exactly.
        """
        if self.last_checkpoint is None:
            self._checkpoint(self.start, best=False)
        bar = tqdm(total=self.iterations, initial=self.start, desc=self.desc, disable=not self.progress,
                   dynamic_ncols=True, leave=True)
        if self.start < self.iterations:
            logger.info("[%s] iterations %d to %d%s", self.desc, self.start + 1, self.iterations,
                        f" (resumed at {self.start})" if self.start else "")
        t0 = time.perf_counter()
        try:
            for iteration in range(self.start + 1, self.iterations + 1):
                t_it = time.perf_counter()
                try:
                    row = {"iteration": iteration, **step(iteration)}
                except NonFiniteLossError as exc:
                    raise self._non_finite(iteration, str(exc)) from None
                if not all(math.isfinite(v) for v in row.values() if isinstance(v, float)):
                    bad = ", ".join(f"{k}={v}" for k, v in row.items() if isinstance(v, float) and not math.isfinite(v))
                    raise self._non_finite(iteration, f"non-finite {bad}")
                row["seconds"] = time.perf_counter() - t_it
                last = iteration == self.iterations
                is_best = False
                validated = iteration % self.val_every == 0 or last
                if validated:
                    scores = validate(iteration)
                    row.update(scores)
                    if scores[self.score_key] > self.best:
                        self.best, is_best = scores[self.score_key], True
                    logger.info("[%s] iteration %d: %s", self.desc, iteration,
                                ", ".join(f"{k}={v:.4g}" for k, v in scores.items()))
                    bar.unpause()  # the bar's rate and ETA count training steps, not the validation
                self.rows.append(row)
                for callback in self.callbacks:
                    callback.on_step(iteration, row, validated)
                if iteration % self.checkpoint_every == 0 or last or is_best:
                    if self.run_dir is not None:
                        self.run_dir.write_metrics(self.rows)
                    self._checkpoint(iteration, best=is_best)
                bar.set_postfix({k: f"{v:.3g}" for k, v in row.items()
                                 if k in ("loss", "acc", "kl_theta", "kl_z", "tau", "val_acc")}, refresh=False)
                bar.update(1)
        finally:
            bar.close()
            for callback in self.callbacks:
                callback.on_end()
        self.elapsed = time.perf_counter() - t0
        return self.rows
