"""bayesnas: BASE (Bayesian meta-network architecture learning) as a Pyro program."""

__version__ = "0.1.0"
