"""Inference: the Pyro model and guide of BASE, SVI, and everything downstream of it."""
from .elbo import ElboTerms, elbo_terms
from .guide import TaskPosterior, adapt, base_guide, prior_posterior
from .meta import MetaNetwork, SetEncoder
from .model import ExpRelaxedCategorical, base_model
from .rundir import RunDirectory
from .svi import FitResult, fit
from .unroll import unrolled_steps
from .derive import ChosenEdge, DerivedCell, chosen_edges_table, derive_cell, derive_genotype, format_edges_table
from .maml import RetrainConfig, RetrainResult, load_retrain, maml_loss, maml_step, retrain
from .evaluate import Evaluation, evaluate, format_evaluation, mean_confidence_interval
from .compare import CompareResult, CompareRow, compare, format_compare_table

__all__ = [
    "ElboTerms", "elbo_terms", "TaskPosterior", "adapt", "base_guide", "prior_posterior", "MetaNetwork",
    "SetEncoder", "ExpRelaxedCategorical", "base_model", "RunDirectory", "FitResult", "fit", "unrolled_steps",
    "ChosenEdge", "DerivedCell", "chosen_edges_table", "derive_cell", "derive_genotype", "format_edges_table",
    "RetrainConfig", "RetrainResult", "load_retrain", "maml_loss", "maml_step", "retrain",
    "Evaluation", "evaluate", "format_evaluation", "mean_confidence_interval",
    "CompareResult", "CompareRow", "compare", "format_compare_table",
]
