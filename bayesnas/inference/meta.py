"""The meta-parameters W = (mu, sigma, alpha) of BASE, shared by every task.

``mu`` and ``sigma`` are the mean and scale of the Normal prior over the flattened
weights of the search supernet; ``alpha_normal`` and ``alpha_reduce`` are the logits of
the relaxed-categorical prior over each edge's operation. The supernet module itself only
serves as a function: its own parameters are never trained, every call substitutes a
per-task weight vector with ``torch.func.functional_call``.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from ..device import forward_in
from ..models import NUM_EDGES, NUM_OPS, ParamLayout


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
            ``[B, C, H, W]`` and architecture weights ``[14, 10]`` each.
        sigma_init: initial prior scale of every weight (softplus of a free parameter).
        inner_lr: initial inner step sizes, dict with keys "mu", "rho", "alpha".
        learn_inner_lr: make the three inner step sizes meta-parameters.
        set_encoder: also learn h_V, which starts the edge logits of the guide at
            alpha + h_V(D_t) instead of alpha.
        batch_tasks: run the tasks of :meth:`forward_tasks` in one call when the supernet
            supports it (``task_batched``); False: one call per task.
        precision: the supernet's forward, "fp32" or "bf16" (autocast; the logits come
            back in float32: :func:`~bayesnas.device.forward_in`).
    """

    def __init__(self, net, sigma_init=0.05, inner_lr=None, learn_inner_lr=False,
                 set_encoder=False, in_channels=1, batch_tasks=True, precision="fp32"):
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

    @property
    def sigma(self):
        """Prior scale of the weights, ``[D]``."""
        return F.softplus(self.rho)

    def inner_lr(self):
        """Inner step sizes, dict "mu"/"rho"/"alpha" -> scalar tensor."""
        return {k: v.exp() for k, v in self.log_inner_lr.items()}

    def meta_parameters(self):
        """Every tensor the outer optimiser updates (the supernet's own weights excluded)."""
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("net.")]

    def forward_task(self, x, theta, z_normal, z_reduce):
        """Logits of one task: x ``[B, C, H, W]``, theta ``[D]``, z ``[14, 10]`` -> ``[B, ways]``."""
        return forward_in(self.precision, x.device, functional_call, self.net, self.layout.unflatten(theta),
                          (x, z_normal, z_reduce))

    def forward_tasks(self, x, theta, z_normal, z_reduce):
        """Logits of T tasks: x ``[T, B, C, H, W]``, theta ``[T, D]``, z ``[T, 14, 10]`` -> ``[T, B, ways]``.

        A supernet that takes tasks as a batch (``task_batched``, the fused
        SearchNetwork) runs all T in one call; any other network, one call per task.
        """
        if self.batch_tasks and getattr(self.net, "task_batched", False) and x.shape[0] > 1:
            return forward_in(self.precision, x.device, functional_call, self.net, self.layout.unflatten(theta),
                              (x, z_normal, z_reduce))
        return torch.stack([self.forward_task(x[t], theta[t], z_normal[t], z_reduce[t]) for t in range(x.shape[0])])
