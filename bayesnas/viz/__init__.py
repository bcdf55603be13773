"""Pictures: cells of a genotype, edge posteriors and comparisons (matplotlib only, no graphviz binary).
"""
from .cells import plot_cell, plot_genotype
from .compare import plot_comparison

__all__ = ["plot_cell", "plot_genotype", "plot_comparison"]
