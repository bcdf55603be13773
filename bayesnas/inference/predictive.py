"""The posterior predictive: class probabilities averaged over draws of (theta, z) from q.
"""
from typing import Optional, Tuple

import torch

from .guide import TaskPosterior
from .meta import MetaNetwork
from .model import TaskNormal, edge_examples, edge_prior, validate_args


def predictive(meta: MetaNetwork, q: TaskPosterior, x: torch.Tensor, samples: int, tau: float,
               relaxed: bool, edge_weights: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Posterior predictive class probabilities, one row per draw of (theta, z) from ``q``.

    Args: q: TaskPosterior of T tasks; x: ``[T, B, C, H, W]``; samples: S; tau and
    relaxed as in the guide (tau: the query's, ``meta.sampling.query_tau``); edge_weights:
    a fixed architecture ``(z_normal, z_reduce)`` ``[T, 14, 10]`` each (only theta is drawn;
    the network sees them as given). Returns ``[S, T, B, ways]`` (average over dim 0 for
    Bayesian model averaging).

    z is drawn and seen as in the model (``meta.sampling``): one per image with
    ``per_example``, straight-through one-hot with ``hard``.
    """
    num_tasks = x.shape[0]
    probs = []
    with torch.no_grad():
        for _ in range(samples):
            theta = TaskNormal(q.mu, q.sigma, validate_args=validate_args()).rsample()
            if edge_weights is not None:
                z_n, z_r = edge_weights
            else:
                if relaxed:
                    examples = edge_examples(meta, x)
                    z_n = edge_prior(q.phi_normal, tau, num_tasks, examples).rsample().exp()
                    z_r = edge_prior(q.phi_reduce, tau, num_tasks, examples).rsample().exp()
                else:
                    z_n, z_r = q.edge_weights()
                z_n, z_r = meta.sampling.network_weights(z_n), meta.sampling.network_weights(z_r)
            probs.append(meta.forward_tasks(x, theta, z_n, z_r).softmax(-1))
    return torch.stack(probs)
