"""The ELBO of BASE, term by term, from Pyro traces of the model and the guide.

    ELBO = E_q[log p(y | x, theta, z)] - KL(q(theta) || p(theta)) - KL(q(z) || p(z))

The Gaussian KL is analytic; the relaxed-categorical KL has no closed form and is
estimated from the guide's sample (log q(z) - log p(z)). This is what Pyro's
``TraceMeanField_ELBO`` computes; here the terms stay separate, per task, for logging
and for the KL weight.

Usage::

    terms = elbo_terms(meta, query_x, query_y, q, tau=1.0)
    loss = -terms.elbo().mean()
"""
from typing import NamedTuple

import pyro.poutine as poutine
import torch
from torch.distributions import kl_divergence

from .guide import TaskPosterior, base_guide
from .meta import MetaNetwork
from .model import OBS, THETA, Z_SITES, base_model


class ElboTerms(NamedTuple):
    """Per-task ELBO terms, each ``[T]``; ``logits`` ``[T, B, ways]`` from the sampled network."""

    loglik: torch.Tensor
    kl_theta: torch.Tensor
    kl_z: torch.Tensor
    logits: torch.Tensor

    def elbo(self, kl_weight=1.0):
        """``loglik - kl_weight * (kl_theta + kl_z)``, ``[T]``."""
        return self.loglik - kl_weight * (self.kl_theta + self.kl_z)


def elbo_terms(meta: MetaNetwork, x: torch.Tensor, y: torch.Tensor, q: TaskPosterior, tau: float,
               relaxed: bool = True) -> "ElboTerms":
    """One-sample ELBO terms of T tasks with variational parameters ``q``.

    Args:
        meta: the MetaNetwork; x ``[T, B, C, H, W]``; y ``[T, B]``;
        q: a :class:`~bayesnas.inference.guide.TaskPosterior`; tau: temperature;
        relaxed: Gumbel variant (z sampled) or softmax variant (z = softmax(phi)).
    """
    guide_trace = poutine.trace(base_guide).get_trace(meta, x, y, tau, q, relaxed)
    fixed_z = (None, None) if relaxed else q.edge_weights()
    model_trace = poutine.trace(poutine.replay(base_model, trace=guide_trace)).get_trace(meta, x, y, tau, *fixed_z)
    obs = model_trace.nodes[OBS]
    loglik = obs["fn"].log_prob(obs["value"])
    kl_theta = kl_divergence(guide_trace.nodes[THETA]["fn"], model_trace.nodes[THETA]["fn"])
    kl_z = torch.zeros_like(loglik)
    if relaxed:
        for site in Z_SITES:
            value = guide_trace.nodes[site]["value"]
            kl_z = kl_z + guide_trace.nodes[site]["fn"].log_prob(value) - model_trace.nodes[site]["fn"].log_prob(value)
    return ElboTerms(loglik, kl_theta, kl_z, model_trace.nodes["_RETURN"]["value"])
