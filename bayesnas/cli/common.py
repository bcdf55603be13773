"""Shared CLI plumbing: turn library errors into one clear line and a non-zero exit."""
import functools

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
