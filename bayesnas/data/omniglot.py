"""Import Omniglot (zips or unpacked folders) into a bayesnas-fewshot file.

Input layout: ``[top/]<Alphabet>/<character>/<image>.png`` inside a zip or a folder, as in
Lake's ``images_background*.zip`` / ``images_evaluation.zip``. A folder input may also be
a single alphabet folder (its own name is then the alphabet). Non-PNG files, hidden files
and ``__MACOSX`` entries are ignored. Each class is named ``"<Alphabet>/<character>"`` with
group ``<Alphabet>``; its images are ordered by file name.

Overlapping inputs: a character found in several inputs (Greek and Latin are in both
"small" background zips) is stored once when its images are identical (same file names,
same decoded pixels); if they differ the import stops with an error naming both inputs.

Pixels: each PNG is converted to 8-bit grey, inverted so the ink is bright (255 on a 0
background), then resized to ``size x size`` with PIL's LANCZOS filter.

Split rule (deterministic for a given seed): the units, i.e. the class names
``"<Alphabet>/<character>"`` (``split_by="character"``) or the alphabet names
(``split_by="alphabet"``), are sorted, then shuffled by
``numpy.random.default_rng(seed).permutation``. With fractions (f_train, f_val, f_test)
and n units, train takes the first round(n * f_train) shuffled units, val the units up to
round(n * (f_train + f_val)), test the rest (halves round up). A split whose fraction is 0
is left out of the file; a positive fraction that would get no unit is an error.
"""
import hashlib
import math
import os
import zipfile
from pathlib import Path, PurePosixPath
from typing import Dict, List, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ..errors import ConfigError, DataError
from ..fileio import check_regular_file
from . import imaging
from .store import SPLITS, ClassRecord, open_dataset, write_dataset

SPLIT_BY = ("character", "alphabet")
LAYOUT = "[top/]<Alphabet>/<character>/<image>.png"


def import_omniglot(paths: Sequence, out, size: int = 28, seed: int = 0,
                    split_fractions: Sequence[float] = (0.6, 0.15, 0.25),
                    split_by: str = "character", progress: bool = True):
    """Import Omniglot zips or folders into ``out`` and return the opened file.

    Args:
        paths: zips or folders in the layout ``[top/]<Alphabet>/<character>/<image>.png``;
            identical characters shared by several inputs are stored once.
        out: the bayesnas-fewshot HDF5 file to write (atomically: nothing on failure).
        size: output side in pixels (LANCZOS resize; 105 keeps the originals).
        seed: seed of the split permutation.
        split_fractions: (train, val, test) fractions, non-negative, summing to 1.
        split_by: "character" (classes of one alphabet may land in several splits) or
            "alphabet" (whole alphabets per split, the stricter held-out evaluation).
        progress: show a tqdm bar on stderr (only when stderr is a terminal).

    Returns:
        the :class:`~bayesnas.data.store.FewShotData` of ``out``.
    """
    size = imaging.check_size(size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    fractions = _check_fractions(split_fractions)
    if split_by not in SPLIT_BY:
        raise ConfigError(f"split_by must be one of {', '.join(SPLIT_BY)}, got {split_by!r}")
    if isinstance(paths, (str, os.PathLike)) or not paths:
        raise ConfigError("paths must be a non-empty list of Omniglot zips or folders")

    inputs = [_Input.open(p) for p in paths]
    try:
        characters = _read_characters(inputs, size, progress)
    finally:
        for source in inputs:
            source.close()

    splits = _assign_splits(characters, fractions, seed, split_by, os.fspath(out))
    names = ", ".join(os.path.basename(os.path.normpath(os.fspath(p))) for p in paths)
    source = (f"Omniglot ({names}); {size}x{size} LANCZOS, ink bright; split by {split_by}, "
              f"seed {seed}, fractions {'/'.join(f'{f:g}' for f in fractions)}")
    write_dataset(out, splits, source=source, image_size=(size, size), channels=1)
    return open_dataset(out)


def _check_fractions(fractions):
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ConfigError(f"split fractions must be three numbers (train, val, test), got {fractions!r}") from None
    if len(values) != 3 or any(not math.isfinite(f) or f < 0 for f in values) or abs(sum(values) - 1) > 1e-6:
        raise ConfigError(f"split fractions must be three non-negative numbers (train, val, test) "
                          f"summing to 1, got {fractions!r}")
    return values


class _Input:
    """One zip or folder: its PNGs grouped by character folder, read on demand."""

    def __init__(self, label, folders, reader, closer=None):
        self.label = label
        # {(alphabet, character, where): [(file name, member)]}, where = the character
        # folder's location (zip:inner/path or a folder path), unique inside the input.
        self.folders = folders
        self._reader = reader
        self._closer = closer

    @classmethod
    def open(cls, path):
        label = os.fspath(path)
        if os.path.isdir(label):
            return cls._folder(label)
        if not os.path.exists(label):
            raise DataError(f"{label}: no such file or folder")
        check_regular_file(label, DataError, "zip file or folder")
        if not zipfile.is_zipfile(label):
            raise DataError(f"{label}: neither a zip file nor a folder; expected Omniglot as {LAYOUT}")
        try:
            archive = zipfile.ZipFile(label)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{label}: cannot open the zip file ({exc})") from None
        entries = []
        for name in archive.namelist():
            parts = PurePosixPath(name).parts
            if not name.endswith("/"):
                entries.append((parts, name, f"{label}:{'/'.join(parts[:-1])}"))
        def read_member(name):
            size = archive.getinfo(name).file_size
            if size > imaging.MAX_FILE_BYTES:
                raise DataError(f"{label}:{name}: {size:,} bytes uncompressed, more than the "
                                f"{imaging.MAX_FILE_BYTES:,} an image file may have")
            return archive.read(name)

        return cls(label, _group_files(label, entries), read_member, archive.close)

    @classmethod
    def _folder(cls, label):
        root = Path(label).resolve()
        entries = []
        for file in root.rglob("*"):
            if file.is_file():
                # Relative to the parent, so an alphabet folder given directly keeps its name.
                entries.append((file.relative_to(root.parent).parts, file, str(file.parent)))
        return cls(label, _group_files(label, entries), imaging.read_bytes)

    def read(self, member) -> bytes:
        try:
            return self._reader(member)
        except (OSError, zipfile.BadZipFile, KeyError) as exc:
            raise DataError(f"{self.label}: cannot read {member} ({exc})") from None

    def close(self):
        if self._closer is not None:
            self._closer()


def _group_files(label, entries):
    folders: Dict[Tuple[str, str, str], list] = {}
    for parts, member, where in entries:
        if any(p.startswith(".") or p == "__MACOSX" for p in parts) or not parts[-1].lower().endswith(".png"):
            continue
        if len(parts) < 3:
            raise DataError(f"{label}: image '{'/'.join(parts)}' is not inside <Alphabet>/<character>/; "
                            f"expected Omniglot as {LAYOUT}")
        folders.setdefault((parts[-3], parts[-2], where), []).append((parts[-1], member))
    if not folders:
        raise DataError(f"{label}: no PNG images found; expected Omniglot as {LAYOUT}")
    for files in folders.values():
        files.sort()
    return folders


def _read_characters(inputs: List[_Input], size, progress):
    """Decode every character once: ``{(alphabet, character): images uint8 [n, size, size, 1]}``."""
    total = sum(len(files) for source in inputs for files in source.folders.values())
    characters = {}
    origin: Dict[tuple, tuple] = {}  # (alphabet, character) -> (where, digest of the originals)
    with tqdm(total=total, desc="Omniglot", unit="img", disable=None if progress else True) as bar:
        for source in inputs:
            for alphabet, character, where in sorted(source.folders):
                files = source.folders[alphabet, character, where]
                digest = hashlib.sha256()
                images = np.empty((len(files), size, size, 1), dtype=np.uint8)
                for i, (name, member) in enumerate(files):
                    img = imaging.decode(source.read(member), "L", f"{where}/{name}")
                    digest.update(name.encode() + b"\0" + img.tobytes())
                    # Inverted before resizing so the background stays exactly 0.
                    img = img.point(lambda v: 255 - v)
                    images[i] = imaging.resize(img, size)
                    bar.update(1)
                key = (alphabet, character)
                if key in origin:
                    first_where, first_digest = origin[key]
                    if first_digest != digest.hexdigest():
                        raise DataError(f"character '{alphabet}/{character}' differs between {first_where} "
                                        f"and {where}; overlapping Omniglot inputs must hold identical copies")
                    continue
                origin[key] = (where, digest.hexdigest())
                characters[key] = images
    return characters


def _assign_splits(characters, fractions, seed, split_by, out_label) -> Dict[str, List[ClassRecord]]:
    if split_by == "alphabet":
        units = sorted({alphabet for alphabet, _ in characters})
        unit_of = {key: key[0] for key in characters}
        unit_word = "alphabets"
    else:
        units = sorted("/".join(key) for key in characters)
        unit_of = {key: "/".join(key) for key in characters}
        unit_word = "characters"
    split_of = split_units(units, fractions, seed, unit_word, out_label)
    splits: Dict[str, List[ClassRecord]] = {}
    for key, images in characters.items():
        split = split_of[unit_of[key]]
        splits.setdefault(split, []).append(ClassRecord("/".join(key), key[0], images))
    return splits


def split_units(units: Sequence[str], fractions, seed: int, unit_word: str, label: str) -> Dict[str, str]:
    """The split rule of this module's docstring: ``{unit: "train" | "val" | "test"}``.

    ``units`` are sorted first, so the result depends only on the set of names, the seed
    and the fractions. Shared by every importer that splits classes itself.

    Args:
        units: distinct names to split (characters, alphabets, class folders).
        fractions: checked (train, val, test) fractions summing to 1.
        seed: seed of ``numpy.random.default_rng(seed).permutation``.
        unit_word: plural noun for the error message ("classes").
        label: the input named in the error message.
    """
    units = sorted(units)
    order = np.random.default_rng(seed).permutation(len(units))
    shuffled = [units[i] for i in order]
    n = len(units)
    ends = [math.floor(n * sum(fractions[:k + 1]) + 0.5) for k in range(2)] + [n]
    split_of = {}
    start = 0
    for split, fraction, end in zip(SPLITS, fractions, ends, strict=True):
        if fraction > 0 and end <= start:
            raise DataError(f"{label}: split '{split}' (fraction {fraction:g}) would get none of the "
                            f"{n} {unit_word}; import more data or set its fraction to 0")
        for unit in shuffled[start:end]:
            split_of[unit] = split
        start = end
    return split_of
