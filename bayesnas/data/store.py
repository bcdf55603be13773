"""The class-indexed few-shot store: one HDF5 file, read whole into memory per split.

File layout (``format="bayesnas-fewshot"``, ``version=1``)::

    /                       attrs: format, version, source (str),
                                   image_size (int [H, W]), channels (int)
    /train                  one group per split; any non-empty subset of train, val, test
    /train/00000            uint8 [n_images, H, W, C], gzip; attrs: name (str), group (str)
    /train/00001            ...

Classes inside a split are sorted by ``name`` and stored under zero-padded indices, so a
class name may contain '/' (``"Greek/character03"``) and the order never depends on the
tool that wrote the file. Pixels are uint8 with the foreground bright: Omniglot is
inverted on import (ink 255 on a 0 background); natural images are stored as RGB.
"""
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np

from ..errors import DataError
from ..fileio import atomic_path, check_regular_file

if TYPE_CHECKING:
    import torch

FORMAT = "bayesnas-fewshot"
VERSION = 1
SPLITS = ("train", "val", "test")
ROOT_ATTRS = ("format", "version", "source", "image_size", "channels")
EMBEDDED_NAME = "omniglot_minimal.h5"
# gzip level 9 costs nothing measurable on read and keeps the embedded file small.
GZIP_LEVEL = 9
# Chunks of at most ~1 MiB: whole classes for Omniglot, ~50 images for 84x84 RGB.
CHUNK_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class ClassRecord:
    """One class to write: ``images`` is uint8 ``[n_images, H, W, C]``.

    Args:
        name: the class's original name; may contain '/' (``"Greek/character03"``).
        group: the alphabet or synset group it belongs to, ``""`` when there is none.
        images: uint8 numpy array ``[n_images, H, W, C]``, foreground bright.
    """

    name: str
    group: str
    images: np.ndarray


def write_dataset(path: str | os.PathLike, splits: Dict[str, List[ClassRecord]], source: str, image_size: Sequence[int],
                  channels: int) -> None:
    """Write ``splits`` to a new bayesnas-fewshot file at ``path``, atomically.

    Everything is validated before anything is written; on any error ``path`` is left as it
    was (absent, or the previous file).

    Args:
        path: output file.
        splits: ``{"train": [ClassRecord, ...], "val": [...], "test": [...]}``; any non-empty
            subset of the three names, each with at least one class of unique name.
        source: free text saying where the data came from (stored as the root attribute).
        image_size: ``(H, W)`` of every image.
        channels: ``C`` of every image (1 for Omniglot, 3 for RGB).
    """
    label = os.fspath(path)
    height, width = _check_image_size(label, image_size)
    channels = _check_positive_int(label, "channels", channels)
    if not isinstance(source, str):
        raise DataError(f"{label}: source must be a string, got {type(source).__name__}")
    _check_utf8(label, "source", source)
    if not isinstance(splits, dict) or not splits:
        raise DataError(f"{label}: expected at least one split among {', '.join(SPLITS)}")
    ordered = {}
    for split in SPLITS:
        if split in splits:
            ordered[split] = _check_records(label, split, splits[split], (height, width, channels))
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise DataError(f"{label}: unknown split name(s) {unknown}; expected {', '.join(SPLITS)}")

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["source"] = source
            f.attrs["image_size"] = np.array([height, width], dtype=np.int64)
            f.attrs["channels"] = channels
            for split, records in ordered.items():
                group = f.create_group(split)
                width_digits = max(5, len(str(len(records) - 1)))
                for i, rec in enumerate(records):
                    per_image = height * width * channels
                    rows = max(1, min(len(rec.images), CHUNK_BYTES // per_image))
                    ds = group.create_dataset(
                        f"{i:0{width_digits}d}",
                        data=rec.images,
                        chunks=(rows, height, width, channels),
                        compression="gzip",
                        compression_opts=GZIP_LEVEL,
                    )
                    ds.attrs["name"] = rec.name
                    ds.attrs["group"] = rec.group


def _check_utf8(label, what, text):
    """HDF5 stores strings as UTF-8: a name with undecodable bytes (os.fsdecode's surrogates) is refused."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{label}: the {what} {printable_name(text)!r} is not valid UTF-8 (HDF5 stores "
                        f"names as UTF-8); rename it") from None


def printable_name(name: str) -> str:
    """``name`` (a file or folder name as the OS gave it) with bytes that are not UTF-8 shown as U+FFFD."""
    return os.fsencode(name).decode("utf-8", "replace")


def _check_image_size(label, image_size):
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise DataError(f"{label}: image_size must be (H, W), got {image_size!r}") from None
    if height < 1 or width < 1:
        raise DataError(f"{label}: image_size must be positive, got {image_size!r}")
    return height, width


def _check_positive_int(label, what, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{label}: {what} must be a positive integer, got {value!r}")
    return int(value)


def _check_records(label, split, records, shape):
    if not isinstance(records, (list, tuple)) or not records:
        raise DataError(f"{label}: split '{split}' needs at least one class")
    seen = set()
    for rec in records:
        if not isinstance(rec, ClassRecord):
            raise DataError(f"{label}: split '{split}' holds a {type(rec).__name__}, expected ClassRecord")
        if not isinstance(rec.name, str) or not rec.name:
            raise DataError(f"{label}: split '{split}' has a class with an empty or non-string name")
        if not isinstance(rec.group, str):
            raise DataError(f"{label}: split '{split}' class '{rec.name}': group must be a string")
        _check_utf8(label, f"split '{split}' class name", rec.name)
        _check_utf8(label, f"split '{split}' group name", rec.group)
        if rec.name in seen:
            raise DataError(f"{label}: split '{split}' has two classes named '{rec.name}'")
        seen.add(rec.name)
        images = rec.images
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise DataError(f"{label}: split '{split}' class '{rec.name}': images must be a uint8 numpy array")
        if images.ndim != 4 or images.shape[1:] != shape or images.shape[0] < 1:
            raise DataError(
                f"{label}: split '{split}' class '{rec.name}': images have shape {tuple(images.shape)}, "
                f"expected [n>=1, {shape[0]}, {shape[1]}, {shape[2]}]"
            )
    return sorted(records, key=lambda r: r.name)


@dataclasses.dataclass(frozen=True)
class _ClassInfo:
    key: str
    name: str
    group: str
    count: int


class SplitData:
    """One split held in memory: every image of every class in one uint8 tensor.

    Class ``i`` owns ``images[class_offsets[i]:class_offsets[i + 1]]``.

    Attributes:
        images: uint8 tensor ``[n_total, C, H, W]``, foreground bright (0..255).
        counts: int64 tensor ``[num_classes]``, images per class.
        class_offsets: int64 tensor ``[num_classes + 1]``, start of each class (cumulative counts).
        class_names, groups: lists of ``num_classes`` strings.
        name: the split's name; ``path``: the file it came from (used in error messages).
    """

    def __init__(self, images, counts: "Sequence[int] | torch.Tensor", class_names: Sequence[str],
                 groups: Sequence[str], name: str = "train", path: str = "<memory>"):
        import torch

        self.name = name
        self.path = path
        counts = torch.as_tensor(counts, dtype=torch.int64)
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(f"{path}: split '{name}': images must be a uint8 tensor [n, C, H, W]")
        if counts.dim() != 1 or len(counts) == 0 or bool((counts < 1).any()):
            raise DataError(f"{path}: split '{name}': counts must be positive, one per class")
        if int(counts.sum()) != images.shape[0]:
            raise DataError(f"{path}: split '{name}': counts add up to {int(counts.sum())}, "
                            f"but there are {images.shape[0]} images")
        if not len(class_names) == len(groups) == len(counts):
            raise DataError(f"{path}: split '{name}': need one class name and group per class")
        self.images = images
        self.counts = counts
        self.class_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        self.class_names = list(class_names)
        self.groups = list(groups)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> Tuple[int, int]:
        height, width = self.images.shape[2:]
        return height, width

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def class_images(self, i: int):
        """The uint8 images ``[count_i, C, H, W]`` of class ``i`` (a view, no copy)."""
        return self.images[self.class_offsets[i]:self.class_offsets[i + 1]]

    def __repr__(self):
        return (f"SplitData({self.path!r}, split={self.name!r}, classes={self.num_classes}, "
                f"images={self.images.shape[0]}, shape={tuple(self.images.shape[1:])})")


class FewShotData:
    """An opened, validated bayesnas-fewshot file. Splits are loaded on first use and kept.

    Attributes:
        path, source: the file and where its data came from.
        image_size: ``(H, W)``; channels: ``C``.
        splits: the split names present, in the order train, val, test.
    """

    def __init__(self, path, source, image_size, channels, classes: Dict[str, List[_ClassInfo]]):
        self.path = path
        self.source = source
        self.image_size = image_size
        self.channels = channels
        self._classes = classes
        self._loaded: Dict[str, SplitData] = {}

    @property
    def splits(self) -> List[str]:
        return [s for s in SPLITS if s in self._classes]

    def split(self, name: str) -> SplitData:
        """Load split ``name`` into memory (once) as a :class:`SplitData`."""
        if name not in self._classes:
            raise DataError(f"{self.path}: no split '{name}'; the file has {', '.join(self.splits)}")
        if name not in self._loaded:
            self._loaded[name] = self._load(name)
        return self._loaded[name]

    def _load(self, name):
        import torch

        infos = self._classes[name]
        height, width = self.image_size
        total = sum(c.count for c in infos)
        check_memory(f"{self.path}: split '{name}'", (total, height, width, self.channels))
        # Filled class by class in CHW order, so peak memory is the split plus one class.
        images = torch.empty((total, self.channels, height, width), dtype=torch.uint8)
        start = 0
        try:
            with h5py.File(self.path, "r") as f:
                group = f[name]
                for info in infos:
                    block = torch.from_numpy(group[info.key][...])
                    images[start:start + info.count] = block.permute(0, 3, 1, 2)
                    start += info.count
        except (OSError, KeyError) as exc:
            raise DataError(f"{self.path}: split '{name}': could not read the images ({exc})") from None
        return SplitData(images, [c.count for c in infos], [c.name for c in infos],
                         [c.group for c in infos], name=name, path=self.path)

    def summary(self) -> dict:
        """Counts per split, read from the metadata (no pixels are loaded).

        Returns ``{"path", "source", "image_size", "channels", "classes", "images",
        "splits": {name: {"classes", "images", "images_per_class_min",
        "images_per_class_max"}}}``.
        """
        splits = {}
        for name in self.splits:
            counts = [c.count for c in self._classes[name]]
            splits[name] = {
                "classes": len(counts),
                "images": sum(counts),
                "images_per_class_min": min(counts),
                "images_per_class_max": max(counts),
            }
        return {
            "path": self.path,
            "source": self.source,
            "image_size": list(self.image_size),
            "channels": self.channels,
            "classes": sum(s["classes"] for s in splits.values()),
            "images": sum(s["images"] for s in splits.values()),
            "splits": splits,
        }

    def __repr__(self):
        return f"FewShotData({self.path!r}, splits={self.splits}, image_size={self.image_size})"


def open_dataset(path: str | os.PathLike) -> FewShotData:
    """Open and validate a bayesnas-fewshot HDF5 file (metadata only; pixels load per split).

    Raises :class:`DataError` naming the file when it is missing, not HDF5, written by
    another tool, or inconsistent (a class whose images do not match ``image_size`` and
    ``channels``, an unknown group, a split without classes).
    """
    label = os.fspath(path)
    if not os.path.exists(label):
        raise DataError(f"{label}: no such file")
    if os.path.isdir(label):
        raise DataError(f"{label}: is a folder, expected a bayesnas-fewshot HDF5 file")
    check_regular_file(label, DataError, "bayesnas-fewshot HDF5 file")
    if not h5py.is_hdf5(label):
        raise DataError(f"{label}: not an HDF5 file; expected a bayesnas-fewshot file "
                        f"(made by 'bayesnas data import')")
    try:
        with h5py.File(label, "r") as f:
            return _read_metadata(label, f)
    except OSError as exc:
        raise DataError(f"{label}: corrupt or truncated HDF5 file ({exc})") from None


def _read_metadata(label, f):
    fmt = _text(f.attrs.get("format"))
    if fmt != FORMAT:
        raise DataError(f"{label}: was written by another tool: expected root attribute "
                        f"'format'='{FORMAT}', found {'none' if fmt is None else repr(fmt)}")
    missing = [a for a in ROOT_ATTRS if a not in f.attrs]
    if missing:
        raise DataError(f"{label}: missing root attribute(s) {', '.join(repr(a) for a in missing)}; "
                        f"a {FORMAT} file has {', '.join(ROOT_ATTRS)}")
    version = np.asarray(f.attrs["version"])
    if version.shape != () or not np.issubdtype(version.dtype, np.integer) or int(version) != VERSION:
        raise DataError(f"{label}: {FORMAT} version {version.tolist()!r} is not supported; expected {VERSION}")
    source = _text(f.attrs["source"])
    if source is None:
        raise DataError(f"{label}: root attribute 'source' must be a string")
    image_size = np.asarray(f.attrs["image_size"])
    if image_size.shape != (2,) or not np.issubdtype(image_size.dtype, np.integer) or (image_size < 1).any():
        raise DataError(f"{label}: root attribute 'image_size' must be two positive integers [H, W], "
                        f"found {image_size.tolist()!r}")
    channels = np.asarray(f.attrs["channels"])
    if channels.shape != () or not np.issubdtype(channels.dtype, np.integer) or channels < 1:
        raise DataError(f"{label}: root attribute 'channels' must be a positive integer, found {channels.tolist()!r}")
    height, width = (int(v) for v in image_size)
    channels = int(channels)

    unknown = sorted(set(f.keys()) - set(SPLITS))
    if unknown:
        raise DataError(f"{label}: unexpected entries {unknown} at the root; expected only the splits "
                        f"{', '.join(SPLITS)}")
    present = [s for s in SPLITS if s in f]
    if not present:
        raise DataError(f"{label}: contains no split; expected at least one of {', '.join(SPLITS)}")
    classes = {}
    for split in present:
        classes[split] = _read_split_metadata(label, split, f[split], (height, width, channels))
    return FewShotData(label, source, (height, width), channels, classes)


def _read_split_metadata(label, split, group, shape):
    if not isinstance(group, h5py.Group):
        raise DataError(f"{label}: '{split}' must be a group of class datasets")
    keys = list(group.keys())
    if not keys:
        raise DataError(f"{label}: split '{split}' has no classes")
    bad = [k for k in keys if not k.isdigit()]
    if bad:
        raise DataError(f"{label}: split '{split}' has unexpected entry '{bad[0]}'; "
                        f"expected class datasets named 00000, 00001, ...")
    infos = []
    names = set()
    for key in sorted(keys, key=int):
        ds = group[key]
        where = f"{label}: split '{split}' entry '{key}'"
        if not isinstance(ds, h5py.Dataset):
            raise DataError(f"{where}: expected a dataset, found a group")
        name = _text(ds.attrs.get("name"))
        group_name = _text(ds.attrs.get("group"))
        if name is None or group_name is None:
            raise DataError(f"{where}: missing the string attributes 'name' and 'group'")
        if ds.dtype != np.uint8 or ds.ndim != 4 or ds.shape[1:] != shape or ds.shape[0] < 1:
            raise DataError(f"{label}: split '{split}' class '{name}': images are {ds.dtype} "
                            f"{list(ds.shape)}, expected uint8 [n>=1, {shape[0]}, {shape[1]}, {shape[2]}] "
                            f"(the file's image_size and channels)")
        if name in names:
            raise DataError(f"{label}: split '{split}' has two classes named '{name}'")
        names.add(name)
        infos.append(_ClassInfo(key, name, group_name, int(ds.shape[0])))
    return infos


def _text(value) -> Optional[str]:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    return None


def available_memory() -> int:
    """Bytes this process may still allocate: the system's available memory (``MemAvailable``),
    lowered by an address-space limit (``ulimit -v``) when one is set."""
    import resource

    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/statm", encoding="ascii") as f:
                used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            used = 0
        available = min(available, max(0, limit - used))
    return available


def check_memory(where, shape):
    """DataError naming ``where`` unless uint8 images of ``shape`` ``(n, H, W, C)`` fit in
    :func:`available_memory` (checked before anything of that size is allocated)."""
    n, height, width, channels = (int(v) for v in shape)
    needed = n * height * width * channels
    free = available_memory()
    if needed > free:
        raise DataError(f"{where}: {n:,} images x {height}x{width}x{channels} bytes = {needed / 2**30:,.1f} GiB, "
                        f"more than the {free / 2**30:,.1f} GiB of memory available")


def default_data_path() -> Path:
    """Path of the Omniglot file shipped inside the package (``embedded/omniglot_minimal.h5``)."""
    return Path(__file__).resolve().parent / "embedded" / EMBEDDED_NAME


def open_data(path: str | os.PathLike | None = None) -> FewShotData:
    """Open the data file ``path``, or the embedded Omniglot file when ``path`` is None."""
    return open_dataset(path if path is not None else default_data_path())


def load_default() -> FewShotData:
    """Open the embedded Omniglot file (8 alphabets, 242 characters, 28x28, ink bright).
    """
    path = default_data_path()
    if not path.exists():
        raise DataError(f"{path}: the embedded dataset is missing; rebuild it with "
                        f"'python -m bayesnas.data.build_embedded'")
    return open_dataset(path)
