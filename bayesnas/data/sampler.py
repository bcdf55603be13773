"""N-way K-shot task sampling: each task is a pure function of (seed, index).

Task ``index`` is drawn from its own random stream, ``numpy.random.default_rng([seed,
index])``: resuming at index i, or splitting work over R processes (rank r takes indices
r, r + R, r + 2R, ...), gives exactly the tasks a single uninterrupted run would.

For one task: ``ways`` distinct classes are drawn uniformly; the order they are drawn in
is the label assignment (class ``classes[j]`` gets label j), so labels are a uniformly
shuffled assignment. From each class ``shots + queries`` distinct images are drawn; the
first ``shots`` are support, the rest query, so the two never share an image. Examples
are grouped by label: ``support_y = [0]*shots + [1]*shots + ...``.

With ``rotations=True`` each class c in 0..n-1 also exists rotated by k quarter turns
(``torch.rot90`` over (H, W), k = 1, 2, 3) as the new class ``c + k * n``; ids 0..n-1
are the unrotated classes with or without rotations.

Example:

>>> from bayesnas.data import load_default
>>> sampler = TaskSampler(load_default().split("train"), ways=5, shots=1, queries=15)
>>> sampler.task(0).support_x.shape        # float32 in [0, 1]
torch.Size([5, 1, 28, 28])
>>> sampler.batch(range(8, 12)).support_x.shape
torch.Size([4, 5, 1, 28, 28])
"""
import operator
from typing import Iterable, NamedTuple

import numpy as np
import torch

from ..device import resolve_device
from ..errors import ConfigError, DataError
from .store import SplitData

ROTATIONS = 4


class Task(NamedTuple):
    """One few-shot task (or a batch of them, with a leading ``[tasks]`` dimension).

    support_x: float32 ``[ways*shots, C, H, W]`` in [0, 1]; support_y: int64 ``[ways*shots]``
    with labels 0..ways-1; query_x / query_y likewise with ``ways*queries``; classes: int64
    ``[ways]``, the class id behind each label (``c + k*n`` for rotation k).
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: torch.Tensor


def select_tasks(batch, index):
    """Tasks ``index`` (an int slice) of a meta-batch, as the same kind of object.

    Works for a :class:`Task` batch and for any object with ``support_x``, ``support_y``,
    ``query_x``, ``query_y`` attributes (others are left out).
    """
    if isinstance(batch, Task):
        return Task(*(f[index] for f in batch))
    from types import SimpleNamespace

    return SimpleNamespace(**{k: getattr(batch, k)[index] for k in ("support_x", "support_y", "query_x", "query_y")})


class TaskSampler:
    """Draws N-way K-shot tasks from a :class:`SplitData` held in memory.

    Args:
        split: the split to sample from (``open_dataset(path).split("train")``).
        ways: classes per task (>= 2); shots: support images per class (>= 1);
            queries: query images per class (>= 1).
        seed: the seed of every task's stream (with the task's index).
        rotations: add the three 90-degree rotations of every class as new classes.
        device: where the images live and tasks are returned ("cpu", "cuda", "auto", ...).
        image_size: resize every image to ``image_size x image_size`` once, when the
            sampler is built (area averaging, rounded back to 8 bits: 28 -> 14 is the mean
            of each 2x2 block); None keeps the stored size. A search on smaller images
            (a proxy, as DARTS searched on CIFAR) costs about the pixel ratio less.

    Impossible settings (too few classes, a class with fewer than shots + queries images)
    raise :class:`DataError` here, before any sampling.
    """

    def __init__(self, split: SplitData, ways: int, shots: int, queries: int, seed: int = 0,
                 rotations: bool = False, device="cpu", image_size=None):
        self.ways = _count("ways", ways, 2)
        self.shots = _count("shots", shots, 1)
        self.queries = _count("queries", queries, 1)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self.rotations = bool(rotations)
        self.split = split
        where = f"{split.path}: split '{split.name}'"
        height, width = split.image_size
        if self.rotations and height != width:
            raise ConfigError(f"{where}: rotations need square images, these are {height}x{width}")
        self.num_classes = split.num_classes * (ROTATIONS if self.rotations else 1)
        if self.num_classes < self.ways:
            extra = f" ({self.num_classes} with rotations)" if self.rotations else ""
            raise DataError(f"{where} has {split.num_classes} classes{extra}, "
                            f"{self.ways}-way needs at least {self.ways}")
        per_class = self.shots + self.queries
        smallest = int(split.counts.argmin())
        if int(split.counts[smallest]) < per_class:
            raise DataError(f"{where}: class '{split.class_names[smallest]}' has "
                            f"{int(split.counts[smallest])} images, {self.shots}-shot "
                            f"{self.queries}-query needs {per_class}")
        self.device = resolve_device(str(device))
        self._images = _resized(split.images, image_size, where).to(self.device)
        self.image_size = tuple(self._images.shape[-2:])
        self._counts = split.counts.numpy()
        self._offsets = split.class_offsets.numpy()
        self._max_count = int(self._counts.max())
        self._columns = np.arange(self._max_count)
        labels = torch.arange(self.ways, device=self.device)
        self._support_y = labels.repeat_interleave(self.shots)
        self._query_y = labels.repeat_interleave(self.queries)

    def _draw(self, index):
        """Class ids ``[ways]`` and image rows ``[ways, shots + queries]`` of task ``index``."""
        try:
            value = -1 if isinstance(index, bool) else operator.index(index)
        except TypeError:
            value = -1
        if value < 0:
            raise ConfigError(f"task indices must be non-negative integers, got {index!r}")
        rng = np.random.default_rng([self.seed, value])
        classes = rng.choice(self.num_classes, size=self.ways, replace=False)
        base = classes % self.split.num_classes
        # A random key per image slot, +inf past each class's count: the smallest keys
        # are a uniform random subset in random order, for all classes at once.
        keys = rng.random((self.ways, self._max_count))
        keys[self._columns[None, :] >= self._counts[base][:, None]] = np.inf
        picks = np.argsort(keys, axis=1)[:, :self.shots + self.queries]
        return classes, self._offsets[base][:, None] + picks

    def task(self, index: int) -> Task:
        """Task number ``index``: the same (seed, index) always gives the same task."""
        return Task(*(t[0] for t in self.batch([index])))

    def batch(self, indices: Iterable[int]) -> Task:
        """Tasks ``indices`` stacked along a leading ``[tasks]`` dimension."""
        draws = [self._draw(i) for i in indices]
        if not draws:
            raise ConfigError("batch needs at least one task index")
        tasks, shots = len(draws), self.shots
        classes = np.stack([c for c, _ in draws])                   # [tasks, ways]
        rows = np.stack([r for _, r in draws])                      # [tasks, ways, shots + queries]
        # All support rows, then all query rows: one gather, and both halves stay contiguous.
        order = np.concatenate([rows[:, :, :shots].ravel(), rows[:, :, shots:].ravel()])
        images = self._images.index_select(0, torch.from_numpy(order).to(self.device))
        if self.rotations:
            turns = classes // self.split.num_classes
            turns = np.concatenate([np.repeat(turns, shots, axis=1).ravel(),
                                    np.repeat(turns, self.queries, axis=1).ravel()])
            for k in range(1, ROTATIONS):
                chosen = torch.from_numpy(np.flatnonzero(turns == k)).to(self.device)
                if len(chosen):
                    turned = torch.rot90(images.index_select(0, chosen), k, dims=(-2, -1))
                    images.index_copy_(0, chosen, turned)
        x = torch.true_divide(images, 255.0)                        # uint8 -> float32 in [0, 1]
        n_support = tasks * self.ways * shots
        return Task(
            support_x=x[:n_support].view(tasks, self.ways * shots, *x.shape[1:]),
            support_y=self._support_y.repeat(tasks, 1),
            query_x=x[n_support:].view(tasks, self.ways * self.queries, *x.shape[1:]),
            query_y=self._query_y.repeat(tasks, 1),
            classes=torch.from_numpy(classes).to(self.device),
        )

    def __repr__(self):
        return (f"TaskSampler({self.split.path!r}, split={self.split.name!r}, ways={self.ways}, "
                f"shots={self.shots}, queries={self.queries}, seed={self.seed}, "
                f"rotations={self.rotations}, device={str(self.device)!r})")


def _resized(images, size, where):
    """uint8 ``[N, C, H, W]`` images at ``size x size`` (area averaging, rounded), or as they are."""
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    size = _count("image_size", size, 1)
    height, width = images.shape[-2:]
    if size > min(height, width):
        raise ConfigError(f"{where}: image_size {size} is larger than the stored {height}x{width} "
                          f"(only downsizing is supported)")
    out = torch.empty(images.shape[:2] + (size, size), dtype=torch.uint8)
    for first in range(0, images.shape[0], 4096):  # bounded temporary float memory
        chunk = images[first:first + 4096].float()
        out[first:first + 4096] = torch.nn.functional.interpolate(chunk, size=(size, size), mode="area").round_()
    return out


def _count(what, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)
