"""Images in: any supported file -> the model's input, defined once for training, evaluation and app.

``load_image`` is the one preprocessing path: decode (PNG, JPEG, BMP, TIFF, GIF, WebP, DICOM),
apply EXIF orientation, bring grayscale / RGB / RGBA / palette / CMYK / 16-bit / float to RGB
uint8, then stretch the whole image to 224x224 (no crop, as the Kaggle 224 px copies were made).

Whatever the bytes, :func:`decode_image` returns a :class:`DecodedImage` or raises
:class:`ImageError`, whose message is meant for the person who uploaded the file: it says what
is wrong and what to do. No other exception type leaves it. Sizes are checked from the file's
header before any pixel is decoded, and truncated files are refused rather than padded with grey.

Memory: decoding one image takes at most about ``config.DECODE_MEMORY_BUDGET_MB`` beyond the
file's bytes. From the header, images above ``config.DECODE_MAX_PIXELS`` are decoded reduced by
an integer factor (JPEG in the decoder itself, via ``draft``; other formats strip by strip as they
are converted, so no full-size copy is made), and a file whose decoder alone would need more than
the budget is refused with a message. Smaller images are decoded exactly as before, at full size.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pneumo import config
from pneumo.io.base import TRY_AGAIN, DecodedImage, ImageError, as_rgb, check_size, too_big_to_read
from pneumo.io.dicom import decode_dicom, is_dicom, looks_like_bare_dicom
from pneumo.io.raster import decode_raster

SUPPORTED_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm")


def decode_image(data: bytes, max_side: int | None = None) -> DecodedImage:
    """Decode file bytes to grey or RGB uint8 pixels, or raise :class:`ImageError`.

    Full resolution up to ``config.DECODE_MAX_PIXELS``; larger images come reduced by an integer
    factor per side (see the module's note on memory).

    ``max_side``: the caller shrinks the image to at most this many pixels on its long side (and
    to ``config.IMAGE_SIZE`` on its short side) anyway. A JPEG at least twice that size is then
    decoded reduced by the JPEG decoder itself (1/2, 1/4 or 1/8 scale, ``draft``), keeping at
    least ``max_side`` and ``config.IMAGE_SIZE`` pixels: several times faster, and within a few
    grey levels of the full decode after the caller's resize (``tests/test_images.py`` measures
    by how much). A 16-bit image is likewise reduced by an integer factor dividing both sides,
    averaged in 16 bits before its stretch to 8 bits. Other images are decoded as without the hint.
    """
    try:
        data = _as_bytes(data)
        if not data:
            raise ImageError("The file is empty (0 bytes). Export the image again and re-upload it.")
        if too_big_to_read(len(data)):
            raise ImageError(too_big_to_read(len(data)))
        if is_dicom(data):
            decoded = decode_dicom(data)
        elif looks_like_bare_dicom(data):
            decoded = decode_dicom(data, bare=True)
        else:
            decoded = decode_raster(data, max_side)
        return _checked(decoded)
    except ImageError:
        raise
    except MemoryError as err:
        raise ImageError(
            "The image is too large to open on this machine. Export a smaller copy and re-upload it."
        ) from err
    except Exception as err:  # a decoder's own bug or an unforeseen file must not escape as such
        raise ImageError(f"pneumo could not read this file. {TRY_AGAIN}") from err


def _as_bytes(data) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise ImageError("pneumo was given something that is not file contents. Upload the file again.")


def _checked(decoded: DecodedImage) -> DecodedImage:
    """The promise to callers: C-contiguous, writable (h, w) or (h, w, 3) uint8 within the size
    limits, and ``full_size`` set."""
    pixels = decoded.pixels
    if not ((pixels.ndim == 3 and pixels.shape[2] == 3) or pixels.ndim == 2) or pixels.dtype != np.uint8:
        raise ImageError(f"pneumo could not convert this image to RGB. {TRY_AGAIN}")
    full_size = decoded.full_size or (int(pixels.shape[0]), int(pixels.shape[1]))
    check_size(full_size[1], full_size[0])
    if not (pixels.flags.c_contiguous and pixels.flags.writeable):
        pixels = np.array(pixels, dtype=np.uint8, order="C")
    notes = list(decoded.notes)
    if pixels.size:
        lo, hi = cv2.minMaxLoc(pixels.reshape(pixels.shape[0], -1))[:2]
        if lo == hi:
            notes.append("The image is blank (every pixel has the same value); check the export.")
    return DecodedImage(pixels, notes, full_size, decoded.header)


def to_model_input(rgb: np.ndarray) -> np.ndarray:
    """Stretch a grey (h, w) or RGB (h, w, 3) uint8 image of any size to the model's 224x224x3
    uint8 input.

    A 224x224 RGB uint8 image is returned unchanged. A grey image is resized in grey and then
    repeated to RGB: the same pixels as repeating first (every channel is resized alike), a third
    of the work.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] == config.CHANNELS)):
        raise ValueError(f"to_model_input needs an (h, w, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    size = (config.IMAGE_SIZE, config.IMAGE_SIZE)
    rgb = np.ascontiguousarray(rgb)
    if rgb.shape[:2] != size:
        shrinking = rgb.shape[0] > size[0] or rgb.shape[1] > size[1]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, size, interpolation=interpolation)
    return as_rgb(rgb)


READ_MAX_SIDE = 768  # the app's display copy (pneumo.reading.reader.DISPLAY_MAX_SIDE): see load_image


def load_image(source: bytes | str | Path) -> np.ndarray:
    """File path or bytes -> 224x224x3 uint8 model input. The single preprocessing path.

    Decoded with the app's ``max_side`` hint (:data:`READ_MAX_SIDE`, :func:`decode_image`), so a
    large JPEG gives exactly the model input the app reads from it.

    Raises :class:`ImageError` for a file that is not a readable X-ray, and ``OSError`` when a
    path cannot be read at all.
    """
    data = source if isinstance(source, (bytes, bytearray, memoryview)) else Path(source).read_bytes()
    return to_model_input(decode_image(data, READ_MAX_SIDE).pixels)
