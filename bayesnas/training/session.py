"""One session skeleton for every training command: ``fit`` and ``retrain`` run the same sequence.

Config (new or resumed) -> device -> data (and the settings it decides) -> task samplers ->
seeds -> the method's model -> run folder (locked, config written) -> callbacks -> loop
(resumed from its checkpoint, or fresh) -> log file, the session record and the run card
around the loop. What differs between the commands is a :class:`Method`: its model, its step,
its validation and its callbacks.

Usage (what :func:`~bayesnas.training.search.fit` does)::

    with distributed(device) as ctx:
        session = run_session(ctx, FitConfig, config, out, resume, "fit", SearchMethod, progress=True)
    session.rows[-1]["val_acc"]
"""
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ..data import open_data
from ..rng import seed_everything
from .card import recorded_session
from .logs import LOG_FILE, session_log
from .loop import (
    Callback,
    TrainingLoop,
    data_config,
    folder_contents,
    process_device,
    session_config,
    session_run,
    task_samplers,
    training_session,
)


class Method:
    """What a training command trains: built once the config, data, device and samplers are known.

    A subclass sets ``stateful`` (name -> module or optimiser, saved in every checkpoint),
    ``extra`` (plain state saved with them), ``desc`` (the progress bar's label), and defines
    :meth:`step` and :meth:`validate` as :class:`~bayesnas.training.loop.TrainingLoop` takes them.
    """

    desc = "train"
    extra: dict = {}
    stateful: dict = {}

    def callbacks(self, run, tensorboard):
        """The method's own callbacks (TensorBoard when ``tensorboard``), told before the user's."""
        return []

    def resumed(self, loop):
        """After ``loop`` has loaded the checkpoint of a resumed run."""

    def fresh(self, loop):
        """Before the first iteration of a new run."""

    def step(self, iteration):
        raise NotImplementedError

    def validate(self, iteration):
        raise NotImplementedError


@dataclass
class Session:
    """A finished session: its resolved config, method, run folder (None off rank 0), loop and rows."""

    config: Any
    method: Method
    run: Any
    loop: TrainingLoop
    rows: list


def run_session(ctx, cls, config, out, resume, kind: str, method: Callable[..., Method], *, progress: bool = True,
                callbacks: Iterable[Callback | Callable[[int, dict], Any]] = (), tensorboard: bool = False,
                command: str | None = None) -> Session:
    """Run one training session of ``kind`` ("fit", "retrain") in the distributed context ``ctx``.

    Args:
        cls: the config class; config: a ``cls``, a dict of its fields, or (resume) the
            settings given alongside; out, resume: the new run folder or the run to continue.
        method: ``method(ctx, cfg, data, device, train_sampler, val_sampler, progress)`` ->
            a :class:`Method`, built after the seeds are set and before the run folder exists
            (a model the data cannot feed leaves no folder behind).
        progress, callbacks, tensorboard, command: as :func:`~bayesnas.training.search.fit` takes them.

    Returns:
        :class:`Session`.
    """
    cfg, state = session_config(ctx, cls, config, resume)
    device = process_device(ctx, cfg)
    data = open_data(cfg.data)
    cfg = data_config(cfg, data)
    train_sampler, val_sampler = task_samplers(cfg, data, device)
    seed_everything(cfg.seed, device)  # the same on every rank: the initial parameters agree
    trained = method(ctx, cfg, data, device, train_sampler, val_sampler, progress)

    before = folder_contents(out) if out is not None and ctx.is_main else None
    run = session_run(ctx, cfg, out, resume, kind)
    watchers = (trained.callbacks(run, tensorboard) if run is not None else []) + list(callbacks)
    loop = TrainingLoop(run, trained.stateful, cfg.iterations, val_every=cfg.val_every,
                        checkpoint_every=cfg.checkpoint_every, score_key="val_acc", extra=trained.extra,
                        progress=progress and ctx.is_main, desc=trained.desc, callbacks=watchers, device=device,
                        ctx=ctx)
    if state is not None:
        loop.resume(state)
        trained.resumed(loop)
    else:
        trained.fresh(loop)
    with session_log(run.file(LOG_FILE) if run is not None else None, console=progress, rank=ctx.rank), \
            training_session(cfg, run, resume, before, loop), \
            recorded_session(run.path if run is not None else None, loop, command, device, data.path, ctx.world_size,
                             cfg.precision):
        rows = loop.run(trained.step, trained.validate)
    return Session(cfg, trained, run, loop, rows)
