"""Width matching: the width at which each architecture of a comparison has one parameter count.

At equal width the cells differ up to 10x in parameters, so by default each architecture
gets its own width (``channels``: Conv-4 filters, or the first cell's C) chosen so that its
trainable parameter count is within ±10% of one target (:func:`matched_channels`); the
target defaults to the largest row's count at the configured channels (:func:`row_widths`
says why), so no row is narrower than that.

>>> from bayesnas.config import RetrainConfig
>>> matched_channels("conv4", 7269, RetrainConfig())   # Conv-4 has 7,269 at its default 16 filters
(16, 7269)
"""
import dataclasses

import torch

from ..errors import ConfigError
from ..models import count_parameters
from ..training.retrain import build_retrain_network

#: how far from the target a row's parameter count may be when parameters are matched
PARAM_TOLERANCE = 0.10
#: the widest network the width search tries
MAX_CHANNELS = 1024


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
