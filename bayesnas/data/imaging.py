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


def decode(data: bytes, mode: str, where: str) -> Image.Image:
    """Decode image bytes to a PIL image in ``mode`` ("L" or "RGB"); DataError naming ``where``."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert(mode)
    except UnidentifiedImageError:
        raise DataError(f"{where}: unreadable image (not in a format PIL knows)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{where}: unreadable image ({exc})") from None


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
