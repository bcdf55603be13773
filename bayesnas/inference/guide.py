"""The optimisation-embedding guide of BASE (eq. 6-10).

q(theta_t | D_t) = Normal(psi_mu, softplus(psi_rho)^2) and q(z_t | D_t) = relaxed
categorical with logits phi. The variational parameters of task t are not free: they
start at the meta-parameters W (phi optionally at alpha + h_V(D_t)) and take N unrolled,
differentiable gradient-ascent steps on the task's own ELBO estimate on its SUPPORT set.

The unrolled steps themselves are :func:`~bayesnas.inference.adapt.adapt`.
"""
from typing import NamedTuple

import pyro
import torch
import torch.nn.functional as F

from .meta import MetaNetwork
from .model import THETA, Z_SITES, TaskNormal, edge_examples, edge_prior, validate_args


class TaskPosterior(NamedTuple):
    """Variational parameters of T tasks.

    mu, rho: ``[T, D]`` (weight scale = softplus(rho)); phi_normal, phi_reduce: ``[T, 14, 10]``.
    """

    mu: torch.Tensor
    rho: torch.Tensor
    phi_normal: torch.Tensor
    phi_reduce: torch.Tensor

    @property
    def sigma(self):
        return F.softplus(self.rho)

    def edge_weights(self):
        """Deterministic edge weights (softmax of phi), ``([T,14,10], [T,14,10])``."""
        return self.phi_normal.softmax(-1), self.phi_reduce.softmax(-1)


def prior_posterior(meta: MetaNetwork, num_tasks: int, support_x: torch.Tensor | None = None) -> "TaskPosterior":
    """The guide's starting point: W broadcast to ``num_tasks`` tasks (plus h_V(D_t) if learned).

    phi starts at the prior's edge logits, pruned ops masked
    (:meth:`~bayesnas.inference.meta.MetaNetwork.prior_logits`).
    """
    d = meta.mu.numel()
    alpha_normal, alpha_reduce = meta.prior_logits()
    phi_normal = alpha_normal.expand(num_tasks, *alpha_normal.shape)
    phi_reduce = alpha_reduce.expand(num_tasks, *alpha_reduce.shape)
    if meta.encoder is not None and support_x is not None:
        offsets = meta.encoder(support_x)
        phi_normal = phi_normal + offsets[:, 0]
        phi_reduce = phi_reduce + offsets[:, 1]
    return TaskPosterior(meta.mu.expand(num_tasks, d), meta.rho.expand(num_tasks, d), phi_normal, phi_reduce)


def base_guide(meta: MetaNetwork, x: torch.Tensor, y: torch.Tensor | None, tau: float, q: TaskPosterior,
               relaxed: bool = True) -> None:
    """Pyro guide: samples theta (and log z when ``relaxed``) from the task posteriors ``q``.

    Its first four arguments are those of :func:`~bayesnas.inference.model.base_model`; y is
    unused, and x only gives the number of images B (the data already entered through ``q``)
    when ``meta.sampling.per_example`` makes the log z sites ``[T, B, 14, 10]``, one per image.
    The rest differ (``q`` and ``relaxed`` here, ``z_normal`` and ``z_reduce`` there), so the
    two are not called with one argument list as Pyro's ELBOs call a model and guide: bind
    them first, e.g. ``lambda: base_guide(meta, x, y, tau, q)`` (as tests/test_inference_elbo.py does).
    """
    num_tasks = q.mu.shape[0]
    with pyro.plate("tasks", num_tasks, dim=-1):
        pyro.sample(THETA, TaskNormal(q.mu, q.sigma, validate_args=validate_args()).to_event(1))
        if relaxed:
            examples = edge_examples(meta, x)
            pyro.sample(Z_SITES[0], edge_prior(q.phi_normal, tau, num_tasks, examples))
            pyro.sample(Z_SITES[1], edge_prior(q.phi_reduce, tau, num_tasks, examples))
