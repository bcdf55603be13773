"""Pictures: cells of a genotype, edge posteriors and comparisons (matplotlib only, no graphviz binary).
"""
from .cells import plot_cell, plot_genotype
from .compare import plot_comparison
from .posterior import plot_edge_posterior, plot_posterior_history, plot_search_diagnostics

__all__ = ["plot_cell", "plot_genotype", "plot_comparison", "plot_edge_posterior", "plot_posterior_history",
           "plot_search_diagnostics"]
