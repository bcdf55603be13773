"""Files in and out: atomic writes, one bounded JSON reader, one way to make a folder.

Nothing already written is ever left half-written; nothing read is trusted to be a
regular file of a sane size; every failure is one error naming the path.
"""
import contextlib
import errno
import json
import os
import re
import stat
import tempfile

import numpy as np

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


def check_writable(path, error=WriteError):
    """Refuse, before any long work, a file path that :func:`atomic_path` could not write.

    One ``error`` naming ``path`` when it is a folder, when a part of its folder is a file, or
    when the nearest existing folder above it is not writable. Creates nothing.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise error(f"{path}: is a folder, expected the path of a file to write")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise error(f"{path}: cannot write there ({folder} is not a folder)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise error(f"{path}: cannot write there ({folder} is not writable)")
    return path


def write_json(path, obj):
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")


#: what :func:`read_json` accepts: bayesnas's own JSON files are kilobytes, nested a few levels,
#: and hold no integer longer than a 64-bit seed
JSON_MAX_BYTES = 64 << 20
JSON_MAX_DEPTH = 64
JSON_MAX_DIGITS = 40


def check_regular_file(path, error=BayesNASError, what="file"):
    """``os.stat`` of ``path``, or ``error`` naming it unless it is a regular file.

    A FIFO blocks a reader forever, a device (``/dev/zero``) never ends, a folder is no
    file: every path bayesnas reads or hashes is checked here first.
    """
    path = os.fspath(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{path}: is a directory, expected {_a(what)}")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path}: is not a regular file (a FIFO, socket or device), expected {_a(what)}")
    return info


def _a(what):
    return ("an " if what[:1] in "aeiou" else "a ") + what


def _parse_int(text):
    digits = len(text.lstrip("-"))
    if digits > JSON_MAX_DIGITS:
        raise _JSONLimit(f"an integer of {digits} digits (at most {JSON_MAX_DIGITS})")
    return int(text)


class _JSONLimit(ValueError):
    pass


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _depth(text):
    """The deepest nesting of ``[``/``{`` in JSON text (strings skipped), in one linear pass."""
    brackets = _STRING.sub("", text)
    steps = np.frombuffer(brackets.encode("utf-8", "replace"), dtype=np.uint8)
    change = (np.isin(steps, (ord("["), ord("{"))).astype(np.int64)
              - np.isin(steps, (ord("]"), ord("}"))).astype(np.int64))
    return int(np.cumsum(change).max()) if change.size else 0


def read_json(path, error=BayesNASError, what="JSON file", max_bytes=JSON_MAX_BYTES):
    """Parse the JSON file ``path`` within limits; anything wrong is one ``error`` naming it.

    Refused: a path that is not a regular file (:func:`check_regular_file`), more than
    ``max_bytes``, text that is not UTF-8 or not JSON, nesting deeper than
    :data:`JSON_MAX_DEPTH`, an integer longer than :data:`JSON_MAX_DIGITS` digits. What the
    value means is the caller's to check.
    """
    path = os.fspath(path)
    info = check_regular_file(path, error, what)
    if info.st_size > max_bytes:
        raise error(f"{path}: {info.st_size:,} bytes, more than the {max_bytes:,} {_a(what)} may have")
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > max_bytes:
        raise error(f"{path}: more than the {max_bytes:,} bytes {_a(what)} may have")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}), expected {_a(what)}") from None
    depth = _depth(text)
    if depth > JSON_MAX_DEPTH:
        raise error(f"{path}: nested {depth} levels deep (at most {JSON_MAX_DEPTH}), expected {_a(what)}")
    try:
        return json.loads(text, parse_int=_parse_int)
    except _JSONLimit as exc:
        raise error(f"{path}: {exc}, expected {_a(what)}") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise error(f"{path}: not valid JSON ({exc}), expected {_a(what)}") from None


def make_folder(path, inside=None, error=WriteError):
    """Create the folder ``path`` (and its parents); return it. Every failure is one ``error`` naming it.

    ``inside``: a folder that ``path`` must stay in; ``path`` may then not be a symlink,
    so a planted link (``RUN/tensorboard -> /elsewhere``) cannot redirect what is written.
    """
    path = os.fspath(path)
    if inside is not None:
        if os.path.islink(path):
            raise error(f"{path}: is a symlink; bayesnas writes inside {inside} only to a real folder there")
        real, root = os.path.realpath(path), os.path.realpath(inside)
        if os.path.commonpath([real, root]) != root:
            raise error(f"{path}: resolves to {real}, outside {inside}")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise error(f"{path}: exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.ENAMETOOLONG:
            longest = max(len(os.fsencode(part)) for part in path.split(os.sep))
            reason += f": a name of {longest} bytes (at most 255)"
        raise error(f"{path}: cannot create the folder ({reason})") from None
    return path
