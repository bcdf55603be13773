"""User-facing errors.

The mistakes bayesnas checks for (a missing file, an impossible few-shot setting, an
invalid genotype, a bad flag), and the conditions a user must act on (a run whose loss
became non-finite, a write that failed), raise a subclass of :class:`BayesNASError`
whose message names the input or file and what was expected. The CLI turns these into
one line on stderr and a non-zero exit; Python users catch them like any exception. A
mistake that is not checked may still surface as another exception.
"""


class BayesNASError(Exception):
    """Base class of the errors bayesnas reports as one line: checked user input, and
    conditions the user must act on (:class:`NonFiniteLossError`, :class:`WriteError`);
    any other exception is unchecked input or a bug."""


class DataError(BayesNASError):
    """A data file is missing, corrupt, or cannot serve the requested tasks."""


class GenotypeError(BayesNASError):
    """A genotype (or its JSON file) is invalid."""


class ConfigError(BayesNASError):
    """A configuration value or flag is invalid."""


class RunError(BayesNASError):
    """A run directory or checkpoint is missing, incomplete or incompatible."""


class NonFiniteLossError(BayesNASError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


class WriteError(BayesNASError):
    """A file could not be written (full disk, read-only folder); its previous version is kept."""
