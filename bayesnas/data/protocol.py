"""The protocol rules that depend on the data file: rotations and the model-selection split.

* 90-degree rotations as new training classes are Omniglot practice (Santoro et al., the
  MAML paper); on natural images (Mini-ImageNet) a rotated photograph is not a new class.
  ``rotations=None`` in a config means "decide from the file": on for a file whose
  ``source`` attribute starts by naming Omniglot as its origin (the Omniglot importer's
  and the embedded file's do), off for any other: an image folder's source starts with
  "folder", so a folder merely named after Omniglot does not count.
* Model selection (validation during training, ``checkpoint_best.pt``) uses the ``val``
  split. A file without one is an error unless the user selects on the test classes
  explicitly (``select_on="test"``); the run's config then records it and ``evaluate``
  warns that its accuracy was measured on the classes that chose the checkpoint.

Example:

>>> from bayesnas.data import load_default
>>> data = load_default()
>>> default_rotations(data), selection_split(data, "val"), held_out_split(data)
(True, 'val', 'test')
"""
import re

from ..errors import ConfigError, DataError
from .store import FewShotData

#: The values of a config's ``select_on``.
SELECT_ON = ("val", "test")

#: What ``evaluate`` and ``compare`` print for a run that selected its checkpoint on test classes.
TEST_SELECTION_WARNING = ("this run validated on the test classes (select_on='test'): checkpoint_best.pt was "
                          "chosen by their accuracy, so test accuracy is optimistically biased")

_OMNIGLOT = re.compile(r"(embedded )?omniglot\b", re.IGNORECASE)  # matched at the start of the source


def default_rotations(data: FewShotData) -> bool:
    """Whether training tasks add rotated classes by default: True for an Omniglot file.

    Args:
        data: a :class:`~bayesnas.data.store.FewShotData` (its ``source`` attribute).
    """
    return bool(_OMNIGLOT.match(data.source or ""))


def resolve_rotations(rotations: bool | None, data: FewShotData) -> bool:
    """``rotations`` as given (True/False), or :func:`default_rotations` of ``data`` when None."""
    return default_rotations(data) if rotations is None else bool(rotations)


def held_out_split(data, split=None):
    """The held-out classes a task is drawn from to inspect a trained model: ``split``, or by default
    ``test`` when the file has it, else ``val``. A split the file lacks is a DataError naming it."""
    if split is None:
        split = "test" if "test" in data.splits else "val"
    if split not in data.splits:
        raise DataError(f"{data.path}: no split '{split}'; the file has {', '.join(data.splits)}")
    return split


def selection_split(data: FewShotData, select_on: str = "val") -> str:
    """The split that validates during training and picks ``checkpoint_best.pt``.

    Args:
        data: the opened data file.
        select_on: "val" (the rule) or "test" (explicit opt-in for a file without
            validation classes).

    Returns:
        the split name, ``select_on`` itself.

    Raises:
        DataError: naming the file, when it has no such split.
        ConfigError: for another ``select_on``.
    """
    if select_on not in SELECT_ON:
        raise ConfigError(f"select_on={select_on!r}: expected one of {', '.join(SELECT_ON)}")
    if select_on in data.splits:
        return select_on
    if select_on == "val":
        raise DataError(f"{data.path}: has no 'val' split to select checkpoints on (it has "
                        f"{', '.join(data.splits)}); import it with validation classes, or pass "
                        f"--select-on test (select_on='test') to select on the test classes, knowing the "
                        f"test accuracy is then biased")
    raise DataError(f"{data.path}: has no 'test' split to select checkpoints on (it has {', '.join(data.splits)})")
