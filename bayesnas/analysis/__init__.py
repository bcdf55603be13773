"""Analysis: reading and judging what training wrote.

Edge posteriors (meta-level and task-adapted), the derived cell, held-out evaluation
with confidence intervals, comparisons at matched parameter counts, and :class:`Run`,
a fit run folder as one object (:func:`load_run`).
"""
from .compare import CompareResult, CompareRow, compare, format_compare_table
from .derive import ChosenEdge, DerivedCell, chosen_edges_table, derive_cell, derive_genotype, format_edges_table
from .evaluate import Evaluation, evaluate, format_evaluation, mean_confidence_interval, previous_evaluation
from .posterior import AdaptedPosterior, EdgePosterior, PosteriorHistory
from .run import Run, load_run
from .score import CellScore, ScoreResult, rank_correlation, score_cells

__all__ = [
    "CompareResult", "CompareRow", "compare", "format_compare_table", "ChosenEdge", "DerivedCell",
    "chosen_edges_table", "derive_cell", "derive_genotype", "format_edges_table", "Evaluation", "evaluate",
    "previous_evaluation", "format_evaluation", "mean_confidence_interval", "AdaptedPosterior", "EdgePosterior",
    "PosteriorHistory", "Run", "load_run", "CellScore", "ScoreResult", "rank_correlation", "score_cells",
]
