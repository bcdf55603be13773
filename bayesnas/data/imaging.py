"""Decoding and resizing shared by the importers: one resize rule for every dataset.

Images are resized with PIL's LANCZOS filter (windowed sinc, antialiased when shrinking),
straight to ``size x size`` without keeping the aspect ratio; an image already at that
size is left untouched. PIL's resampling is deterministic, so an import is reproducible.
"""
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

RESAMPLE = Image.Resampling.LANCZOS


GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def decode(data: bytes, mode, where: str) -> Image.Image:
    """Decode image bytes to a PIL image in ``mode``; DataError naming ``where``.

    ``mode`` is "L", "RGB", or None for the file's own kind: "L" when it is grey (PIL
    modes 1, L, LA, I, I;16, F, or a palette of greys), "RGB" otherwise. 16-bit grey
    keeps its top 8 bits.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            if mode is None:
                mode = "L" if img.mode in GREY_MODES or _grey_palette(img) else "RGB"
            if img.mode.startswith("I;16"):
                # PIL's convert clips 16-bit values at 255 instead of scaling them.
                return Image.fromarray((np.asarray(img) >> 8).astype(np.uint8)).convert(mode)
            return img.convert(mode)
    except UnidentifiedImageError:
        raise DataError(f"{where}: unreadable image (not in a format PIL knows)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{where}: unreadable image ({exc})") from None


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
