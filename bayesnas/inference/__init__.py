"""Inference: the Pyro model and guide of BASE, SVI, and everything downstream of it."""
from .elbo import ElboTerms, elbo_terms
from .guide import TaskPosterior, adapt, base_guide, prior_posterior
from .meta import MetaNetwork, SetEncoder
from .model import ExpRelaxedCategorical, base_model
from .rundir import RunDirectory
from .svi import FitResult, fit
from .unroll import unrolled_steps

__all__ = [
    "ElboTerms", "elbo_terms", "TaskPosterior", "adapt", "base_guide", "prior_posterior", "MetaNetwork",
    "SetEncoder", "ExpRelaxedCategorical", "base_model", "RunDirectory", "FitResult", "fit", "unrolled_steps",
]
