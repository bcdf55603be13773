"""Edge posteriors of BASE, for looking at: which operations, how sure, how a task moves them.

Two posteriors over the edge variables z share one API (:class:`EdgePosterior`):

* the meta-level one, ``softmax(alpha)``: what the meta-network learned across tasks;
* a task's, ``softmax(phi)`` after the guide's unrolled steps on that task's support set
  (:class:`AdaptedPosterior`, which also holds the task's weight posterior and predicts).

Probabilities are ``[14 edges, 10 ops]`` per cell type. Edge ``e`` is
``EDGES[e] = (source, target)``: ``source`` is a state of the cell (0, 1: the two cell
inputs; ``j >= 2``: intermediate node ``j - 2``), ``target`` an intermediate node 0..3.

Usage::

    post = EdgePosterior.from_meta(meta)              # meta-level, from a MetaNetwork
    post.probs.normal                                 # [14, 10], rows sum to 1
    post.derive()                                     # the Genotype derive-cell gives
    task = AdaptedPosterior.from_support(meta, support_x, support_y, steps=4)
    task.predict(query_x, samples=8).probs            # [B, ways], Bayesian model average
"""
import math
from typing import Any, NamedTuple

import torch

from ..inference import adapt_held_out, predictive
from ..inference.model import gumbel
from ..models.derivation import derive_genotype
from ..models.genotypes import CELL_TYPES, EDGES, NUM_EDGES
from ..models.operations import NUM_OPS, OPS
from ..rng import seeded
from ..training.diagnostics import SearchDiagnostics, edge_logits, entropy, search_diagnostics
from ..training.schedules import kl_weight, temperature
from ..viz.posterior import plot_edge_posterior, plot_posterior_history, plot_search_diagnostics

__all__ = ["PerCell", "EdgeRow", "EdgePosterior", "Prediction", "AdaptedPosterior", "PosteriorHistory",
           "SearchDiagnostics", "expected_calibration_error"]


class PerCell(NamedTuple):
    """One value per cell type, by attribute (``.normal``), name (``["reduce"]``) or unpacking.
    """

    normal: Any
    reduce: Any

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self._fields:
                raise KeyError(f"{key!r}: expected a cell type, one of {', '.join(self._fields)}")
            return getattr(self, key)
        return tuple.__getitem__(self, key)


class EdgeRow(NamedTuple):
    """One (cell type, edge, op) of an edge posterior.

    cell: "normal" or "reduce"; edge: row 0..13 of the architecture tensor; source: state
    0..5 feeding the edge; target: intermediate node 0..3; op: name in ``OPS``; prob: its
    posterior probability. A list of rows converts directly: ``pandas.DataFrame(rows)``.
    """

    cell: str
    edge: int
    source: int
    target: int
    op: str
    prob: float


class EdgePosterior:
    """A posterior over the edge operations of both cell types (relaxed categorical per edge).

    Args:
        logits_normal: ``[14, 10]`` unnormalised log-probabilities of the normal cell
            (alpha for the meta-level posterior, phi for a task's).
        logits_reduce: the same for the reduction cell.
        tau: temperature of the relaxed categorical; the default of :meth:`sample`.
        label: a short description, used in plot titles and ``repr``.

    Attributes:
        logits: :class:`PerCell` of ``[14, 10]`` tensors (CPU, float32, detached).
    """

    def __init__(self, logits_normal, logits_reduce, tau=1.0, label="edge posterior"):
        self.logits = PerCell(edge_logits(logits_normal, "logits_normal"), edge_logits(logits_reduce, "logits_reduce"))
        if not tau > 0:
            raise ValueError(f"tau={tau}: expected a temperature > 0")
        self.tau = float(tau)
        self.label = label

    @classmethod
    def from_meta(cls, meta, tau=1.0, label="meta-level posterior"):
        """The meta-level posterior ``softmax(alpha)`` of a :class:`~bayesnas.inference.meta.MetaNetwork`.
        """
        return cls(meta.alpha_normal, meta.alpha_reduce, tau=tau, label=label)

    @property
    def probs(self):
        """:class:`PerCell` of ``[14, 10]`` op probabilities; every row sums to 1.
        """
        return PerCell(*(logits.softmax(-1) for logits in self.logits))

    def entropy(self):
        """Entropy of each edge's op distribution in nats: :class:`PerCell` of ``[14]``.

        0 means sure of one op; ``log(10) = 2.303`` means uniform.
        """
        return PerCell(*(entropy(logits.log_softmax(-1)) for logits in self.logits))

    def table(self, sort_by=None, descending=False):
        """Every (cell, edge, op) with its probability: a list of ``2 * 14 * 10`` :class:`EdgeRow`.

        Args:
            sort_by: None (cell, edge, op order), a field name of :class:`EdgeRow`
                (``"prob"``, ``"op"``, ...), a tuple of field names, or a key callable.
            descending: reverse the sort.
        """
        rows = []
        for cell, probs in zip(CELL_TYPES, self.probs, strict=True):
            for edge, (source, target) in enumerate(EDGES):
                for o, op in enumerate(OPS):
                    rows.append(EdgeRow(cell, edge, source, target, op, float(probs[edge, o])))
        if sort_by is None:
            return rows[::-1] if descending else rows
        if callable(sort_by):
            key = sort_by
        else:
            names = (sort_by,) if isinstance(sort_by, str) else tuple(sort_by)
            unknown = [n for n in names if n not in EdgeRow._fields]
            if unknown:
                raise ValueError(f"sort_by={sort_by!r}: expected field names among {', '.join(EdgeRow._fields)}")
            key = lambda row: tuple(getattr(row, n) for n in names)  # noqa: E731
        return sorted(rows, key=key, reverse=descending)

    def top(self, k=1):
        """The ``k`` most probable ops of every edge: ``2 * 14 * k`` rows, by cell and edge.

        Within an edge, rows go from the most probable op down.
        """
        if not 1 <= int(k) <= NUM_OPS:
            raise ValueError(f"k={k}: expected 1..{NUM_OPS}")
        rows = []
        for cell, probs in zip(CELL_TYPES, self.probs, strict=True):
            values, indices = probs.topk(int(k), dim=-1)
            for edge, (source, target) in enumerate(EDGES):
                for value, o in zip(values[edge].tolist(), indices[edge].tolist(), strict=True):
                    rows.append(EdgeRow(cell, edge, source, target, OPS[o], value))
        return rows

    def derive(self):
        """The genotype of these probabilities by the paper's rule (what ``bayesnas derive-cell`` gives).

        Per intermediate node: the 2 incoming edges from different states whose strongest
        non-``none`` op is most probable, each with that op.
        """
        return derive_genotype(*self.probs)

    def diagnostics(self, previous=None):
        """:class:`SearchDiagnostics` of this posterior; ``previous``: the last logged genotype string.
        """
        return search_diagnostics(*self.logits, previous=previous)

    def sample(self, n, tau=None, generator=None):
        """``n`` genotypes drawn from the posterior.

        Each draw samples every edge's weights ``z ~ RelaxedOneHotCategorical(tau, logits)``
        (both cell types), then applies the derivation rule of :meth:`derive` to ``z``:
        per node, the 2 edges with the largest non-``none`` weight, each with that op.

        ``tau=0`` draws one op per edge from the categorical instead. An edge then counts
        with the posterior probability of the op it drew (0 if it drew ``none``), so a
        node keeps the 2 edges whose drawn ops the posterior believes most; with fewer
        than 2 real ops drawn into a node, the rule's tie-break (lowest source state,
        ``skip_connect``) fills the slot.

        Args:
            n: number of genotypes; tau: temperature (default ``self.tau``; 0 = categorical);
            generator: a ``torch.Generator`` for reproducible draws.

        Returns:
            list of ``n`` :class:`~bayesnas.models.genotypes.Genotype`.
        """
        tau = self.tau if tau is None else float(tau)
        if tau < 0:
            raise ValueError(f"tau={tau}: expected >= 0 (0 = categorical)")
        draws = []
        for _ in range(int(n)):
            z = []
            for logits in self.logits:
                noisy = logits + gumbel(torch.rand(logits.shape, generator=generator))
                if tau == 0:
                    drawn = noisy.argmax(-1, keepdim=True)
                    row = torch.zeros_like(logits).scatter_(-1, drawn, logits.softmax(-1).gather(-1, drawn))
                    row[:, OPS.index("none")] += 1 - row.sum(-1)  # derivation reads distributions
                    z.append(row)
                else:
                    z.append((noisy / tau).softmax(-1))
            draws.append(derive_genotype(*z))
        return draws

    def plot(self, path=None, title=None):
        """A heatmap per cell type (edges x ops); the derived genotype's choices are outlined.

        Args:
            path: also save the figure there (format from the extension; written atomically).
            title: figure title (default: ``self.label``).

        Returns:
            a ``matplotlib.figure.Figure``.
        """
        return plot_edge_posterior(self.probs, self.derive(), path=path,
                                   title=title or f"{self.label} (red: the derived cell)")

    def __repr__(self):
        h = self.entropy()
        return (f"<{type(self).__name__} {self.label}: tau={self.tau:.3g}, mean edge entropy "
                f"normal {h.normal.mean():.3f}, reduce {h.reduce.mean():.3f} nats (uniform {math.log(NUM_OPS):.3f})>")


class Prediction(NamedTuple):
    """Posterior predictive of a task's query points.

    probs: ``[B, ways]`` class probabilities averaged over the S posterior samples
    (Bayesian model averaging); entropy: ``[B]`` entropy of ``probs`` in nats (total
    predictive uncertainty); sample_probs: ``[S, B, ways]`` the per-sample predictions.
    """

    probs: torch.Tensor
    entropy: torch.Tensor
    sample_probs: torch.Tensor

    @property
    def labels(self):
        """Predicted classes ``[B]`` (argmax of the averaged probabilities).
        """
        return self.probs.argmax(-1)

    @property
    def expected_entropy(self):
        """Mean entropy of the per-sample predictions ``[B]`` (the data's own uncertainty).
        """
        return _entropy(self.sample_probs).mean(0)

    @property
    def mutual_information(self):
        """``entropy - expected_entropy`` ``[B]``: the disagreement between posterior samples.
        """
        return self.entropy - self.expected_entropy


def _entropy(probs):
    return entropy(probs.clamp_min(1e-12).log())


class AdaptedPosterior(EdgePosterior):
    """A task's posterior q(theta, z | D) after the guide's unrolled steps on its support set.

    The edge part has the whole :class:`EdgePosterior` API (``derive()`` gives a cell
    specific to this task); :meth:`predict` averages the network's predictions over
    posterior samples of (theta, z).

    Build it with :meth:`from_support` (from a MetaNetwork) or ``Run.task_posterior``.

    Attributes:
        meta: the :class:`~bayesnas.inference.meta.MetaNetwork`; q: the guide's
            :class:`~bayesnas.inference.guide.TaskPosterior` (one task, detached);
        relaxed: Gumbel variant (sample z) or softmax variant (z = softmax(phi));
        samples: default S of :meth:`predict`; steps: unrolled steps taken.
    """

    def __init__(self, meta, q, tau, relaxed=True, samples=8, steps=None, label="task posterior"):
        if q.phi_normal.shape[0] != 1:
            raise ValueError(f"q holds {q.phi_normal.shape[0]} tasks, expected 1")
        q = type(q)(*(t.detach() for t in q))
        super().__init__(q.phi_normal[0], q.phi_reduce[0], tau=tau, label=label)
        self.meta, self.q, self.relaxed = meta, q, bool(relaxed)
        self.samples, self.steps = int(samples), steps

    @classmethod
    def from_support(cls, meta, support_x, support_y, steps=4, tau=1.0, relaxed=True, kl_weight=1.0,
                     samples=8, seed=None, label=None, edge_kl="relaxed"):
        """Adapt ``meta`` to one task's support set by the guide's steps (:func:`~bayesnas.inference.adapt.adapt`).

        Args:
            meta: a trained :class:`~bayesnas.inference.meta.MetaNetwork`.
            support_x: ``[n, C, H, W]`` (any input the supernet takes, one task).
            support_y: ``[n]`` labels 0..ways-1.
            steps: N unrolled steps (0 gives the meta-level posterior itself).
            tau: temperature, as in training (the run's config gives it, as the next three).
            relaxed: relaxed-categorical edge variables (the Gumbel variant), as in training.
            kl_weight: weight of the KL terms, as in training.
            edge_kl: the edge KL, as in training.
            samples: default S of :meth:`predict`.
            seed: seed the reparameterised samples of the steps (None: global RNG).

        The steps are first-order (no graph is kept for an outer gradient), which gives
        the same posterior as training's second-order steps, only cheaper.
        """
        support_x, support_y = torch.as_tensor(support_x), torch.as_tensor(support_y)
        if support_y.dim() != 1 or support_x.shape[0] != support_y.shape[0]:
            raise ValueError(f"support_x {tuple(support_x.shape)} and support_y {tuple(support_y.shape)}: "
                             f"expected one task, [n, ...] and [n]")
        device = meta.mu.device
        with seeded(seed, device):
            q = adapt_held_out(meta, support_x[None].to(device), support_y[None].to(device), int(steps), tau, relaxed,
                               kl_weight=kl_weight, edge_kl=edge_kl)
        label = label or f"task posterior after {steps} step{'s' * (steps != 1)}"
        return cls(meta, q, tau, relaxed=relaxed, samples=samples, steps=steps, label=label)

    @classmethod
    def from_schedule(cls, meta, cfg, iteration, support_x, support_y, steps=None, tau=None, samples=8, seed=None,
                      label=None):
        """:meth:`from_support` with the steps of training at ``iteration`` of a fit run's ``cfg``.

        The run's ``inner_steps`` (or ``steps``), variant, and the temperature (or ``tau``)
        and KL weight of its schedules at ``iteration`` (1 at the least): a held-out task
        adapts as the run's training tasks did at that point.
        """
        iteration = max(int(iteration), 1)
        steps = cfg.inner_steps if steps is None else int(steps)
        tau = temperature(cfg, iteration) if tau is None else float(tau)
        return cls.from_support(meta, support_x, support_y, steps=steps, tau=tau, relaxed=cfg.variant == "gumbel",
                                kl_weight=kl_weight(cfg, iteration), samples=samples, seed=seed, label=label,
                                edge_kl=cfg.edge_kl)

    @property
    def weight_mean(self):
        """Posterior mean of the flattened supernet weights ``[D]``.
        """
        return self.q.mu[0]

    @property
    def weight_scale(self):
        """Posterior standard deviation of the flattened supernet weights ``[D]``.
        """
        return self.q.sigma[0]

    def predict(self, query_x, samples=None, seed=None):
        """Class probabilities of query points, averaged over ``samples`` posterior draws.

        Each draw takes theta ~ q(theta | D) and z ~ q(z | D) (softmax(phi) in the softmax
        variant), runs the supernet, and the ``S`` softmax outputs are averaged. z is drawn
        at the query temperature of the run's sampling (``meta.sampling.query_tau``: tau
        unless it anneals within the task), as training's query was.

        Args:
            query_x: ``[B, C, H, W]``; samples: S (default ``self.samples``); seed: as in
                :meth:`from_support`.

        Returns:
            :class:`Prediction` (probs ``[B, ways]``, entropy ``[B]``, sample_probs ``[S, B, ways]``).
        """
        samples = self.samples if samples is None else int(samples)
        if samples < 1:
            raise ValueError(f"samples={samples}: expected >= 1")
        device = self.meta.mu.device
        with seeded(seed, device):
            per_sample = predictive(self.meta, self.q, torch.as_tensor(query_x)[None].to(device), samples,
                                    self.meta.sampling.query_tau(self.tau), self.relaxed)[:, 0].cpu()
        probs = per_sample.mean(0)
        return Prediction(probs, _entropy(probs), per_sample)


class PosteriorHistory:
    """The meta-level edge posterior over training: alpha at every logged iteration.

    Attributes:
        iteration: ``[n]`` int64 tensor (0 = before training);
        logits: :class:`PerCell` of ``[n, 14, 10]`` tensors.
    """

    def __init__(self, iteration, logits_normal, logits_reduce, label="posterior history"):
        self.iteration = torch.as_tensor(iteration, dtype=torch.int64).reshape(-1)
        n = self.iteration.numel()
        self.logits = PerCell(*(torch.as_tensor(v, dtype=torch.float32).reshape(n, NUM_EDGES, NUM_OPS)
                                for v in (logits_normal, logits_reduce)))
        self.label = label

    def __len__(self):
        return self.iteration.numel()

    @property
    def probs(self):
        """:class:`PerCell` of ``[n, 14, 10]`` op probabilities at each logged iteration.
        """
        return PerCell(*(logits.softmax(-1) for logits in self.logits))

    def entropy(self):
        """:class:`PerCell` of ``[n, 14]`` edge entropies (nats) at each logged iteration.
        """
        return PerCell(*(entropy(logits.log_softmax(-1)) for logits in self.logits))

    def at(self, index, tau=1.0):
        """The :class:`EdgePosterior` of logged entry ``index`` (negative counts from the end).
        """
        it = int(self.iteration[index])
        return EdgePosterior(self.logits.normal[index], self.logits.reduce[index], tau=tau,
                             label=f"meta-level posterior at iteration {it}")

    def diagnostics(self):
        """:class:`SearchDiagnostics` of every logged entry, in order (computed from alpha).
        """
        rows, previous = [], None
        for index in range(len(self)):
            rows.append(self.at(index).diagnostics(previous))
            previous = rows[-1].genotype
        return rows

    def plot_diagnostics(self, path=None, title=None):
        """Mean (and max) edge entropy and mean top-op probability against iteration.

        Returns a ``matplotlib.figure.Figure``; ``path`` also saves it (atomically).
        """
        return plot_search_diagnostics(self, path=path, title=title)

    def plot(self, path=None, title=None):
        """Each edge's op probabilities over training: per cell type a grid of target x source.

        Returns a ``matplotlib.figure.Figure``; ``path`` also saves it (atomically).
        """
        return plot_posterior_history(self, path=path, title=title)

    def __repr__(self):
        span = f"iterations {int(self.iteration[0])}..{int(self.iteration[-1])}" if len(self) else "empty"
        return f"<PosteriorHistory: {len(self)} entries, {span}>"


def expected_calibration_error(probs, labels, bins=15):
    """Expected calibration error of class probabilities (equal-width confidence bins).

    Each prediction's confidence is its largest probability; bin ``b`` holds the
    confidences in ``(b / bins, (b + 1) / bins]``. ECE = sum over bins of
    ``(points in bin / all points) * |accuracy in bin - mean confidence in bin|``.

    Args:
        probs: ``[..., K]`` probabilities (tensor or array); labels: ``[...]`` true classes.
        bins: number of bins.

    Returns:
        float in [0, 1].
    """
    probs = torch.as_tensor(probs, dtype=torch.float64)
    labels = torch.as_tensor(labels)
    if probs.dim() < 1 or probs.shape[:-1] != labels.shape:
        raise ValueError(f"probs {tuple(probs.shape)} and labels {tuple(labels.shape)}: expected [..., K] and [...]")
    if int(bins) < 1:
        raise ValueError(f"bins={bins}: expected >= 1")
    probs, labels = probs.reshape(-1, probs.shape[-1]), labels.reshape(-1)
    if labels.numel() == 0:
        raise ValueError("expected_calibration_error needs at least one prediction")
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).to(torch.float64)
    index = (confidence * bins).ceil().long().clamp(1, int(bins)) - 1
    # per bin, count * |acc - conf| = |sum(correct) - sum(confidence)|
    gap = torch.zeros(int(bins), dtype=torch.float64)
    gap.index_add_(0, index, correct - confidence)
    return float(gap.abs().sum() / labels.numel())
