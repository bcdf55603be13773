"""bayesnas: BASE (Bayesian meta-network architecture learning) as a Pyro program.

The main entry points are re-exported here and imported on first use, so
``import bayesnas`` (and the command line's ``--help``) stays light.
"""

from typing import TYPE_CHECKING, Any

#: the package version: the one place it is written (pyproject.toml reads it from here)
__version__ = "0.1.0"

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports on first use
    from .analysis import compare, derive_cell, evaluate, load_run
    from .config import FitConfig, RetrainConfig
    from .training import fit, retrain

_EXPORTS = {
    "FitConfig": "bayesnas.config", "RetrainConfig": "bayesnas.config",
    "fit": "bayesnas.training", "retrain": "bayesnas.training",
    "load_run": "bayesnas.analysis", "derive_cell": "bayesnas.analysis", "evaluate": "bayesnas.analysis",
    "compare": "bayesnas.analysis",
}


__all__ = ["__version__", "FitConfig", "RetrainConfig", "fit", "retrain", "load_run", "derive_cell", "evaluate",
           "compare"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bayesnas' has no attribute {name!r}")
