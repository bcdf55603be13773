"""Rebuild the embedded Omniglot file from the two "minimal" background zips.

    python -m bayesnas.data.build_embedded [FOLDER_WITH_THE_ZIPS]

The folder defaults to ``<repo>/../shared/data/omniglot``. The import uses the defaults of
:func:`~bayesnas.data.omniglot.import_omniglot` (28x28, seed 0, fractions 0.6/0.15/0.25
by character), so the pixel arrays come out identical on every run.
"""
import os
import sys
from pathlib import Path

from .omniglot import import_omniglot
from .store import default_data_path

ZIPS = ("images_background_small1.zip", "images_background_small2.zip")


def default_source_folder() -> Path:
    """``<repo>/../shared/data/omniglot``, where the two zips live in this project."""
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "omniglot"


def build_embedded(folder=None, out=None):
    """Import the two zips in ``folder`` into ``out`` (default: the packaged file); return it opened.
    """
    folder = Path(folder) if folder is not None else default_source_folder()
    out = out or default_data_path()
    data = import_omniglot([folder / name for name in ZIPS], out)
    # Package data must be readable by every user; atomic_path's temp files are 0600.
    os.chmod(out, 0o644)
    return data


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    data = build_embedded(argv[0] if argv else None)
    summary = data.summary()
    print(f"{data.path}: {summary['classes']} classes, {summary['images']} images")


if __name__ == "__main__":
    main()
