"""The generative model of BASE (eq. 1 and 4) as a Pyro program.

For each task t of a meta-batch::

    theta_t ~ Normal(mu, sigma^2)                         one flattened site, [T, D]
    z_t     ~ RelaxedOneHotCategorical(tau, alpha)        per edge, normal and reduction cell
    y_t     ~ Categorical(logits = f(x_t; theta_t, z_t))  the task's labelled points

The edge variables are sampled in log space (``ExpRelaxedCategorical``, whose sample is
``log z``): the density of a relaxed one-hot sample overflows float32 at low
temperature, its log-space twin does not. ``z = exp(log z)`` is what the supernet uses.

In the softmax variant (the paper's "BASE (Softmax)" ablation) the edge weights are not
random: the caller passes them and the model has no z sites.

Usage::

    logits = base_model(meta, x, y, tau=1.0)                     # [T, B, ways]
    trace = pyro.poutine.trace(base_model).get_trace(meta, x, y, 1.0)
"""
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical as _TorchExpRelaxedCategorical

#: Pyro site names, in the order the model samples them.
THETA = "theta"
Z_SITES = ("log_z_normal", "log_z_reduce")
OBS = "y"


class ExpRelaxedCategorical(_TorchExpRelaxedCategorical, TorchDistributionMixin):
    """Pyro wrapper of torch's ExpRelaxedCategorical: samples are ``log z`` of a relaxed one-hot z."""

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ExpRelaxedCategorical, _instance)
        return super().expand(batch_shape, _instance=new)


def weight_prior(meta, num_tasks):
    """p(theta) for ``num_tasks`` tasks: Normal(mu, sigma^2), batch ``[T]``, event ``[D]``."""
    return dist.Normal(meta.mu, meta.sigma).expand([num_tasks, meta.mu.numel()]).to_event(1)


def edge_prior(alpha, tau, num_tasks):
    """p(log z) of one cell type: batch ``[T]``, event ``[14, 10]``."""
    return ExpRelaxedCategorical(torch.as_tensor(tau, dtype=alpha.dtype, device=alpha.device),
                                 logits=alpha).expand([num_tasks, alpha.shape[-2]]).to_event(1)


def base_model(meta, x, y, tau, z_normal=None, z_reduce=None):
    """Pyro model of eq. (1) over a meta-batch of tasks.

    Args:
        meta: a :class:`~bayesnas.inference.meta.MetaNetwork` (holds mu, sigma, alpha).
        x: images ``[T, B, C, H, W]``.
        y: labels ``[T, B]`` (observed), or None to sample them.
        tau: temperature of the relaxed categorical.
        z_normal, z_reduce: ``[T, 14, 10]`` fixed edge weights (softmax variant); when
            None (Gumbel variant) they are sampled from the relaxed categorical prior.

    Returns:
        logits ``[T, B, ways]``.
    """
    num_tasks = x.shape[0]
    with pyro.plate("tasks", num_tasks, dim=-1):
        theta = pyro.sample(THETA, weight_prior(meta, num_tasks))
        if z_normal is None:
            z_normal = pyro.sample(Z_SITES[0], edge_prior(meta.alpha_normal, tau, num_tasks)).exp()
            z_reduce = pyro.sample(Z_SITES[1], edge_prior(meta.alpha_reduce, tau, num_tasks)).exp()
        logits = meta.forward_tasks(x, theta, z_normal, z_reduce)
        pyro.sample(OBS, dist.Categorical(logits=logits).to_event(1), obs=y)
    return logits
