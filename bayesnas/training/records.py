"""Session records: ``RUN/sessions.json`` (one record per training session) and ``RUN/evaluation.json``.

Each session of a ``fit`` or ``retrain`` run appends a record when it starts (its command, cwd,
versions, device, threads, processes, the data file's path, sha256 and size) and completes it
when it ends (status, iterations reached, last checkpoint). The run card
(:mod:`bayesnas.training.card`) is built from these records; :func:`file_sha256` is what
``evaluate`` and the card hash data files with.

Usage::

    sessions, record = start_session(run_dir, loop, "bayesnas fit --out runs/a", device, data_path)
    ...  # the loop runs
    end_session(run_dir, sessions, record, loop, "finished")
    read_sessions(run_dir)[-1]["status"]  # "finished"
"""
import dataclasses
import datetime
import hashlib
import math
import os
import platform

import torch

from ..device import numerics
from ..errors import RunError
from ..fileio import check_regular_file, read_json, write_json
from .rundir import RunDirectory

SESSIONS = "sessions.json"
EVALUATION = "evaluation.json"


def python_call(function, **arguments):
    """A Python call as text, config dataclasses shown by the fields that differ from their defaults:
    the command a session started from Python records.

    Arguments that are None are left out (they are the defaults).
    """
    parts = [f"{name}={_literal(value)}" for name, value in arguments.items() if value is not None]
    return f"{function}({', '.join(parts)})"


def _literal(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changed = [f"{f.name}={getattr(value, f.name)!r}" for f in dataclasses.fields(value)
                   if getattr(value, f.name) != f.default]
        return f"{type(value).__name__}({', '.join(changed)})"
    if isinstance(value, os.PathLike):
        return repr(os.fspath(value))
    return repr(value)


def file_sha256(path):
    """The sha256 of a file's bytes, as hex (read in 1 MiB pieces); a RunError unless ``path``
    is a regular file (a FIFO or device would be read forever).
    """
    check_regular_file(path, RunError, "file to hash")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions():
    """Versions of bayesnas, torch, pyro, numpy and Python, as a dict of strings.
    """
    import importlib.metadata

    import numpy

    return {"bayesnas": importlib.metadata.version("bayesnas"), "torch": torch.__version__,
            "pyro-ppl": importlib.metadata.version("pyro-ppl"),
            "numpy": numpy.__version__, "python": platform.python_version()}


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


_TEXT, _COUNT, _OPTIONAL_TEXT, _OPTIONAL_COUNT = "a string", "an integer >= 0", "a string or null", \
    "an integer >= 0 or null"
#: every key of a session record, with what its value must be
_SESSION_KEYS = {"command": _TEXT, "cwd": _TEXT, "started": _TEXT, "ended": _OPTIONAL_TEXT, "status": _TEXT,
                 "start_iteration": _COUNT, "reached_iteration": _COUNT, "checkpoint_iteration": _OPTIONAL_COUNT,
                 "device": _TEXT, "threads": _COUNT, "processes": _COUNT, "versions": "an object of strings",
                 "data": "an object with path (string), sha256 (string) and bytes (integer >= 0)"}


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_CHECKS = {
    _TEXT: lambda v: isinstance(v, str),
    _OPTIONAL_TEXT: lambda v: v is None or isinstance(v, str),
    _COUNT: _is_count,
    _OPTIONAL_COUNT: lambda v: v is None or _is_count(v),
    _SESSION_KEYS["versions"]: lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
    _SESSION_KEYS["data"]: lambda v: (isinstance(v, dict) and isinstance(v.get("path"), str)
                                      and isinstance(v.get("sha256"), str) and _is_count(v.get("bytes"))),
}


def read_sessions(run_dir):
    """The sessions recorded in ``RUN/sessions.json`` (a list of dicts; [] when there is none).

    Every record is checked (each key present, each value of its type): a RunError names
    the file, the record and the key otherwise.
    """
    path = RunDirectory(run_dir).file(SESSIONS)
    if not os.path.lexists(path):
        return []
    sessions = read_json(path, RunError, "JSON list of session records")
    if not isinstance(sessions, list):
        raise RunError(f"{path}: expected a JSON list of session records, found {type(sessions).__name__}")
    for i, record in enumerate(sessions, 1):
        if not isinstance(record, dict):
            raise RunError(f"{path}: record {i} is {type(record).__name__}, expected an object")
        missing = sorted(set(_SESSION_KEYS) - set(record))
        if missing:
            raise RunError(f"{path}: expected a JSON list of session records with keys "
                           f"{', '.join(sorted(_SESSION_KEYS))}; record {i} lacks {', '.join(missing)}")
        for key, expected in _SESSION_KEYS.items():
            if not _CHECKS[expected](record[key]):
                raise RunError(f"{path}: record {i}: {key}={_short(record[key])}, expected {expected}")
    return sessions


def _short(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


#: the fields of ``RUN/evaluation.json`` the card shows and ``previous_evaluation`` matches, with their checks
_EVALUATION_FIELDS = {
    "accuracy": ("a number in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1),
    "ci95": ("a number >= 0", lambda v: _is_number(v) and v >= 0),
    "tasks": ("an integer >= 1", lambda v: _is_count(v) and v >= 1),
    "ways": ("an integer >= 1", lambda v: _is_count(v) and v >= 1),
    "shots": ("an integer >= 1", lambda v: _is_count(v) and v >= 1),
    "seed": (_COUNT, _is_count),
    "inner_steps": (_COUNT, _is_count),
    "split": (_TEXT, lambda v: isinstance(v, str)),
    "checkpoint": (_TEXT, lambda v: isinstance(v, str)),
    "accuracies": ("a list of numbers in [0, 1]", lambda v: isinstance(v, list)
                   and all(_is_number(a) and 0 <= a <= 1 for a in v)),
}


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_evaluation(path):
    """``RUN/evaluation.json`` as a dict, checked: finite accuracies in [0, 1], one per task, their
    mean the stated accuracy (a file older than the per-task list is checked without it); a
    RunError naming the file and the field otherwise."""
    saved = read_json(path, RunError, "evaluation (JSON object)")
    if not isinstance(saved, dict):
        raise RunError(f"{path}: expected a JSON object of evaluation fields, found {type(saved).__name__}")
    for key, (expected, ok) in _EVALUATION_FIELDS.items():
        if key not in saved:
            if key == "accuracies":  # a file written before evaluate recorded them
                return saved
            raise RunError(f"{path}: lacks '{key}' ({expected})")
        if not ok(saved[key]):
            raise RunError(f"{path}: {key}={_short(saved[key])}, expected {expected}")
    accs = saved["accuracies"]
    if len(accs) != saved["tasks"]:
        raise RunError(f"{path}: {len(accs)} accuracies for tasks={saved['tasks']}, expected one per task")
    if abs(sum(accs) / len(accs) - saved["accuracy"]) > 1e-6:
        raise RunError(f"{path}: accuracy={saved['accuracy']!r} is not the mean of its {len(accs)} accuracies")
    return saved


def data_record(data_path):
    """The data file as a session records it: absolute path, sha256 and size in bytes."""
    return {"path": os.path.abspath(data_path), "sha256": file_sha256(data_path),
            "bytes": os.path.getsize(data_path)}


def start_session(run_dir, loop, command, device, data_path, processes=1, precision="fp32"):
    """Append the record of a session starting now to ``RUN/sessions.json`` (written at once).

    Its status says "running" until :func:`end_session` completes it, so a session killed
    without a word is still seen.

    Args:
        run_dir: the run folder; loop: the :class:`~bayesnas.training.loop.TrainingLoop`
            (its ``start`` and ``last_checkpoint`` are read).
        command: the command line or Python call that started the session.
        device: the torch device trained on; data_path: the data file (its sha256 is recorded).
        processes: the number of training processes.
        precision: the networks' forward ("fp32", "bf16").

    Returns:
        ``(sessions, record)``: every record of the file, and the new one (the last), for
        :func:`end_session`.
    """
    sessions = read_sessions(run_dir)
    record = {
        "command": command, "cwd": os.getcwd(), "started": _now(), "ended": None,
        "status": "running (or killed before it could record its end)",
        "start_iteration": loop.start, "reached_iteration": loop.start, "checkpoint_iteration": loop.last_checkpoint,
        "device": str(device), "threads": torch.get_num_threads(), "processes": int(processes),
        "numerics": numerics(device), "precision": precision,
        "versions": package_versions(),
        "data": data_record(data_path),
    }
    sessions.append(record)
    write_json(RunDirectory(run_dir).file(SESSIONS), sessions)
    return sessions, record


def end_session(run_dir, sessions, record, loop, status):
    """Complete ``record`` (from :func:`start_session`) with the session's end and write ``RUN/sessions.json``.

    Args:
        status: how it ended ("finished", or "stopped (...)" naming the exception).
        loop: the loop that ran (its ``rows``, ``start`` and ``last_checkpoint`` are read).
    """
    record.update(ended=_now(), status=status, checkpoint_iteration=loop.last_checkpoint,
                  reached_iteration=int(loop.rows[-1]["iteration"]) if loop.rows else loop.start)
    write_json(RunDirectory(run_dir).file(SESSIONS), sessions)
