"""The plateau rule: train a run until its validation accuracy has stopped rising.

:func:`validation_rise` measures how much a run's validation accuracy was still rising at the
end; :func:`train_to_plateau` extends a run by :data:`EXTEND_BY` iterations at a time while the
rise is above :data:`PLATEAU_RISE`, up to a cap, so every row of a comparison gets the same
rule rather than the same budget.

>>> budget_text(400, max_iterations=900, extend_by=300)
'400 iterations, +300 at a time while val rise > 0.02 (at most 900)'
"""
import os

from ..config import CompareSettings
from ..errors import ConfigError
from ..training.loop import continuable
from ..training.retrain import retrain
from ..training.rundir import RunDirectory

#: the plateau rule (:func:`validation_rise`): mean validation accuracy over the last
#: ``PLATEAU_WINDOW`` iterations against the same window ``PLATEAU_LAG`` iterations earlier
PLATEAU_WINDOW, PLATEAU_LAG = 100, 300
#: a rise above this is "still learning"
PLATEAU_RISE = 0.02
#: iterations added at a time when runs are trained until the plateau (the setting's default)
EXTEND_BY: int = CompareSettings.extend_by


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


def check_plateau_budget(max_iterations, extend_by, iterations):
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
