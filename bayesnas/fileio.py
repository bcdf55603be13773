"""Atomic file writing: nothing already written is ever left half-written.
"""
import contextlib
import json
import os
import tempfile

from .errors import BayesNASError, WriteError


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the target's folder; rename it to ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched. A
    failed write (a full disk, a read-only or missing folder) becomes one
    :class:`~bayesnas.errors.WriteError` naming ``path``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
        os.close(fd)
        yield tmp
        # mkstemp creates 0600; give the result the mode an ordinary open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        if isinstance(exc, OSError):
            raise WriteError(f"{path}: cannot write ({exc.strerror or exc}); the previous "
                             f"{os.path.basename(path)}, if any, is unchanged") from None
        raise


def write_json(path, obj):
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")


def read_json(path, error=BayesNASError, what="JSON file"):
    """Parse the JSON file ``path``; a missing file or invalid JSON is one ``error`` naming it."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc}), expected a {what}") from None
    except (ValueError, RecursionError) as exc:
        raise error(f"{path}: not valid JSON ({exc}), expected a {what}") from None
