"""Pictures: cells of a genotype and edge posteriors (matplotlib only, no graphviz binary).

Usage::

    from bayesnas.viz import plot_genotype
    fig = plot_genotype(DARTS_V2, path="darts_v2.png")
    fig.axes[0].get_title()          # 'normal cell'
"""
from .cells import plot_cell, plot_genotype

__all__ = ["plot_cell", "plot_genotype"]
