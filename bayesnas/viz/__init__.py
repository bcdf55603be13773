"""Pictures: cells of a genotype and edge posteriors (matplotlib only, no graphviz binary).
"""
from .cells import plot_cell, plot_genotype

__all__ = ["plot_cell", "plot_genotype"]
