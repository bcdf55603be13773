"""Inference: BASE's equations 1-10 as a Pyro program, and nothing else.

model (eq. 1, 4), guide (eq. 6-10) with its unrolled steps (adapt, unroll), the ELBO, the
meta-parameters W, and the posterior predictive. Training loops, run folders and
inspection live in :mod:`bayesnas.training` and :mod:`bayesnas.analysis`.
"""
from .adapt import adapt, adapt_held_out, mean_step_size
from .elbo import ElboTerms, elbo_terms
from .guide import TaskPosterior, base_guide, prior_posterior
from .meta import EdgeSampling, MetaNetwork, SetEncoder
from .model import ExpRelaxedCategorical, base_model
from .predictive import predictive
from .unroll import unrolled_steps

__all__ = [
    "adapt", "adapt_held_out", "mean_step_size", "ElboTerms", "elbo_terms", "TaskPosterior", "base_guide",
    "prior_posterior", "EdgeSampling", "MetaNetwork", "SetEncoder", "ExpRelaxedCategorical", "base_model", "predictive",
    "unrolled_steps",
]
