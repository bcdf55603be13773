"""Shared CLI plumbing: turn library errors into one clear line and a non-zero exit."""
import functools
import shlex
import sys

import click

from ..errors import BayesNASError


def user_errors(func):
    """Decorator for click commands: a :class:`BayesNASError` becomes ``Error: <message>``, exit 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except BayesNASError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def cli_command(argv=None):
    """The command line of this process as the user typed it: ``bayesnas`` and its arguments
    (what a run card records as the command that made the run).
    """
    argv = sys.argv if argv is None else argv
    return shlex.join(["bayesnas", *argv[1:]])


class ProgressBar:
    """A ``progress(done, total)`` callable for the library's long loops, drawn as a tqdm bar on
    stderr (``with ProgressBar("score", "cell") as progress: f(..., progress=progress)``)."""

    def __init__(self, desc, unit):
        self.desc, self.unit, self.bar = desc, unit, None

    def __call__(self, done, total):
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, leave=False)
        self.bar.update(done - self.bar.n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False
