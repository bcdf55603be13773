"""Few-shot data: the class-indexed HDF5 store, importers, and the N-way K-shot sampler.

The sampler (which needs torch) is imported on first use, so reading a file's summary
(``bayesnas data info``) starts without torch.
"""
from .folder import import_folder
from .miniimagenet import import_miniimagenet
from .omniglot import import_omniglot
from .protocol import SELECT_ON, default_rotations, resolve_rotations, selection_split
from .store import (
    ClassRecord,
    FewShotData,
    SplitData,
    default_data_path,
    load_default,
    open_data,
    open_dataset,
    write_dataset,
)

__all__ = [
    "open_dataset", "open_data", "write_dataset", "default_data_path", "load_default", "FewShotData",
    "SplitData", "ClassRecord", "TaskSampler", "Task", "import_omniglot", "import_miniimagenet",
    "import_folder",
    "SELECT_ON", "default_rotations", "resolve_rotations", "selection_split",
]


def __getattr__(name):
    if name in ("Task", "TaskSampler"):
        from . import sampler

        return getattr(sampler, name)
    raise AttributeError(f"module 'bayesnas.data' has no attribute {name!r}")
