"""The ELBO of BASE, term by term, from Pyro traces of the model and the guide.

    ELBO = E_q[log p(y | x, theta, z)] - KL(q(theta) || p(theta)) - KL(q(z) || p(z))

The Gaussian KL is analytic; the relaxed-categorical KL has no closed form and is
estimated from the guide's sample (log q(z) - log p(z)). This is what Pyro's
``TraceMeanField_ELBO`` computes; here the terms stay separate, per task, for logging
and for the KL weight.

The edge KL has a second form, ``edge_kl="categorical"``: the closed-form KL between
the categorical distributions ``softmax(phi)`` and ``softmax(alpha)`` of every edge (the
paper's prior is ``z ~ Categorical(alpha)``; the relaxation only serves the guide's
sampling). The Monte-Carlo relaxed KL is a function of ``phi - alpha`` and the Gumbel
noise alone (the relaxed categorical is a location family in logit space), so when the
inner steps are first order (``phi = alpha + delta`` with ``delta`` detached) it sends
exactly no gradient to alpha; the categorical KL is not shift-invariant and does
(:func:`categorical_edge_kl`, docs/search_experiments.md).

With one z per image (``meta.sampling.per_example``), the relaxed KL is the mean of the B
one-sample estimates: the expected log-likelihood is a sum over images, so each image may
use its own draw of z and the ELBO estimate keeps its expected value (BatchNorm's batch
statistics are the one coupling between the images).

Usage::

    terms = elbo_terms(meta, query_x, query_y, q, tau=1.0)
    loss = -terms.elbo().mean()
"""
from typing import NamedTuple, Optional, Tuple

import pyro.poutine as poutine
import torch
from torch.distributions import kl_divergence

from .guide import TaskPosterior, base_guide
from .meta import MetaNetwork
from .model import OBS, THETA, Z_SITES, base_model

#: the edge KL's forms: the Monte-Carlo relaxed-categorical KL, or the closed-form categorical KL
EDGE_KLS = ("relaxed", "categorical")


def categorical_edge_kl(phi, alpha):
    """``KL(Categorical(softmax(phi)) || Categorical(softmax(alpha)))`` summed over edges.

    phi: ``[T, 14, 10]`` task logits; alpha: ``[14, 10]`` prior logits. Returns ``[T]``.
    Its gradient in alpha with phi held fixed is ``softmax(alpha) - softmax(phi)`` per
    edge: descending it moves the prior toward the task's posterior.
    """
    log_q = phi.log_softmax(-1)
    return (log_q.exp() * (log_q - alpha.log_softmax(-1))).sum((-2, -1))


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
               relaxed: bool = True, edge_weights: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
               edge_kl: str = "relaxed") -> "ElboTerms":
    """One-sample ELBO terms of T tasks with variational parameters ``q``.

    Args:
        meta: the MetaNetwork; x ``[T, B, C, H, W]``; y ``[T, B]``;
        q: a :class:`~bayesnas.inference.guide.TaskPosterior`; tau: temperature;
        relaxed: Gumbel variant (z sampled) or softmax variant (z = softmax(phi)).
        edge_weights: ``(z_normal, z_reduce)``, each ``[T, 14, 10]``: a fixed architecture
            (a discrete cell as one-hot rows). z is then neither sampled nor read from
            ``phi``, and its KL is 0; ``relaxed`` is ignored.
        edge_kl: "relaxed" (Monte-Carlo estimate at the guide's sample, averaged over the
            images' samples with ``meta.sampling.per_example``; 0 in the softmax variant) or
            "categorical" (:func:`categorical_edge_kl` against ``meta.prior_logits()``, in both variants).

    ``meta.sampling`` decides how z is drawn and seen (:class:`~bayesnas.inference.meta.EdgeSampling`);
    in the softmax variant the network sees ``softmax(phi)``, straight-through with ``hard``.
    """
    if edge_kl not in EDGE_KLS:
        raise ValueError(f"edge_kl={edge_kl!r}: expected one of {', '.join(EDGE_KLS)}")
    relaxed = relaxed and edge_weights is None
    guide_trace = poutine.trace(base_guide).get_trace(meta, x, y, tau, q, relaxed)
    fixed_z: Tuple[Optional[torch.Tensor], Optional[torch.Tensor]] = (None, None)
    if edge_weights is not None:
        fixed_z = edge_weights
    elif not relaxed:
        z_normal, z_reduce = q.edge_weights()
        fixed_z = meta.sampling.network_weights(z_normal), meta.sampling.network_weights(z_reduce)
    model_trace = poutine.trace(poutine.replay(base_model, trace=guide_trace)).get_trace(meta, x, y, tau, *fixed_z)
    obs = model_trace.nodes[OBS]
    loglik = obs["fn"].log_prob(obs["value"])
    kl_theta = kl_divergence(guide_trace.nodes[THETA]["fn"], model_trace.nodes[THETA]["fn"])
    kl_z = torch.zeros_like(loglik)
    if edge_kl == "categorical" and edge_weights is None:
        alpha_normal, alpha_reduce = meta.prior_logits()
        kl_z = categorical_edge_kl(q.phi_normal, alpha_normal) + categorical_edge_kl(q.phi_reduce, alpha_reduce)
    elif relaxed:
        for site in Z_SITES:
            value = guide_trace.nodes[site]["value"]
            kl_z = kl_z + guide_trace.nodes[site]["fn"].log_prob(value) - model_trace.nodes[site]["fn"].log_prob(value)
        if meta.sampling.per_example:
            kl_z = kl_z / x.shape[1]
    return ElboTerms(loglik, kl_theta, kl_z, model_trace.nodes["_RETURN"]["value"])
