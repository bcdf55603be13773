"""Import your own images, one folder per class, into a bayesnas-fewshot file.

Two layouts, told apart by the folders directly inside ROOT:

- ``ROOT/<class>/<image>``: the classes are split by the Omniglot importer's rule
  (:func:`bayesnas.data.omniglot.split_units`: class names sorted, shuffled by
  ``numpy.random.default_rng(seed).permutation``, cut at the fractions), default seed 0
  and fractions 0.6/0.15/0.25;
- ``ROOT/{train,val,test}/<class>/<image>``: each split folder present is that split
  (val may be absent); a class name may not appear in two splits.

Images are the files ending in .png, .jpg or .jpeg (any case), ordered by file name;
other files and hidden entries (a leading '.', ``__MACOSX``) are ignored. Each class is
named by its folder, with group ``""``. A class folder holding another folder, an image
outside a class folder, and a symlink whose target lies outside ROOT are errors.

Pixels: with ``channels`` None every image must be of one kind, grey (stored with 1
channel) or colour (3); 1 or 3 converts every image to that. ``invert`` turns dark
drawings on a light background into bright on dark (the store's convention), before the
LANCZOS resize to ``size x size`` (default 84 for colour, 28 for grey).
"""
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from ..errors import ConfigError, DataError
from . import imaging
from .omniglot import _check_fractions, split_units
from .store import SPLITS, ClassRecord, open_dataset, printable_name, write_dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_SIZE = {1: 28, 3: 84}
DEFAULT_FRACTIONS = (0.6, 0.15, 0.25)
LAYOUTS = "ROOT/<class>/<images> or ROOT/{train,val,test}/<class>/<images>"
_KIND = {1: "grey", 3: "colour"}


def import_folder(root, out, channels: Optional[int] = None, size: Optional[int] = None,
                  seed: Optional[int] = None, split_fractions=None, invert: bool = False,
                  progress: bool = True):
    """Import the class folders under ``root`` into ``out`` and return the opened file.

    Everything is listed and checked (layout, empty classes, symlinks, split sizes) before
    any image is decoded; on any error ``out`` is left as it was.

    Args:
        root: ``ROOT/<class>/<images>`` or ``ROOT/{train,val,test}/<class>/<images>``.
        out: the bayesnas-fewshot HDF5 file to write (atomically: nothing on failure).
        channels: 1 or 3 to convert every image; None keeps the images' own kind, which
            must then be the same for all.
        size: output side in pixels (LANCZOS); None means 84 for colour, 28 for grey.
        seed: seed of the class split (default 0); only for ``ROOT/<class>/``.
        split_fractions: (train, val, test) fractions summing to 1 (default 0.6, 0.15,
            0.25; a 0 leaves that split out); only for ``ROOT/<class>/``.
        invert: store ``255 - v``, for dark drawings on a light background.
        progress: show a tqdm bar on stderr (only when stderr is a terminal).

    Returns:
        the :class:`~bayesnas.data.store.FewShotData` of ``out``; its images are uint8
        ``[n, channels, size, size]`` per split.
    """
    if channels is not None and (isinstance(channels, bool) or not isinstance(channels, (int, np.integer))
                                 or channels not in (1, 3)):
        raise ConfigError(f"channels must be 1, 3 or None (as found), got {channels!r}")
    if size is not None:
        size = imaging.check_size(size)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    fractions = None if split_fractions is None else _check_fractions(split_fractions)
    label = os.fspath(root)
    if not os.path.exists(label):
        raise DataError(f"{label}: no such folder")
    if not os.path.isdir(label):
        raise DataError(f"{label}: not a folder; expected {LAYOUTS}")
    if os.path.isdir(os.fspath(out)):
        raise DataError(f"{os.fspath(out)}: is a folder, expected the HDF5 file to write")

    listing = _Listing(Path(label))
    split_folders = listing.split_folders()
    if split_folders:
        if seed is not None or fractions is not None:
            raise ConfigError(f"{label}: has split folders ({', '.join(split_folders)}); a seed and split "
                              f"fractions apply only to the ROOT/<class>/ layout")
        classes = {split: listing.classes(listing.root / split, f"{label}/{split}") for split in split_folders}
        _check_disjoint(label, classes)
        how = "split folders " + "/".join(split_folders)
    else:
        seed = 0 if seed is None else int(seed)
        fractions = DEFAULT_FRACTIONS if fractions is None else fractions
        found = listing.classes(listing.root, label)
        split_of = split_units(list(found), fractions, seed, "classes", label)
        classes = {split: {name: files for name, files in found.items() if split_of[name] == split}
                   for split in SPLITS if split in split_of.values()}
        how = f"class split seed {seed}, fractions {'/'.join(f'{f:g}' for f in fractions)}"

    splits, channels, size = _read_images(classes, channels, size, invert, progress)
    kind = "grey" if channels == 1 else "RGB"
    source = (f"folder ({printable_name(Path(label).resolve().name)}); {how}; {size}x{size} LANCZOS, {kind}"
              + (", inverted" if invert else ""))
    write_dataset(out, splits, source=source, image_size=(size, size), channels=channels)
    return open_dataset(out)


class _Listing:
    """Walks ROOT one level at a time, refusing what the layouts do not allow."""

    def __init__(self, root: Path):
        self.root = root
        self.real_root = os.path.realpath(root)

    def entries(self, folder: Path) -> List[os.DirEntry]:
        """The visible entries of ``folder``, sorted by name, each checked to stay inside ROOT."""
        try:
            with os.scandir(folder) as it:
                entries = sorted((e for e in it if not e.name.startswith(".") and e.name != "__MACOSX"),
                                 key=lambda e: e.name)
        except OSError as exc:
            raise DataError(f"{folder}: cannot list the folder ({exc.strerror})") from None
        for entry in entries:
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if os.path.commonpath([self.real_root, target]) != self.real_root:
                    raise DataError(f"{entry.path}: symlink to {target}, outside {self.root}; "
                                    f"copy the data inside or import the target folder itself")
                if not os.path.exists(target):
                    raise DataError(f"{entry.path}: broken symlink (to {target})")
            try:
                entry.name.encode("utf-8")
            except UnicodeEncodeError:
                raise DataError(f"{folder}: the name {entry.name!r} is not valid UTF-8") from None
        return entries

    def split_folders(self) -> List[str]:
        """The split folders of ROOT in the order train, val, test; [] for ROOT/<class>/."""
        folders = [e.name for e in self.entries(self.root) if e.is_dir()]
        splits = [s for s in SPLITS if s in folders]
        others = [f for f in folders if f not in SPLITS]
        if splits and others:
            raise DataError(f"{self.root}: holds split folders ({', '.join(splits)}) and other folders "
                            f"({', '.join(others[:3])}); expected {LAYOUTS}")
        return splits

    def classes(self, folder: Path, label: str) -> Dict[str, List[Path]]:
        """``{class name: [image paths sorted by name]}`` for the class folders in ``folder``."""
        classes = {}
        for entry in self.entries(folder):
            if not entry.is_dir():
                if _is_image(entry.name):
                    raise DataError(f"{entry.path}: image outside a class folder; expected {LAYOUTS}")
                continue
            files = []
            for item in self.entries(Path(entry.path)):
                if item.is_dir():
                    raise DataError(f"{item.path}: a folder inside the class folder {entry.path}; "
                                    f"expected images directly in <class>/ ({LAYOUTS})")
                if _is_image(item.name):
                    files.append(Path(item.path))
            if not files:
                raise DataError(f"{entry.path}: class folder has no PNG or JPEG images")
            classes[entry.name] = files
        if not classes:
            raise DataError(f"{label}: no class folders; expected {LAYOUTS}")
        return classes


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _check_disjoint(label, classes):
    seen = {}
    for split, names in classes.items():
        for name in names:
            if name in seen:
                raise DataError(f"{label}: class '{name}' is in both {seen[name]}/ and {split}/; "
                                f"few-shot splits must hold disjoint classes")
            seen[name] = split


def _read_images(classes: Dict[str, Dict[str, List[Path]]], channels, size, invert, progress):
    """Decode ``{split: {class: [paths]}}`` into ``({split: [ClassRecord]}, channels, size)``."""
    mode = {None: None, 1: "L", 3: "RGB"}[channels]
    first: Optional[Tuple[Path, int]] = None      # the first image, when channels are found
    total = sum(len(files) for per_split in classes.values() for files in per_split.values())
    splits = {}
    with tqdm(total=total, desc="folder", unit="img", disable=None if progress else True) as bar:
        for split, per_split in classes.items():
            records = []
            for name, files in per_split.items():
                images = []
                for path in files:
                    img = imaging.read_image(path, mode)
                    found = 1 if img.mode == "L" else 3
                    if channels is None:
                        first = (path, found)
                        channels = found
                    elif mode is None and found != channels:
                        assert first is not None  # set with channels, from the first image
                        raise DataError(f"{path} is {_KIND[found]} but {first[0]} is {_KIND[channels]}; "
                                        f"pass channels 1 or 3 (--channels) to convert every image")
                    if size is None:
                        size = DEFAULT_SIZE[channels]
                    if invert:
                        # Before resizing, as the Omniglot importer does, so both store the same pixels.
                        img = img.point(lambda v: 255 - v)
                    images.append(imaging.resize(img, size))
                    bar.update(1)
                records.append(ClassRecord(name, "", np.stack(images)))
            splits[split] = records
    return splits, channels, size
