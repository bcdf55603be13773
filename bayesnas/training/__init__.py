"""Training: the search (``fit``) and MAML retraining (``retrain``), and their plumbing.

The loop (iterations, validation, checkpoints, resume), run folders, schedules,
several processes, session records, run cards and TensorBoard logging. The maths they step is in
:mod:`bayesnas.inference`; reading and judging finished runs is :mod:`bayesnas.analysis`.
"""
from .retrain import RetrainResult, load_retrain, maml_loss, maml_step, retrain
from .rundir import RunDirectory
from .search import FitResult, fit, load_fit, svi_step

__all__ = ["fit", "FitResult", "load_fit", "svi_step", "retrain", "RetrainResult", "load_retrain", "maml_loss",
           "maml_step", "RunDirectory"]
