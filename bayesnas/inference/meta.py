"""The meta-parameters W = (mu, sigma, alpha) of BASE, shared by every task.

``mu`` and ``sigma`` are the mean and scale of the Normal prior over the flattened
weights of the search supernet; ``alpha_normal`` and ``alpha_reduce`` are the logits of
the relaxed-categorical prior over each edge's operation. The supernet module itself only
serves as a function: its own parameters are never trained, every call substitutes a
per-task weight vector with ``torch.func.functional_call``.

The MetaNetwork also carries the run-level settings of how the edge variables are drawn
(:class:`EdgeSampling`), which the model, the guide and the predictive read from it.
"""
import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from ..device import forward_in
from ..models import NUM_EDGES, NUM_OPS, ParamLayout


class EdgeSampling(NamedTuple):
    """How the edge variables z are drawn and used: the architecture-gradient estimator's settings.

    per_example: one relaxed sample per image instead of one per task (z ``[T, B, 14, 10]``).
        The expected log-likelihood is a sum over images, so each image may use its own draw
        of z and the estimate keeps its expectation (the local reparameterisation argument,
        Kingma et al. 2015), with less variance; BatchNorm's batch statistics are the one
        coupling between images. The relaxed KL is then the mean of the B one-sample estimates.
    hard: straight-through (GDAS, Dong & Yang 2019): the network sees the one-hot argmax of
        z, the gradient is that of the relaxed z (:func:`straight_through`). The KL stays
        that of the relaxed sample.
    inner_tau_end: within-task annealing (MetaNAS, Elsken et al. 2020): the guide's inner step
        k of N runs at ``tau * (inner_tau_end / tau) ** (k / N)``, the query at
        ``inner_tau_end`` (:meth:`inner_tau`, :meth:`query_tau`). None: every step at tau.
    prune_below: ops whose prior probability ``softmax(alpha)`` is below this are removed
        (:meth:`MetaNetwork.prior_logits`); 0: none.

    >>> EdgeSampling(inner_tau_end=0.1).inner_tau(1.0, step=1, steps=2)  # doctest: +ELLIPSIS
    0.316...
    """

    per_example: bool = False
    hard: bool = False
    inner_tau_end: float | None = None
    prune_below: float = 0.0

    def inner_tau(self, tau, step, steps):
        """The temperature of the guide's inner step ``step`` (0 .. steps - 1) at the iteration's ``tau``."""
        if self.inner_tau_end is None:
            return tau
        return tau * (self.inner_tau_end / tau) ** (step / steps)

    def query_tau(self, tau):
        """The temperature of the query ELBO and the predictive at the iteration's ``tau``."""
        return tau if self.inner_tau_end is None else self.inner_tau_end

    def network_weights(self, z):
        """The edge weights the network sees for edge weights ``z``: z, or :func:`straight_through` of z."""
        return straight_through(z) if self.hard else z


def straight_through(z):
    """One-hot argmax of ``z`` (per row of the last dim) in the forward, the gradient of ``z`` in the backward.

    >>> straight_through(torch.tensor([0.2, 0.5, 0.3]))
    tensor([0., 1., 0.])
    """
    hard = F.one_hot(z.argmax(-1), z.shape[-1]).to(z.dtype)
    return hard + (z - z.detach())  # z - z.detach() is exactly 0: the values are exactly one-hot


#: how far below its own logit a pruned op's prior logit is set (:meth:`MetaNetwork.prior_logits`). Large
#: enough that its probability is exactly 0 in float32 and float64 (exp(-1000) underflows both) and that no
#: Gumbel noise (|g| < 16 in float32, < 37 in float64) brings it back. Finite, where -inf would make
#: 0 * inf = NaN in the KL terms, and no larger than needed: at temperature 0.05 a pruned op's score is
#: ~2e4 below the others, and the relaxed log-density's cancellation of it loses < 1e-3 per edge in float32
#: (measured; 7e-3 with an offset of 1e4).
PRUNE_OFFSET = 1e3


def inverse_softplus(value):
    """The free parameter whose softplus is ``value`` (> 0)."""
    return value + math.log(-math.expm1(-value))


class SetEncoder(nn.Module):
    """h_V(D_t): a small permutation-invariant encoder of a support set.

    Maps a task's support images ``[n, C, H, W]`` (labels are not needed: the set of
    images already says which classes the task holds) to offsets ``[2, 14, 10]`` for the
    initial edge logits of the normal and reduction cells. Its last layer starts at zero,
    so an untrained encoder leaves the guide's starting point at alpha.
    """

    def __init__(self, in_channels, hidden=32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(hidden, 2 * NUM_EDGES * NUM_OPS)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, support_x):
        """``[T, n, C, H, W]`` -> ``[T, 2, 14, 10]``."""
        T, n = support_x.shape[:2]
        feats = self.features(support_x.flatten(0, 1)).view(T, n, -1).mean(1)
        return self.head(feats).view(T, 2, NUM_EDGES, NUM_OPS)


class MetaNetwork(nn.Module):
    """The shared meta-parameters W of BASE and the supernet they parameterise.

    Args:
        net: a search supernet whose ``forward(x, z_normal, z_reduce)`` takes x
            ``[B, C, H, W]`` and architecture weights ``[14, 10]`` each (``[B, 14, 10]``,
            one per image, with ``sampling.per_example``).
        sigma_init: initial prior scale of every weight (softplus of a free parameter).
        inner_lr: initial inner step sizes, dict with keys "mu", "rho", "alpha".
        learn_inner_lr: make the three inner step sizes meta-parameters.
        set_encoder: also learn h_V, which starts the edge logits of the guide at
            alpha + h_V(D_t) instead of alpha.
        batch_tasks: run the tasks of :meth:`forward_tasks` in one call when the supernet
            supports it (``task_batched``); False: one call per task.
        precision: the supernet's forward, "fp32" or "bf16" (autocast; the logits come
            back in float32: :func:`~bayesnas.device.forward_in`).
        sampling: an :class:`EdgeSampling` (None: the default, one relaxed z per task).
    """

    def __init__(self, net, sigma_init=0.05, inner_lr=None, learn_inner_lr=False,
                 set_encoder=False, in_channels=1, batch_tasks=True, precision="fp32", sampling=None):
        super().__init__()
        self.net = net
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.layout = ParamLayout.from_module(net)
        self.mu = nn.Parameter(self.layout.flatten(net).detach().clone())
        self.rho = nn.Parameter(torch.full_like(self.mu, inverse_softplus(sigma_init)))
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(NUM_EDGES, NUM_OPS))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(NUM_EDGES, NUM_OPS))
        inner_lr = dict(inner_lr or {"mu": 0.1, "rho": 0.1, "alpha": 1.0})
        self.log_inner_lr = nn.ParameterDict(
            {k: nn.Parameter(torch.tensor(math.log(v)), requires_grad=learn_inner_lr) for k, v in inner_lr.items()}
        )
        self.encoder = SetEncoder(in_channels) if set_encoder else None
        self.batch_tasks = batch_tasks
        self.precision = precision
        self.sampling = EdgeSampling() if sampling is None else sampling

    @property
    def sigma(self):
        """Prior scale of the weights, ``[D]``."""
        return F.softplus(self.rho)

    def inner_lr(self):
        """Inner step sizes, dict "mu"/"rho"/"alpha" -> scalar tensor."""
        return {k: v.exp() for k, v in self.log_inner_lr.items()}

    def prior_logits(self):
        """The prior's edge logits ``(alpha_normal, alpha_reduce)``, ``[14, 10]`` each, pruned ops masked.

        An op of :meth:`pruned` gets its own logit, detached, minus :data:`PRUNE_OFFSET`: its
        probability is 0 in the prior, in the guide's start (and so in every inner step) and
        in the categorical KL, and alpha gets no gradient there. The mask is computed from
        alpha on every call; a pruned op returns only if the kept ops' logits fall to its own.
        Without pruning (``sampling.prune_below == 0``) these are alpha's parameters themselves.
        """
        if self.sampling.prune_below == 0:
            return self.alpha_normal, self.alpha_reduce
        pruned = self.pruned()
        return tuple(torch.where(mask, alpha.detach() - PRUNE_OFFSET, alpha)
                     for mask, alpha in zip(pruned, (self.alpha_normal, self.alpha_reduce), strict=True))

    def pruned(self):
        """The ops :meth:`prior_logits` masks, bool ``[2, 14, 10]`` (normal, reduce): those whose
        probability ``softmax(alpha)`` is below ``sampling.prune_below``, never an edge's most probable op."""
        alpha = torch.stack([self.alpha_normal, self.alpha_reduce]).detach()
        top = F.one_hot(alpha.argmax(-1), alpha.shape[-1]).bool()
        return (alpha.softmax(-1) < self.sampling.prune_below) & ~top

    def meta_parameters(self):
        """Every tensor the outer optimiser updates (the supernet's own weights excluded)."""
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("net.")]

    def forward_task(self, x, theta, z_normal, z_reduce):
        """Logits of one task: x ``[B, C, H, W]``, theta ``[D]``, z ``[14, 10]`` (or ``[B, 14, 10]``,
        one per image) -> ``[B, ways]``."""
        return forward_in(self.precision, x.device, functional_call, self.net, self.layout.unflatten(theta),
                          (x, z_normal, z_reduce))

    def forward_tasks(self, x, theta, z_normal, z_reduce):
        """Logits of T tasks: x ``[T, B, C, H, W]``, theta ``[T, D]``, z ``[T, 14, 10]`` (or
        ``[T, B, 14, 10]``, one per image) -> ``[T, B, ways]``.

        A supernet that takes tasks as a batch (``task_batched``, the fused
        SearchNetwork) runs all T in one call; any other network, one call per task.
        """
        if self.batch_tasks and getattr(self.net, "task_batched", False) and x.shape[0] > 1:
            return forward_in(self.precision, x.device, functional_call, self.net, self.layout.unflatten(theta),
                              (x, z_normal, z_reduce))
        return torch.stack([self.forward_task(x[t], theta[t], z_normal[t], z_reduce[t]) for t in range(x.shape[0])])
