"""The guide's unrolled steps (eq. 6-10): a task's posterior from its support set.

The variational parameters of task t start at the meta-parameters W (phi optionally at
alpha + h_V(D_t)) and take N differentiable gradient-ascent steps on the task's own ELBO
estimate on its SUPPORT set; the mean's step is the proximal step of the Gaussian KL
(:func:`mean_step_size`). Held-out tasks (validation, inspection, derivation) take the
same steps first-order, with nothing kept for an outer gradient (:func:`adapt_held_out`).
"""
from typing import Optional, Tuple

import torch

from .elbo import elbo_terms
from .guide import TaskPosterior, prior_posterior
from .meta import MetaNetwork
from .unroll import unrolled_steps


def mean_step_size(lr: float | torch.Tensor, sigma: torch.Tensor, kl_weight: float | torch.Tensor,
                   n_support: int) -> torch.Tensor:
    """Per-weight step size of the guide's mean: ``lr / (1 + lr * kl_weight / (n_s * sigma^2))``.

    The Gaussian KL adds curvature ``kl_weight / (n_s * sigma_i^2)`` to weight i of the
    per-point support ELBO; with a small prior scale, a plain step of size ``lr`` would
    overshoot (it diverges once ``lr`` times that curvature exceeds 2). This step size is
    the proximal step for the quadratic KL term: it treats the KL exactly and the
    likelihood linearly, is stable for every ``lr`` and ``sigma``, and has the same fixed
    points as plain gradient ascent. ``sigma`` ``[D]`` -> ``[D]``.
    """
    return lr / (1 + lr * kl_weight / (n_support * sigma**2))


def adapt(meta: MetaNetwork, support_x: torch.Tensor, support_y: torch.Tensor, steps: int,
          tau: float | torch.Tensor, relaxed: bool = True, kl_weight: float | torch.Tensor = 1.0,
          first_order: bool = False,
          checkpoint: bool = False, edge_weights: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
          edge_kl: str = "relaxed") -> TaskPosterior:
    """Task posteriors by N unrolled gradient-ascent steps on each task's support ELBO.

    The objective of a step is ``(log p(y_s | x_s, theta, z) - kl_weight * KL(q || p)) / n_s``
    for each task (one reparameterised sample), summed over tasks: tasks do not interact,
    so the gradient w.r.t. task t's parameters is that of task t's own ELBO. The mean's
    step size is preconditioned by the prior's curvature (:func:`mean_step_size`).

    Args:
        meta: the :class:`~bayesnas.inference.meta.MetaNetwork`.
        support_x: ``[T, n_s, C, H, W]``; support_y: ``[T, n_s]``.
        steps: N, the number of inner steps (0 gives the prior, KL exactly 0).
        tau: temperature of the iteration; step k runs at ``meta.sampling.inner_tau(tau, k, N)``
            (tau itself unless the run anneals within the task, :class:`~bayesnas.inference.meta.EdgeSampling`).
        relaxed: Gumbel (True) or softmax (False) variant.
        kl_weight: the weight of the KL term in each step's objective (1: the task's ELBO).
            tau and kl_weight may be 0-dim tensors on the meta-network's device (a CUDA graph's inputs).
        first_order: detach the inner gradients (cheaper; the paper's BASE is second order,
            while :class:`~bayesnas.config.FitConfig` defaults to first order on a CPU budget).
        checkpoint: recompute each step in the outer backward instead of keeping its
            graph (memory-bounded mode, see :func:`~bayesnas.inference.unroll.unrolled_steps`).
        edge_weights: a fixed architecture ``(z_normal, z_reduce)``, each ``[T, 14, 10]``
            (see :func:`~bayesnas.inference.elbo.elbo_terms`): only the weights adapt, phi
            stays at its start.
        edge_kl: the edge KL's form, "relaxed" or "categorical" (:func:`~bayesnas.inference.elbo.elbo_terms`).

    Returns:
        :class:`TaskPosterior` with tensors ``[T, ...]``.
    """
    start = prior_posterior(meta, support_x.shape[0], support_x)._asdict()
    lr = meta.inner_lr()
    n_support = support_y.shape[1]
    step_sizes = {"mu": mean_step_size(lr["mu"], meta.sigma, kl_weight, n_support), "rho": lr["rho"],
                  "phi_normal": lr["alpha"], "phi_reduce": lr["alpha"]}

    def support_elbo(params, step):
        step_tau = meta.sampling.inner_tau(tau, step, steps)
        terms = elbo_terms(meta, support_x, support_y, TaskPosterior(**params), step_tau, relaxed, edge_weights,
                           edge_kl)
        return terms.elbo(kl_weight).sum() / n_support

    return TaskPosterior(**unrolled_steps(support_elbo, start, steps, step_sizes,
                                          first_order=first_order, maximize=True, checkpoint=checkpoint))


def adapt_held_out(meta: MetaNetwork, support_x: torch.Tensor, support_y: torch.Tensor, steps: int, tau: float,
                   relaxed: bool = True, kl_weight: float = 1.0,
                   edge_weights: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                   edge_kl: str = "relaxed") -> TaskPosterior:
    """:func:`adapt` for tasks that only predict: first-order steps, a detached TaskPosterior.

    First-order steps give the same posterior as training's second-order ones (the
    difference is only in the outer gradient, which a held-out task never takes). Runs
    with gradients enabled even inside ``torch.no_grad()``.
    """
    with torch.enable_grad():
        q = adapt(meta, support_x, support_y, steps, tau, relaxed, kl_weight=kl_weight, first_order=True,
                  edge_weights=edge_weights, edge_kl=edge_kl)
    return TaskPosterior(*(t.detach() for t in q))
