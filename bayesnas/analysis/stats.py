"""The statistics of a comparison: test accuracy over tasks, and paired differences.

The S seeds of an architecture are scored on the same n test tasks, so their S x n
accuracies are not S x n independent samples: each task's accuracy is first averaged over
the seeds, and the mean and 95% CI are taken over the n tasks (pooling would shrink the
interval by up to sqrt(S) with no new information). A difference between two
architectures is paired the same way: the per-task difference of seed-averaged accuracies.

Example (two seeds on the same four tasks: seeds are averaged per task first):

>>> mean, ci, per_task = over_tasks([[0.2, 0.4, 0.6, 0.8], [0.4, 0.2, 0.8, 0.6]])
>>> [round(float(v), 4) for v in per_task], round(mean, 4), round(ci, 4)
([0.3, 0.3, 0.7, 0.7], 0.5, 0.2263)
"""
import numpy as np

from ..errors import ConfigError
from .evaluate import Z_95, mean_confidence_interval


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
