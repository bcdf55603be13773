"""Is there signal in alpha's meta-gradient? Per-coordinate t-statistics against a sign-flip null.

The meta-gradient of the edge logits alpha is collected over M meta-batches at a fixed
checkpoint (the optimiser never steps). If the estimator carries signal, many of the 280
coordinates have a mean far from 0 relative to their spread across batches, and the mean
over one half of the batches predicts the mean over the other half. Both are judged
against a null made from the same gradients: each batch's gradient multiplied by a random
sign, which keeps every batch's size and heavy tails (Gumbel gradients have them) and
destroys any consistent direction.

Usage::

    grads = arch_gradients("runs/omniglot", batches=24)                   # [24, 280]
    gradient_signal(grads).frac_t2, gradient_signal(grads).null_frac_t2
    arch_gradients("runs/omniglot", batches=24, variant="softmax")        # another estimator, same tasks
"""
import dataclasses
import math
from typing import NamedTuple

import numpy as np
import torch

from ..inference import adapt, elbo_terms
from ..rng import seeded
from ..training.loop import task_samplers
from ..training.schedules import kl_weight, temperature
from ..training.search import edge_sampling, load_fit_state

__all__ = ["GradientSignal", "gradient_signal", "arch_gradients"]


class GradientSignal(NamedTuple):
    """The signal in M gradients of P coordinates.

    frac_t2: share of coordinates whose |t| (mean over batches / standard error) exceeds 2;
    null_frac_t2, null_frac_t2_q95: its mean and 95th percentile under random sign flips;
    split_half: correlation (over coordinates) of the mean gradient of the first half of the
    batches with that of the second half; null_split_half_q95: its 95th percentile under sign
    flips; rms: root mean square of all gradient entries; mean_norm: norm of the mean gradient;
    batches, coords: M and P.
    """

    frac_t2: float
    null_frac_t2: float
    null_frac_t2_q95: float
    split_half: float
    null_split_half_q95: float
    rms: float
    mean_norm: float
    batches: int
    coords: int


def _frac_t2(g):
    mean, sd = g.mean(0), g.std(0, ddof=1)
    t = np.divide(mean * math.sqrt(len(g)), sd, out=np.zeros_like(mean), where=sd > 0)
    return float((np.abs(t) > 2).mean())


def _split_half(g):
    half = len(g) // 2
    a, b = g[:half].mean(0), g[half:2 * half].mean(0)
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def gradient_signal(grads, flips=1000, seed=0):
    """:class:`GradientSignal` of ``grads`` ``[M, P]`` (M >= 4 batches), with ``flips`` sign-flip draws."""
    g = np.asarray(grads, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] < 4:
        raise ValueError(f"gradient_signal needs [batches >= 4, coordinates], got shape {list(g.shape)}")
    rng = np.random.default_rng(seed)
    null_t, null_r = [], []
    for _ in range(flips):
        flipped = g * rng.choice((-1.0, 1.0), size=(g.shape[0], 1))
        null_t.append(_frac_t2(flipped))
        null_r.append(_split_half(flipped))
    return GradientSignal(_frac_t2(g), float(np.mean(null_t)), float(np.quantile(null_t, 0.95)), _split_half(g),
                          float(np.quantile(null_r, 0.95)), float(np.sqrt((g**2).mean())),
                          float(np.linalg.norm(g.mean(0))), g.shape[0], g.shape[1])


def arch_gradients(run_dir, batches=24, which="last", seed=1000, iteration=None, **overrides):
    """alpha's meta-gradient ``[batches, 2 * 14 * 10]`` (normal then reduce) on training meta-batches.

    Args:
        run_dir: a fit run folder; which: its checkpoint.
        batches: M meta-batches of the run's ``tasks`` tasks, drawn from the training split
            starting at task ``seed * tasks`` (the same tasks for every estimator).
        seed: also seeds the guide's and the model's sampling noise.
        iteration: the schedule point (temperature, KL weight) the gradient is taken at
            (default: the checkpoint's).
        overrides: FitConfig fields that change the estimator (``variant``, ``edge_kl``,
            ``first_order``, ``tasks``, ``z_per_example``, ``straight_through``,
            ``inner_tau_end``, ``prune_below``, ...), applied to the run's config; the
            meta-network's :class:`~bayesnas.inference.meta.EdgeSampling` is set from it.

    The loss is the SVI step's: the negative query ELBO per point after the guide's steps, at
    the run's KL weight (:func:`~bayesnas.training.search.svi_step` without the optimiser).
    """
    cfg, meta, data, state = load_fit_state(run_dir, which)
    cfg = dataclasses.replace(cfg, **overrides)
    cfg.validate()
    meta.sampling = edge_sampling(cfg)
    iteration = max(int(state["iteration"] if iteration is None else iteration), 1)
    tau, beta = temperature(cfg, iteration), kl_weight(cfg, iteration)
    relaxed = cfg.variant == "gumbel"
    train, _ = task_samplers(cfg, data, torch.device("cpu"))
    out = []
    with seeded(seed, meta.mu.device):
        for b in range(batches):
            first = (seed + b) * cfg.tasks
            batch = train.batch(range(first, first + cfg.tasks))
            meta.zero_grad(set_to_none=True)
            q = adapt(meta, batch.support_x, batch.support_y, cfg.inner_steps, tau, relaxed, kl_weight=beta,
                      first_order=cfg.first_order, edge_kl=cfg.edge_kl)
            terms = elbo_terms(meta, batch.query_x, batch.query_y, q, meta.sampling.query_tau(tau), relaxed,
                               edge_kl=cfg.edge_kl)
            loss = -terms.elbo(beta).mean() / batch.query_y.shape[1]
            g_normal, g_reduce = torch.autograd.grad(loss, [meta.alpha_normal, meta.alpha_reduce], allow_unused=True)
            out.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                                  for g, p in ((g_normal, meta.alpha_normal), (g_reduce, meta.alpha_reduce))]))
    return torch.stack(out).numpy()
