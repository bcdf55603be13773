"""Decoding and resizing shared by the importers: one resize rule for every dataset.

Images are resized with PIL's LANCZOS filter (windowed sinc, antialiased when shrinking),
straight to ``size x size`` without keeping the aspect ratio; an image already at that
size is left untouched. PIL's resampling is deterministic, so an import is reproducible.
"""
import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError, DataError
from ..fileio import check_regular_file

RESAMPLE = Image.Resampling.LANCZOS

#: the formats the importers read: Pillow is told these and no other (it would otherwise
#: decode any format it knows whatever the suffix, PostScript through Ghostscript among them)
FORMATS = ("PNG", "JPEG")
#: the largest output side an import or a search proxy may ask for (84 is Mini-ImageNet's,
#: 105 Omniglot's original; 512 x 512 RGB is 768 KiB per image)
MAX_IMAGE_SIZE = 512
#: the largest image file, and the most pixels of a decoded image, an importer accepts
MAX_FILE_BYTES = 64 << 20
MAX_PIXELS = 8192 * 8192


GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def decode(data: bytes, mode, where: str) -> Image.Image:
    """Decode image bytes to a PIL image in ``mode``; DataError naming ``where``.

    ``mode`` is "L", "RGB", or None for the file's own kind: "L" when it is grey (PIL
    modes 1, L, LA, I, I;16, F, or a palette of greys), "RGB" otherwise. 16-bit grey
    keeps its top 8 bits.
    """
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise DataError(f"{where}: {width}x{height} pixels, more than the {MAX_PIXELS:,} an imported image "
                                f"may have")
            if mode is None:
                mode = "L" if img.mode in GREY_MODES or _grey_palette(img) else "RGB"
            if img.mode.startswith("I;16"):
                # PIL's convert clips 16-bit values at 255 instead of scaling them.
                return Image.fromarray((np.asarray(img) >> 8).astype(np.uint8)).convert(mode)
            return img.convert(mode)
    except UnidentifiedImageError:
        raise DataError(f"{where}: unreadable image (not {' or '.join(FORMATS)})") from None
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        # Pillow's decoders meet crafted bytes with many kinds of exception (SyntaxError,
        # struct.error, AttributeError, ...); for an importer each means the same: this file
        raise DataError(f"{where}: unreadable image ({type(exc).__name__}: {exc})") from None


def read_image(path, mode, where=None) -> Image.Image:
    """Read and :func:`decode` the image file ``path``: a regular file (never a FIFO that would
    block, a device or a folder) of at most :data:`MAX_FILE_BYTES`; DataError naming ``where``
    (default: the path).
    """
    where = os.fspath(path) if where is None else where
    return decode(read_bytes(path, where), mode, where)


def read_bytes(path, where=None) -> bytes:
    """The bytes of the image file ``path``, checked as :func:`read_image` says."""
    where = os.fspath(path) if where is None else where
    info = check_regular_file(path, DataError, "image file")
    if info.st_size > MAX_FILE_BYTES:
        raise DataError(f"{where}: {info.st_size:,} bytes, more than the {MAX_FILE_BYTES:,} an image file may have")
    try:
        with open(path, "rb") as f:
            return f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise DataError(f"{where}: cannot read ({exc.strerror or exc})") from None


def check_size(size, what="size"):
    """``size`` as an int in 1..:data:`MAX_IMAGE_SIZE`, else a ConfigError naming ``what``."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"{what} must be a positive integer of at most {MAX_IMAGE_SIZE} (pixels per side), "
                          f"got {size!r}")
    return int(size)


def _grey_palette(img: Image.Image) -> bool:
    palette = img.getpalette() if img.mode in ("P", "PA") else None
    if not palette:
        return False
    return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))


def resize(img: Image.Image, size: int) -> np.ndarray:
    """Resize to ``size x size`` (LANCZOS) and return uint8 ``[size, size, C]``."""
    if img.size != (size, size):
        img = img.resize((size, size), resample=RESAMPLE)
    array = np.asarray(img, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def resize_array(array: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 ``[n, H, W, 3]`` to ``[n, size, size, 3]`` image by image (no-op at size)."""
    if array.shape[1:3] == (size, size):
        return array
    out = np.empty((len(array), size, size, array.shape[3]), dtype=np.uint8)
    for i, image in enumerate(array):
        out[i] = resize(Image.fromarray(image), size)
    return out
