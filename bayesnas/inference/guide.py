"""The optimisation-embedding guide of BASE (eq. 6-10).

q(theta_t | D_t) = Normal(psi_mu, softplus(psi_rho)^2) and q(z_t | D_t) = relaxed
categorical with logits phi. The variational parameters of task t are not free: they
start at the meta-parameters W (phi optionally at alpha + h_V(D_t)) and take N unrolled,
differentiable gradient-ascent steps on the task's own ELBO estimate on its SUPPORT set.

Usage::

    q = adapt(meta, support_x, support_y, steps=4, tau=1.0)
    trace = pyro.poutine.trace(base_guide).get_trace(meta, query_x, query_y, 1.0, q)
"""
from typing import NamedTuple

import pyro
import torch
import torch.nn.functional as F

from .model import THETA, Z_SITES, TaskNormal, edge_prior
from .unroll import unrolled_steps


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


def prior_posterior(meta, num_tasks, support_x=None):
    """The guide's starting point: W broadcast to ``num_tasks`` tasks (plus h_V(D_t) if learned)."""
    d = meta.mu.numel()
    phi_normal = meta.alpha_normal.expand(num_tasks, *meta.alpha_normal.shape)
    phi_reduce = meta.alpha_reduce.expand(num_tasks, *meta.alpha_reduce.shape)
    if meta.encoder is not None and support_x is not None:
        offsets = meta.encoder(support_x)
        phi_normal = phi_normal + offsets[:, 0]
        phi_reduce = phi_reduce + offsets[:, 1]
    return TaskPosterior(meta.mu.expand(num_tasks, d), meta.rho.expand(num_tasks, d), phi_normal, phi_reduce)


def base_guide(meta, x, y, tau, q, relaxed=True):
    """Pyro guide: samples theta (and log z when ``relaxed``) from the task posteriors ``q``.

    Same signature as :func:`~bayesnas.inference.model.base_model` plus ``q``; x and y are
    unused (the data already entered through ``q``) but keep the two signatures aligned.
    """
    num_tasks = q.mu.shape[0]
    with pyro.plate("tasks", num_tasks, dim=-1):
        pyro.sample(THETA, TaskNormal(q.mu, q.sigma).to_event(1))
        if relaxed:
            pyro.sample(Z_SITES[0], edge_prior(q.phi_normal, tau, num_tasks))
            pyro.sample(Z_SITES[1], edge_prior(q.phi_reduce, tau, num_tasks))


def mean_step_size(lr, sigma, kl_weight, n_support):
    """Per-weight step size of the guide's mean: ``lr / (1 + lr * kl_weight / (n_s * sigma^2))``.

    The Gaussian KL adds curvature ``kl_weight / (n_s * sigma_i^2)`` to weight i of the
    per-point support ELBO; with a small prior scale, a plain step of size ``lr`` would
    overshoot (it diverges once ``lr`` times that curvature exceeds 2). This step size is
    the proximal step for the quadratic KL term: it treats the KL exactly and the
    likelihood linearly, is stable for every ``lr`` and ``sigma``, and has the same fixed
    points as plain gradient ascent. ``sigma`` ``[D]`` -> ``[D]``.
    """
    return lr / (1 + lr * kl_weight / (n_support * sigma**2))


def adapt(meta, support_x, support_y, steps, tau, relaxed=True, kl_weight=1.0, first_order=False,
          checkpoint=False):
    """Task posteriors by N unrolled gradient-ascent steps on each task's support ELBO.

    The objective of a step is ``(log p(y_s | x_s, theta, z) - kl_weight * KL(q || p)) / n_s``
    for each task (one reparameterised sample), summed over tasks: tasks do not interact,
    so the gradient w.r.t. task t's parameters is that of task t's own ELBO. The mean's
    step size is preconditioned by the prior's curvature (:func:`mean_step_size`).

    Args:
        meta: the :class:`~bayesnas.inference.meta.MetaNetwork`.
        support_x: ``[T, n_s, C, H, W]``; support_y: ``[T, n_s]``.
        steps: N, the number of inner steps (0 gives the prior, KL exactly 0).
        tau: temperature; relaxed: Gumbel (True) or softmax (False) variant.
        first_order: detach the inner gradients (cheaper, not the BASE default).
        checkpoint: recompute each step in the outer backward instead of keeping its
            graph (memory-bounded mode, see :func:`~bayesnas.inference.unroll.unrolled_steps`).

    Returns:
        :class:`TaskPosterior` with tensors ``[T, ...]``.

    Example::

        q = adapt(meta, batch.support_x, batch.support_y, steps=4, tau=1.0)
        q.phi_normal.softmax(-1)      # task-adapted edge probabilities [T, 14, 10]
    """
    from .elbo import elbo_terms

    start = prior_posterior(meta, support_x.shape[0], support_x)._asdict()
    lr = meta.inner_lr()
    n_support = support_y.shape[1]
    step_sizes = {"mu": mean_step_size(lr["mu"], meta.sigma, kl_weight, n_support), "rho": lr["rho"],
                  "phi_normal": lr["alpha"], "phi_reduce": lr["alpha"]}

    def support_elbo(params, step):
        terms = elbo_terms(meta, support_x, support_y, TaskPosterior(**params), tau, relaxed)
        return terms.elbo(kl_weight).sum() / n_support

    return TaskPosterior(**unrolled_steps(support_elbo, start, steps, step_sizes,
                                          first_order=first_order, maximize=True, checkpoint=checkpoint))
