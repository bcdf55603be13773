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

How z is drawn and what the network sees of it are run-level settings, an
:class:`~bayesnas.inference.meta.EdgeSampling` on the MetaNetwork (``meta.sampling``): one sample per image
instead of per task, a straight-through one-hot z, the temperatures of the guide's inner
steps, and pruned ops (:meth:`~bayesnas.inference.meta.MetaNetwork.prior_logits`). The
default reproduces the model above exactly.

Usage::

    logits = base_model(meta, x, y, tau=1.0)                     # [T, B, ways]
    trace = pyro.poutine.trace(base_model).get_trace(meta, x, y, 1.0)
"""
import contextlib
import contextvars
import os

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical as _TorchExpRelaxedCategorical

from .meta import MetaNetwork

#: Pyro site names, in the order the model samples them.
THETA = "theta"
Z_SITES = ("log_z_normal", "log_z_reduce")
OBS = "y"


_TASK_SHARE = contextvars.ContextVar("bayesnas_task_share", default=None)


@contextlib.contextmanager
def task_share(total, start, stop):
    """Draw sampling noise for all ``total`` tasks of a meta-batch and keep ``[start, stop)``.

    Inside this block, the guide's reparameterised samples (whose leading batch dimension
    is the local tasks) use the slice ``[start:stop]`` of noise drawn for the whole
    meta-batch. Every process then consumes its RNG stream identically, and a task gets
    the same noise whether one process handles the whole meta-batch or several share it:
    results do not depend on the number of processes.
    """
    token = _TASK_SHARE.set((int(total), int(start), int(stop)))
    try:
        yield
    finally:
        _TASK_SHARE.reset(token)


def current_task_share(num_tasks):
    """The active ``(total, start, stop)`` of :func:`task_share`, or ``(num_tasks, 0, num_tasks)``."""
    share = _TASK_SHARE.get()
    return share if share is not None else (num_tasks, 0, num_tasks)


def _task_noise(draw, shape):
    """``draw(shape)``, or the local slice of ``draw`` over the whole meta-batch (see task_share)."""
    share = _TASK_SHARE.get()
    if share is None or len(shape) == 0:
        return draw(shape)
    total, start, stop = share
    if shape[0] != stop - start:
        raise ValueError(f"task_share({total}, {start}, {stop}) but a sample has {shape[0]} tasks")
    return draw(torch.Size((total,)) + shape[1:])[start:stop]


def validate_args():
    """Whether the model's and guide's distributions check their arguments and samples.

    Off by default: each check reads a tensor on the host (110 host syncs per default SVI
    step, measured by benchmarks/bench_syncs.py), and the training loop checks the
    finiteness of every loss anyway. On with the environment variable ``BAYESNAS_VALIDATE=1``
    (the test suite sets it), for debugging a model change.
    """
    return os.environ.get("BAYESNAS_VALIDATE") == "1"


def gumbel(uniforms):
    """Standard Gumbel noise from uniforms in [0, 1), clamped away from 0 and 1 so it stays finite."""
    finfo = torch.finfo(uniforms.dtype)
    return -(-uniforms.clamp(finfo.tiny, 1 - finfo.eps).log()).log()


class TaskNormal(dist.Normal):
    """Normal whose leading batch dimension is tasks; its noise honours :func:`task_share`."""

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        eps = _task_noise(lambda s: torch.randn(s, dtype=self.loc.dtype, device=self.loc.device), shape)
        return self.loc + eps * self.scale


class ExpRelaxedCategorical(_TorchExpRelaxedCategorical, TorchDistributionMixin):
    """Pyro wrapper of torch's ExpRelaxedCategorical: samples are ``log z`` of a relaxed one-hot z.

    Its Gumbel noise honours :func:`task_share` (leading batch dimension = tasks).
    """

    def __init__(self, temperature, probs=None, logits=None, validate_args=None):
        # torch's builds its inner Categorical with the global validation default, not ``validate_args``
        self._categorical = dist.Categorical(probs, logits, validate_args=validate_args)
        self.temperature = temperature
        super(_TorchExpRelaxedCategorical, self).__init__(self._categorical.batch_shape,
                                                          self._categorical.param_shape[-1:], validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ExpRelaxedCategorical, _instance)
        return super().expand(batch_shape, _instance=new)

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        logits = self.logits
        uniforms = _task_noise(lambda s: torch.rand(s, dtype=logits.dtype, device=logits.device), shape)
        scores = (logits + gumbel(uniforms)) / self.temperature
        return scores - scores.logsumexp(dim=-1, keepdim=True)


def weight_prior(meta, num_tasks):
    """p(theta) for ``num_tasks`` tasks: Normal(mu, sigma^2), batch ``[T]``, event ``[D]``."""
    return dist.Normal(meta.mu, meta.sigma, validate_args=validate_args()).expand(
        [num_tasks, meta.mu.numel()]).to_event(1)


def edge_prior(alpha, tau, num_tasks, examples=None):
    """p(log z) of one cell type, logits ``alpha`` ``[14, 10]`` or ``[T, 14, 10]``: batch ``[T]``, event ``[14, 10]``.

    With ``examples=B``, one z per image: event ``[B, 14, 10]``, the logits shared by the images.
    """
    temperature = torch.as_tensor(tau, dtype=alpha.dtype, device=alpha.device)
    if examples is None:
        return ExpRelaxedCategorical(temperature, logits=alpha,
                                     validate_args=validate_args()).expand([num_tasks, alpha.shape[-2]]).to_event(1)
    return ExpRelaxedCategorical(temperature, logits=alpha.unsqueeze(-3), validate_args=validate_args()).expand(
        [num_tasks, examples, alpha.shape[-2]]).to_event(2)


def edge_examples(meta, x):
    """The ``examples`` argument of :func:`edge_prior` for images ``x [T, B, ...]``: B per image, else None."""
    return x.shape[1] if meta.sampling.per_example else None


def base_model(meta: MetaNetwork, x: torch.Tensor, y: torch.Tensor | None, tau: float,
               z_normal: torch.Tensor | None = None, z_reduce: torch.Tensor | None = None) -> torch.Tensor:
    """Pyro model of eq. (1) over a meta-batch of tasks.

    Args:
        meta: a :class:`~bayesnas.inference.meta.MetaNetwork` (holds mu, sigma, alpha).
        x: images ``[T, B, C, H, W]``.
        y: labels ``[T, B]`` (observed), or None to sample them.
        tau: temperature of the relaxed categorical.
        z_normal: ``[T, 14, 10]`` fixed edge weights of the normal cell (softmax variant; the
            network sees them as given); when None (Gumbel variant) they are sampled from the
            relaxed categorical prior with logits ``meta.prior_logits()``, ``[T, B, 14, 10]``
            with ``meta.sampling.per_example``, and straight-through with ``meta.sampling.hard``.
        z_reduce: the same for the reduction cell.

    Returns:
        logits ``[T, B, ways]``.
    """
    num_tasks = x.shape[0]
    with pyro.plate("tasks", num_tasks, dim=-1):
        theta = pyro.sample(THETA, weight_prior(meta, num_tasks))
        if z_normal is None:
            examples = edge_examples(meta, x)
            alpha_normal, alpha_reduce = meta.prior_logits()
            z_normal = pyro.sample(Z_SITES[0], edge_prior(alpha_normal, tau, num_tasks, examples)).exp()
            z_reduce = pyro.sample(Z_SITES[1], edge_prior(alpha_reduce, tau, num_tasks, examples)).exp()
            z_normal, z_reduce = meta.sampling.network_weights(z_normal), meta.sampling.network_weights(z_reduce)
        logits = meta.forward_tasks(x, theta, z_normal, z_reduce)
        pyro.sample(OBS, dist.Categorical(logits=logits, validate_args=validate_args()).to_event(1), obs=y)
    return logits
