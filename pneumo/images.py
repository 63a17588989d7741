"""Images in: any supported file -> the model's input, defined once for training, evaluation and app.

``load_image`` is the one preprocessing path: decode (PNG, JPEG, BMP, TIFF, GIF, WebP, DICOM),
apply EXIF orientation, bring grayscale / RGB / RGBA / palette / CMYK / 16-bit to RGB uint8,
then stretch the whole image to 224x224 (no crop, as the Kaggle 224 px copies were made).
Everything that can go wrong with a file is raised as :class:`ImageError`, whose message is
meant for the person who uploaded it.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pneumo import config

# We check the pixel count ourselves before decoding; PIL's own guard raises at 2x its limit.
Image.MAX_IMAGE_PIXELS = config.MAX_IMAGE_PIXELS

SUPPORTED_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm")


class ImageError(ValueError):
    """A file that cannot be read as an X-ray; ``str(err)`` says what is wrong and what to do."""


@dataclass
class DecodedImage:
    """A decoded image at its own resolution, RGB uint8, with notes for the reader."""

    rgb: np.ndarray
    notes: list[str] = field(default_factory=list)


def is_dicom(data: bytes) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def decode_image(data: bytes) -> DecodedImage:
    """Decode file bytes to an RGB uint8 array at full resolution."""
    if not data:
        raise ImageError("The file is empty (0 bytes). Export the image again and re-upload it.")
    if is_dicom(data):
        from pneumo.dicom import decode_dicom

        return decode_dicom(data)
    return _decode_raster(data)


def _decode_raster(data: bytes) -> DecodedImage:
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_size(*img.size)
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                notes.append(f"The file holds {frames} frames/pages; only the first was read.")
                img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _too_large() from err
    except UnidentifiedImageError as err:
        raise ImageError(
            "This file is not an image pneumo can read. Upload a PNG, JPEG or DICOM (.dcm) X-ray."
        ) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(
            "The image is damaged or incomplete (it could not be fully decoded). "
            "Export it again from the source and re-upload it."
        ) from err
    return DecodedImage(_to_rgb_uint8(img), notes)


def _too_large() -> ImageError:
    return ImageError(
        f"The image is too large to open safely (more than {config.MAX_IMAGE_PIXELS:,} pixels). "
        "Export it at a lower resolution and re-upload it."
    )


def _check_size(width: int, height: int) -> None:
    if width * height > config.MAX_IMAGE_PIXELS:
        raise _too_large()
    if min(width, height) < config.MIN_IMAGE_SIDE:
        raise ImageError(
            f"The image is only {width}x{height} pixels; pneumo needs at least "
            f"{config.MIN_IMAGE_SIDE} pixels on each side. Upload the full-size radiograph."
        )
    if max(width, height) / min(width, height) > config.MAX_ASPECT_RATIO:
        raise ImageError(
            f"The image is {width}x{height} pixels, far too elongated for a chest X-ray. "
            "Upload the whole radiograph, not a strip or a crop."
        )


def scale_to_uint8(gray: np.ndarray) -> np.ndarray:
    """Stretch a high-bit-depth (or float) single-channel array linearly to 0-255."""
    gray = gray.astype("float64")
    lo, hi = float(np.min(gray)), float(np.max(gray))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(gray.shape, dtype="uint8")
    return np.round((gray - lo) * (255.0 / (hi - lo))).astype("uint8")


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """Repeat a single channel three times."""
    return np.repeat(gray[..., None], 3, axis=-1)


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return gray_to_rgb(scale_to_uint8(np.asarray(img)))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"), dtype="uint8")


def to_model_input(rgb: np.ndarray) -> np.ndarray:
    """Stretch an RGB uint8 image of any size to the model's 224x224x3 uint8 input."""
    size = (config.IMAGE_SIZE, config.IMAGE_SIZE)
    if rgb.shape[:2] == size:
        return np.ascontiguousarray(rgb, dtype="uint8")
    shrinking = rgb.shape[0] > size[0] or rgb.shape[1] > size[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(rgb, size, interpolation=interpolation)


def load_image(source: bytes | str | Path) -> np.ndarray:
    """File path or bytes -> 224x224x3 uint8 model input. The single preprocessing path."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return to_model_input(decode_image(data).rgb)
