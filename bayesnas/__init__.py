"""bayesnas: BASE (Bayesian meta-network architecture learning) as a Pyro program.

The main entry points are re-exported here and imported on first use, so
``import bayesnas`` (and the command line's ``--help``) stays light.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "FitConfig": "bayesnas.config", "RetrainConfig": "bayesnas.config",
    "fit": "bayesnas.training", "retrain": "bayesnas.training",
    "load_run": "bayesnas.analysis", "derive_cell": "bayesnas.analysis", "evaluate": "bayesnas.analysis",
    "compare": "bayesnas.analysis",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bayesnas' has no attribute {name!r}")
