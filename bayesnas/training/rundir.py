"""A run directory that explains itself.

    RUN_DIR/config.json            the resolved configuration
    RUN_DIR/checkpoint_last.pt     written atomically (temp file, then rename)
    RUN_DIR/checkpoint_best.pt     best by the validation score
    RUN_DIR/metrics.csv            one row per iteration (and validation columns)
    RUN_DIR/posterior_history.h5   alpha per logged step (fit runs)
    RUN_DIR/genotype.json          the derived cell (derive-cell)

Every file is replaced atomically, so a run killed at any moment leaves the previous
complete version of each file in place. A file is replaced, never written through, so a
symlink planted in the folder does not redirect a write; a subfolder (``tensorboard/``)
must be a real folder inside it. While a session trains, its process holds
``RUN/.lock`` (``flock``; the file is removed when the session ends): a second process
given the same folder is refused instead of racing on its files. Checkpoints hold only tensors and plain Python
data (numbers, strings, None, lists, tuples, dicts) and are read with
``torch.load(weights_only=True)``: a checkpoint that holds anything else, such as a
crafted pickle whose loading would run code, is refused with a :class:`RunError`.
"""
import csv
import datetime
import fcntl
import math
import os
import pickle

import h5py
import numpy as np
import torch

from ..errors import RunError, WriteError
from ..fileio import atomic_path, check_regular_file, make_folder, read_json, write_json

#: 2: plain data only (format 1 held numpy arrays, which need the unsafe pickle loader)
CHECKPOINT_FORMAT = 2
_PLAIN_SCALARS = (bool, int, float, str, type(None))


def default_run_path(kind, root="runs"):
    """A new folder name under ``root``: ``runs/<kind>-YYYYmmdd-HHMMSS[-N]``."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(root, f"{kind}-{stamp}")
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(root, f"{kind}-{stamp}-{n}")
    return path


#: held by the process of a training session (see the module docstring)
LOCK_FILE = ".lock"
# realpath of a run folder -> the descriptor of its lock file, for the folders this process holds
_HELD: dict[str, int] = {}

# metrics.csv columns that hold text; every other column reads back as floats
TEXT_COLUMNS = ("genotype",)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def metric_text(value):
    """A ``metrics.csv`` cell: a float as the shortest text that reads back as the same float32.

    The metrics are float32 computations: ``0.26``, not ``0.25999999046325684``. Values
    beyond float32's range keep their full text; anything else is written as it is.

    >>> metric_text(0.25999999046325684), metric_text(0.5477225575051661), metric_text(3), metric_text(None)
    ('0.26', '0.5477226', 3, None)
    """
    if isinstance(value, float) and (not math.isfinite(value) or abs(value) <= _FLOAT32_MAX):
        return str(np.float32(value))
    return value
# The search diagnostics in posterior_history.h5 (version 2 on), with their stored types.
HISTORY_DIAGNOSTICS = {"edge_entropy_mean": np.float64, "edge_entropy_max": np.float64,
                       "top_prob_mean": np.float64, "genotype": h5py.string_dtype(), "genotype_changed": np.int8}


class RunDirectory:
    """Reads and writes the files of one run folder (see the module docstring)."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def file(self, name):
        return os.path.join(self.path, name)

    @classmethod
    def create(cls, path, config):
        """Create a new run folder holding ``config.json``; refuse to overwrite a run."""
        run = cls(path)
        if os.path.exists(run.file("config.json")) or os.path.exists(run.file("checkpoint_last.pt")):
            raise RunError(f"{path}: already holds a run; use --resume {path} to continue it, or choose another --out")
        if os.path.lexists(path) and not os.path.isdir(path):
            raise RunError(f"{path}: exists and is not a folder")
        make_folder(path)
        run.lock()
        if os.path.exists(run.file("config.json")):  # another process created it first
            run.unlock()
            raise RunError(f"{path}: already holds a run; use --resume {path} to continue it, or choose another --out")
        write_json(run.file("config.json"), config)
        return run

    def subfolder(self, name, create=True):
        """``RUN/<name>``, made a real folder inside the run (not a symlink, not a file); with
        ``create`` False only checked, so a session can refuse it before writing anything."""
        path = self.file(name)
        if not create:
            if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
                raise RunError(f"{path}: is {'a symlink' if os.path.islink(path) else 'not a folder'}; bayesnas "
                               f"writes {name}/ only as a real folder inside {self.path}: remove it or choose "
                               f"another folder")
            return path
        return make_folder(path, inside=self.path, error=RunError)

    def lock(self):
        """Hold ``RUN/.lock`` for this process until :meth:`unlock` (again in the same process: no-op).

        Raises:
            RunError: when another process holds it (a session training in this folder).
        """
        key = os.path.realpath(self.path)
        if key in _HELD:
            return
        path = self.file(LOCK_FILE)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as exc:
                raise WriteError(f"{path}: cannot create the lock file ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip()
                os.close(fd)
                raise RunError(f"{self.path}: in use by another process{f' (pid {holder})' if holder else ''} that "
                               f"holds {LOCK_FILE}; wait for it to end, or choose another folder") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else the holder removed it between our open and our lock: take the new one
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        _HELD[key] = fd

    def unlock(self):
        """Give up ``RUN/.lock`` (removing it) if this process holds it."""
        fd = _HELD.pop(os.path.realpath(self.path), None)
        if fd is not None:
            try:
                os.remove(self.file(LOCK_FILE))
            except OSError:
                pass
            os.close(fd)

    def config(self):
        """The resolved configuration (dict)."""
        path = self.file("config.json")
        if not os.path.isdir(self.path):
            raise RunError(f"{self.path}: no such run folder")
        if not os.path.lexists(path):
            raise RunError(f"{path}: missing; expected the resolved config of a run")
        return read_json(path, RunError, "run config (JSON)")

    def save_checkpoint(self, state, best=False):
        """Write ``checkpoint_last.pt`` (and first ``checkpoint_best.pt`` when ``best``) atomically.

        ``state`` must be plain data (see the module docstring). ``best`` is written before
        ``last``: a crash between the two leaves ``best`` at the newest best score and
        ``last`` at the previous checkpoint, whose resumed run re-validates and rewrites
        ``best`` identically; never a ``last`` recording a best score that ``best`` lacks.
        A failed write (full disk, read-only folder) raises one
        :class:`~bayesnas.errors.WriteError` and leaves the previous file of that name intact.
        """
        state = dict(state, format=CHECKPOINT_FORMAT)
        _check_plain(state, "state")
        for which in (("best", "last") if best else ("last",)):
            with atomic_path(self.file(f"checkpoint_{which}.pt")) as tmp:
                torch.save(state, tmp)

    def load_checkpoint(self, which="last", map_location="cpu"):
        """Load ``checkpoint_<which>.pt``; a clear RunError if missing, corrupt, unsafe or of another format."""
        path = self.file(f"checkpoint_{which}.pt")
        if not os.path.exists(path):
            raise RunError(f"{path}: missing; expected a checkpoint written by bayesnas")
        check_regular_file(path, RunError, "checkpoint")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            raise RunError(f"{path}: refused: it holds Python objects other than tensors and plain data, which "
                           f"a bayesnas checkpoint (format {CHECKPOINT_FORMAT}) never does and whose loading could "
                           f"run code") from None
        except Exception as exc:  # torch raises many kinds on a corrupt file
            raise RunError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise RunError(f"{path}: checkpoint format {found!r}, this bayesnas reads format {CHECKPOINT_FORMAT}")
        return state

    def write_metrics(self, rows):
        """Rewrite ``metrics.csv`` from ``rows`` (list of dicts) atomically, floats at float32 precision
        (:func:`metric_text`)."""
        fields = []
        for row in rows:
            fields.extend(k for k in row if k not in fields)
        with atomic_path(self.file("metrics.csv")) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows({k: metric_text(v) for k, v in row.items()} for row in rows)

    def read_metrics(self):
        """``metrics.csv`` as a list of dicts: float values, strings in :data:`TEXT_COLUMNS` (empty cells -> None)."""
        path = self.file("metrics.csv")
        if not os.path.lexists(path):
            raise RunError(f"{path}: missing; the run has not logged any metrics")
        check_regular_file(path, RunError, "metrics table (CSV)")
        try:
            with open(path, newline="", encoding="utf-8") as f:
                return [_metrics_row(path, line, row) for line, row in enumerate(csv.DictReader(f), 2)]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise RunError(f"{path}: not a readable CSV table ({exc})") from None

    def write_history(self, history):
        """Rewrite ``posterior_history.h5`` atomically.

        ``history``: dict with "iteration" (list of int), "alpha_normal" and
        "alpha_reduce" (lists of ``[14, 10]`` arrays), and the search diagnostics of
        each entry (lists; see :class:`~bayesnas.training.diagnostics.SearchDiagnostics`),
        each written when present.
        """
        with atomic_path(self.file("posterior_history.h5")) as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = "bayesnas-posterior-history"
                f.attrs["version"] = 2
                f.create_dataset("iteration", data=np.asarray(history["iteration"], dtype=np.int64))
                for key in ("alpha_normal", "alpha_reduce"):
                    f.create_dataset(key, data=np.asarray(history[key], dtype=np.float32).reshape(-1, 14, 10))
                for key, dtype in HISTORY_DIAGNOSTICS.items():
                    if key in history:
                        f.create_dataset(key, data=np.asarray(history[key], dtype=dtype), dtype=dtype)

    def read_history(self):
        """``posterior_history.h5`` as a dict: iteration ``[n]``, alpha_* ``[n, 14, 10]`` arrays,
        and the search diagnostics: arrays ``[n]``, "genotype" a list of ``n`` strings; each
        None in a file written before fit recorded them (version 1)."""
        path = self.file("posterior_history.h5")
        if not os.path.lexists(path):
            raise RunError(f"{path}: missing; expected the edge posterior history of a fit run")
        check_regular_file(path, RunError, "posterior history (HDF5)")
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != "bayesnas-posterior-history":
                    raise RunError(f"{path}: not a bayesnas posterior history (attribute 'format' missing)")
                history = {k: f[k][()] for k in ("iteration", "alpha_normal", "alpha_reduce")}
                for key in HISTORY_DIAGNOSTICS:
                    if key not in f:
                        history[key] = None
                    elif key == "genotype":
                        history[key] = f[key].asstr()[()].tolist()
                    else:
                        history[key] = f[key][()]
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise RunError(f"{path}: not a readable posterior history ({exc})") from None
        _check_history(path, history)
        return history


def _metrics_row(path, line, row):
    """One row of metrics.csv: floats, strings in TEXT_COLUMNS, None for empty cells; RunError naming the cell."""
    if None in row:
        raise RunError(f"{path}, line {line}: more cells than the header has columns")
    values = {}
    for key, value in row.items():
        if value in ("", None):
            values[key] = None
        elif key in TEXT_COLUMNS:
            values[key] = value
        else:
            try:
                values[key] = float(value)
            except ValueError:
                raise RunError(f"{path}, line {line}: {key}={value[:40]!r}, expected a number") from None
    if values.get("iteration") is None:
        raise RunError(f"{path}, line {line}: no iteration, expected one in every row")
    return values


def _check_history(path, history):
    """RunError naming ``path`` unless the arrays of a posterior history agree: iteration ``[n]``
    integers, alpha_* ``[n, 14, 10]`` finite, each diagnostic ``n`` long."""
    iteration = np.asarray(history["iteration"])
    if iteration.ndim != 1 or not np.issubdtype(iteration.dtype, np.integer):
        raise RunError(f"{path}: iteration is {iteration.dtype} {list(iteration.shape)}, expected integers [n]")
    n = len(iteration)
    for key in ("alpha_normal", "alpha_reduce"):
        alpha = np.asarray(history[key])
        if alpha.shape != (n, 14, 10) or not np.issubdtype(alpha.dtype, np.floating):
            raise RunError(f"{path}: {key} is {alpha.dtype} {list(alpha.shape)}, expected floats [{n}, 14, 10] "
                           f"(one [edges, ops] table per logged iteration)")
        if not np.isfinite(alpha).all():
            raise RunError(f"{path}: {key} holds values that are not finite")
    for key in HISTORY_DIAGNOSTICS:
        if history[key] is not None and (np.ndim(history[key]) != 1 or len(history[key]) != n):
            raise RunError(f"{path}: {key} has shape {list(np.shape(history[key]))}, expected [{n}] "
                           f"(one per logged iteration)")


def _check_plain(obj, where):
    """Raise TypeError unless ``obj`` is plain data that ``torch.load(weights_only=True)`` reads back."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            _check_plain(key, f"{where} key")
            _check_plain(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
    elif not (type(obj) in _PLAIN_SCALARS or isinstance(obj, torch.Tensor)):  # numpy.float64 subclasses float
        raise TypeError(f"checkpoint {where} is a {type(obj).__name__}; checkpoints hold tensors and plain data only")
