"""Import miniImageNet from any of its three common on-disk layouts.

The folder given is searched for, in this order (the first found is used):

(a) Ravi & Larochelle: ``images/`` (the JPEGs) and ``train.csv``, ``val.csv``,
    ``test.csv`` with the header ``filename,label``. A class's images keep their CSV
    order.
(b) torchmeta's cache: ``{split}_data.hdf5`` whose group ``datasets`` holds one uint8
    ``[n, H, W, 3]`` dataset per class, with ``{split}_labels.json`` listing the classes
    to import (without it, every dataset).
(c) learn2learn's cache: ``mini-imagenet-cache-{split}.pkl``, a pickled dict with
    ``image_data`` (uint8 ``[N, H, W, 3]``) and ``class_dict`` (class name -> list of
    indices into ``image_data``). The pickle is read with an unpickler that only builds
    numpy arrays and plain containers, so a hostile file cannot run code.

Each split file found becomes that split; at least one must exist. Classes are named by
their synset (``n01532829``) with group ``""``. Images are stored RGB; those not already
``size x size`` are resized with PIL's LANCZOS filter.
"""
import csv
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from ..errors import DataError
from ..fileio import read_json
from . import imaging
from .store import SPLITS, ClassRecord, FewShotData, open_dataset, printable_name, write_dataset

LAYOUTS = (
    "(a) Ravi & Larochelle: images/ with train.csv, val.csv, test.csv",
    "(b) torchmeta: {train,val,test}_data.hdf5 (+ _labels.json)",
    "(c) learn2learn: mini-imagenet-cache-{train,val,test}.pkl",
)


def import_miniimagenet(path: str | os.PathLike, out: str | os.PathLike, size: int = 84,
                        progress: bool = True) -> FewShotData:
    """Import the miniImageNet folder ``path`` (layout auto-detected) into ``out``.

    Args:
        path: a folder in one of the layouts (a), (b), (c) described in this module.
        out: the bayesnas-fewshot HDF5 file to write (atomically: nothing on failure).
        size: output side in pixels (84 keeps the usual miniImageNet images as they are).
        progress: show a tqdm bar on stderr (only when stderr is a terminal).

    Returns:
        the :class:`~bayesnas.data.store.FewShotData` of ``out``.
    """
    size = imaging.check_size(size)
    folder = Path(os.fspath(path))
    if not folder.exists():
        raise DataError(f"{path}: no such folder")
    if not folder.is_dir():
        raise DataError(f"{path}: expected a folder holding miniImageNet in one of the layouts "
                        + "; ".join(LAYOUTS))
    if (folder / "images").is_dir() and _present(folder, "{}.csv"):
        layout, splits = "Ravi & Larochelle csv", _read_csv_layout(folder, size, progress)
    elif _present(folder, "{}_data.hdf5"):
        layout, splits = "torchmeta hdf5", _read_torchmeta(folder, size, progress)
    elif _present(folder, "mini-imagenet-cache-{}.pkl"):
        layout, splits = "learn2learn pickle", _read_learn2learn(folder, size, progress)
    else:
        raise DataError(f"{path}: no miniImageNet layout recognised; looked for " + "; ".join(LAYOUTS))
    source = f"miniImageNet ({layout}: {printable_name(folder.resolve().name)}); {size}x{size} RGB"
    write_dataset(out, splits, source=source, image_size=(size, size), channels=3)
    return open_dataset(out)


def _present(folder, pattern):
    return [s for s in SPLITS if (folder / pattern.format(s)).is_file()]


def _bar(total, progress):
    return tqdm(total=total, desc="miniImageNet", unit="img", disable=None if progress else True)


def _read_csv_layout(folder, size, progress):
    listed = {}
    for split in _present(folder, "{}.csv"):
        csv_path = folder / f"{split}.csv"
        try:
            with open(csv_path, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{csv_path}: cannot read ({exc})") from None
        if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
            raise DataError(f"{csv_path}: expected the header 'filename,label'")
        classes = {}
        for line, row in enumerate(rows[1:], start=2):
            if not row:
                continue
            if len(row) != 2 or not row[0] or not row[1]:
                raise DataError(f"{csv_path}, line {line}: expected 'filename,label', got {','.join(row)!r}")
            classes.setdefault(row[1], []).append((line, row[0]))
        if not classes:
            raise DataError(f"{csv_path}: lists no images")
        listed[split] = (csv_path, classes)

    total = sum(len(v) for _, classes in listed.values() for v in classes.values())
    splits = {}
    with _bar(total, progress) as bar:
        for split, (csv_path, classes) in listed.items():
            records = []
            for label, files in classes.items():
                images = np.empty((len(files), size, size, 3), dtype=np.uint8)
                for i, (line, name) in enumerate(files):
                    image_path = folder / "images" / name
                    where = f"{csv_path}, line {line}: {image_path}"
                    if not os.path.lexists(image_path):
                        raise DataError(f"{where}: listed image is missing")
                    images[i] = imaging.resize(imaging.read_image(image_path, "RGB", where), size)
                    bar.update(1)
                records.append(ClassRecord(label, "", images))
            splits[split] = records
    return splits


def _read_torchmeta(folder, size, progress):
    splits = {}
    opened = {}
    try:
        for split in _present(folder, "{}_data.hdf5"):
            file = folder / f"{split}_data.hdf5"
            try:
                opened[split] = h5py.File(file, "r")
            except OSError as exc:
                raise DataError(f"{file}: not a readable HDF5 file ({exc})") from None
            group = opened[split].get("datasets")
            if not isinstance(group, h5py.Group) or not len(group):
                raise DataError(f"{file}: expected a group 'datasets' with one dataset per class")
            names = _torchmeta_labels(folder / f"{split}_labels.json", group, file)
            for name in names:
                ds = group[name]
                if not isinstance(ds, h5py.Dataset) or ds.dtype != np.uint8 or ds.ndim != 4 \
                        or ds.shape[3] != 3 or ds.shape[0] < 1:
                    raise DataError(f"{file}: datasets/{name} must be uint8 [n>=1, H, W, 3], "
                                    f"found {getattr(ds, 'dtype', 'a group')} {list(getattr(ds, 'shape', []))}")
            splits[split] = (file, group, names)

        total = sum(group[name].shape[0] for _, group, names in splits.values() for name in names)
        records = {}
        with _bar(total, progress) as bar:
            for split, (file, group, names) in splits.items():
                records[split] = []
                for name in names:
                    try:
                        array = group[name][...]
                    except OSError as exc:
                        raise DataError(f"{file}: cannot read datasets/{name} ({exc})") from None
                    records[split].append(ClassRecord(name, "", imaging.resize_array(array, size)))
                    bar.update(len(array))
        return records
    finally:
        for f in opened.values():
            f.close()


def _torchmeta_labels(labels_path, group, file):
    if not labels_path.is_file():
        return sorted(group.keys())
    names = read_json(labels_path, DataError, "JSON class list")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DataError(f"{labels_path}: expected a JSON list of class names")
    missing = [n for n in names if n not in group]
    if missing:
        raise DataError(f"{labels_path}: class '{missing[0]}' has no dataset in {file} (datasets/)")
    return names


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain containers; refuses every other global."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_learn2learn(folder, size, progress):
    loaded = {}
    for split in _present(folder, "mini-imagenet-cache-{}.pkl"):
        file = folder / f"mini-imagenet-cache-{split}.pkl"
        try:
            with open(file, "rb") as f:
                # latin1 lets numpy arrays pickled by Python 2 load.
                data = _ArraysOnlyUnpickler(f, encoding="latin1").load()
        except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
            raise DataError(f"{file}: cannot unpickle ({exc})") from None
        if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
            raise DataError(f"{file}: expected a pickled dict with 'image_data' and 'class_dict'")
        images, class_dict = data["image_data"], data["class_dict"]
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
                or images.shape[3] != 3:
            raise DataError(f"{file}: 'image_data' must be uint8 [N, H, W, 3], found "
                            f"{getattr(images, 'dtype', type(images).__name__)} {list(getattr(images, 'shape', []))}")
        if not isinstance(class_dict, dict) or not class_dict:
            raise DataError(f"{file}: 'class_dict' must map class names to lists of image indices")
        classes = {}
        for name, indices in class_dict.items():
            try:
                indices = np.asarray(indices, dtype=np.int64).reshape(-1)
            except (TypeError, ValueError):
                raise DataError(f"{file}: class_dict['{name}'] is not a list of indices") from None
            if not len(indices) or (indices < 0).any() or (indices >= len(images)).any():
                raise DataError(f"{file}: class_dict['{name}'] needs indices in 0..{len(images) - 1}")
            classes[str(name)] = indices
        loaded[split] = (images, classes)

    total = sum(len(i) for _, classes in loaded.values() for i in classes.values())
    splits = {}
    with _bar(total, progress) as bar:
        for split, (images, classes) in loaded.items():
            splits[split] = []
            for name, indices in classes.items():
                splits[split].append(ClassRecord(name, "", imaging.resize_array(images[indices], size)))
                bar.update(len(indices))
    return splits
