"""bayesnas: BASE (Bayesian meta-network architecture learning) as a Pyro program."""

__version__ = "0.1.0"


def __getattr__(name):
    # load_run pulls in torch and pyro: import it on first use, so `import bayesnas` stays light
    if name == "load_run":
        from .run import load_run

        return load_run
    raise AttributeError(f"module 'bayesnas' has no attribute {name!r}")
