"""The common ground of the decoders: the error a person reads, the decoded result, size and
memory rules, and pixel scaling (high bit depth to uint8, reduction, grey to RGB)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np

from pneumo import config
from pneumo.io.header import HeaderFacts

TRY_AGAIN = "Export it again from the source and re-upload it."


class ImageError(ValueError):
    """A file that cannot be read as an X-ray; ``str(err)`` says what is wrong and what to do."""


@dataclass
class DecodedImage:
    """A decoded image at its own resolution (reduced above ``config.DECODE_MAX_PIXELS``), with
    notes for the reader.

    ``pixels`` is (h, w) uint8 for a greyscale image (kept in grey: resizing one channel is a third
    of the work, and :func:`to_model_input` / :func:`as_rgb` repeat it after the resize) or
    (h, w, 3) RGB uint8; ``rgb`` is always (h, w, 3). ``full_size`` is the (height, width) the
    image has without a ``max_side`` hint (:func:`decode_image`); the pixels may be smaller when
    the hint let the JPEG decoder reduce. ``header``: what a DICOM header says about age, view,
    body part and modality (:mod:`pneumo.io.header`).
    """

    pixels: np.ndarray
    notes: list[str] = field(default_factory=list)
    full_size: tuple[int, int] | None = None
    header: HeaderFacts | None = None  # a DICOM header's scope facts; None for other formats

    @property
    def rgb(self) -> np.ndarray:
        """(h, w, 3) RGB uint8 (a grey image repeated to three channels)."""
        return as_rgb(self.pixels)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of ``pixels``."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


def too_big_to_read(n_bytes: int) -> str | None:
    """The upload limit, the only copy: the message for a file above ``config.MAX_UPLOAD_MB``
    (counted in MiB, as Streamlit counts its ``maxUploadSize``), else None."""
    if n_bytes <= config.MAX_UPLOAD_MB * 2**20:
        return None
    return (f"The file is {n_bytes / 2**20:,.0f} MB; pneumo reads files up to "
            f"{config.MAX_UPLOAD_MB} MB. Export a smaller copy (one image, PNG or JPEG).")


_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF",
    b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"BM": "BMP",
}


def not_an_image_message(data: bytes) -> str:
    kind = next((k for sig, k in _SIGNATURES.items() if data.startswith(sig)), None)
    if kind is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind = "WebP"
    if kind:
        return (f"The file starts like a {kind} image but is incomplete or damaged: its header "
                f"could not be read. {TRY_AGAIN}")
    what = None
    if data.startswith(b"%PDF"):
        what = "a PDF document"
    elif data.startswith(b"PK\x03\x04"):
        what = "a ZIP archive (or an Office document)"
    elif data.startswith(b"\x1f\x8b"):
        what = "a gzip-compressed file"
    elif data[4:8] == b"ftyp" and data[8:12] in (
        b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"
    ):
        what = "a HEIC/HEIF or AVIF photo"
    elif data.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        what = "a JPEG 2000 image"
    elif data.lstrip()[:1] in (b"<", b"{"):
        what = "a text (HTML, XML or JSON) file"
    if what:
        return (f"This file is {what}, which pneumo cannot read. "
                "Export the X-ray as PNG, JPEG or DICOM (.dcm) and upload that.")
    return ("This file is not an image pneumo can read (not a PNG, JPEG, BMP, TIFF, GIF, WebP or "
            "DICOM file, whatever its name says). Upload a PNG, JPEG or DICOM (.dcm) X-ray.")


# --- sizes and pixel values -------------------------------------------------------------------


def too_large() -> ImageError:
    return ImageError(
        f"The image is too large to open safely (more than {config.MAX_IMAGE_PIXELS:,} pixels). "
        "Export it at a lower resolution and re-upload it."
    )


def check_size(width: int, height: int) -> None:
    """Refuse, from the declared size alone, images too large, too small or too elongated."""
    width, height = int(width), int(height)
    if width * height > config.MAX_IMAGE_PIXELS:
        raise too_large()
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
    """Stretch a high-bit-depth (or float) array linearly to 0-255.

    NaN and infinite values are ignored for the range and shown as black (NaN, -inf) or white
    (+inf); an array without any finite spread gives zeros. Works a block of rows at a time,
    so a large array costs its uint8 result and a few MB, never a float64 copy of it.
    """
    gray = np.asarray(gray)
    if gray.ndim == 0:
        return stretch(gray, finite_range([gray]))
    blocks = row_blocks(gray.shape[0], gray[0].size if gray.shape[0] else 1)
    value_range = finite_range(gray[rows] for rows in blocks)
    out = np.empty(gray.shape, dtype=np.uint8)
    for rows in blocks:
        out[rows] = stretch(gray[rows], value_range)
    return out


def finite_range(blocks: Iterable[np.ndarray]) -> tuple[float, float] | None:
    """(min, max) of the finite values over all blocks; None if there are none."""
    lo = hi = None
    for block in blocks:
        block = np.asarray(block)
        if block.dtype.kind in "biu":
            if not block.size:
                continue
            b_lo, b_hi = float(block.min()), float(block.max())
        else:
            block = np.asarray(block, dtype=np.float64)
            finite = block[np.isfinite(block)]
            if not finite.size:
                continue
            b_lo, b_hi = float(finite.min()), float(finite.max())
        lo = b_lo if lo is None else min(lo, b_lo)
        hi = b_hi if hi is None else max(hi, b_hi)
    return None if lo is None else (lo, hi)


def stretch(values: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """Map ``value_range`` linearly onto 0-255 (non-finite values as :func:`scale_to_uint8` says).

    Integers of at most 16 bits go through a lookup table of every value they can hold, made with
    the float arithmetic below (so the result is the same to the bit), without a float copy of the
    pixels.
    """
    values = np.asarray(values)
    if value_range is None or value_range[1] <= value_range[0]:
        return np.zeros(values.shape, dtype=np.uint8)
    table = _stretch_table(values.dtype, *value_range)
    if table is not None:
        lut, unsigned = table
        return np.take(lut, values if unsigned is None else values.view(unsigned))
    values = np.asarray(values, dtype=np.float64)
    lo, hi = value_range
    if not np.isfinite(values).all():
        values = np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo)
    out = (values - lo) * (255.0 / (hi - lo))
    return np.clip(np.round(out, out=out), 0, 255, out=out).astype(np.uint8)


# 16-bit values spanning at least this many steps are averaged before they are stretched: the
# average's rounding to a whole 16-bit step is then at most 0.5 * 255 / 1020 = 1/8 grey level.
_AVERAGE_FIRST_MIN_SPAN = 4 * 255


def stretch_reduced(values: np.ndarray, value_range: tuple[float, float] | None,
                    factor: int) -> np.ndarray:
    """``reduce_area(stretch(values, value_range), factor)``, to within rounding, faster.

    16-bit integers whose range spans at least ``_AVERAGE_FIRST_MIN_SPAN`` steps are averaged
    first (in 16 bits, rounded) and then stretched, so the lookup table touches ``factor**2``
    times fewer values. The stretch is linear, so this differs from stretching first only by where
    it rounds (the 16-bit average to a whole step, at most 1/8 grey level; the stretch once per
    block instead of once per pixel): at most one grey level per reduced pixel, as
    ``tests/test_images.py`` measures. Other values are stretched first, as before.
    """
    values = np.asarray(values)
    if (factor > 1 and values.dtype.kind in "iu" and values.dtype.itemsize == 2
            and value_range is not None
            and value_range[1] - value_range[0] >= _AVERAGE_FIRST_MIN_SPAN):
        native = values.astype(values.dtype.newbyteorder("="), copy=False)
        return stretch(reduce_area(native, factor), value_range)
    return reduce_area(stretch(values, value_range), factor)


_TABLES: dict[tuple, tuple[np.ndarray, np.dtype | None]] = {}


def _stretch_table(dtype: np.dtype, lo: float, hi: float) -> tuple[np.ndarray, np.dtype | None] | None:
    """For an integer ``dtype`` of 8 or 16 bits: a uint8 table of ``stretch`` over every value it
    can hold, indexed by the value's bits read as unsigned, and the unsigned dtype to read a signed
    array through (None for unsigned ones)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu" or dtype.itemsize > 2:
        return None
    key = (dtype.kind, dtype.itemsize, lo, hi)
    table = _TABLES.get(key)
    if table is None:
        every = np.arange(1 << (8 * dtype.itemsize), dtype=np.uint32).astype(f"u{dtype.itemsize}")
        values = (every.view(f"i{dtype.itemsize}") if dtype.kind == "i" else every).astype(np.float64)
        out = (values - lo) * (255.0 / (hi - lo))
        lut = np.clip(np.round(out, out=out), 0, 255, out=out).astype(np.uint8)
        if len(_TABLES) >= 16:
            _TABLES.clear()
        table = _TABLES[key] = (lut, None if dtype.kind == "u" else dtype)
    lut, signed = table
    return lut, (None if signed is None else np.dtype(f"{dtype.byteorder}u{dtype.itemsize}"))


# --- memory bound -----------------------------------------------------------------------------

_BLOCK_VALUES = 1 << 20  # values converted at a time (a float64 block is 8 MB)
_WORKING_BYTES = 48 << 20  # the block being converted, its float64 temporaries and slack


def row_blocks(height: int, row_values: int, factor: int = 1) -> list[slice]:
    """Slices of about ``_BLOCK_VALUES`` values covering ``height`` rows, each a multiple of ``factor``.

    With ``factor > 1`` the last ``height % factor`` rows are left out (see :func:`reduce_area`).
    """
    step = max(factor, _BLOCK_VALUES // max(int(row_values), 1) // factor * factor)
    end = height - height % factor
    return [slice(y, min(y + step, end)) for y in range(0, end, step)] or [slice(0, 0)]


def map_row_blocks(height: int, row_values: int, factor: int,
                   to_uint8: Callable[[slice], np.ndarray], reduces: bool = False) -> np.ndarray:
    """Stack ``reduce_area(to_uint8(rows), factor)`` over :func:`row_blocks` into one uint8 array
    (``to_uint8(rows)`` itself when ``reduces``: it returns the rows reduced already)."""
    out = None
    for rows in row_blocks(height, row_values, factor):
        part = np.asarray(to_uint8(rows))
        part = part if reduces else reduce_area(part, factor)
        if out is None:
            out = np.empty((height // factor,) + part.shape[1:], dtype=np.uint8)
        out[rows.start // factor: rows.stop // factor] = part
    return out


def reduction_factor(width: int, height: int) -> int:
    """The smallest integer factor that brings an image to at most ``config.DECODE_MAX_PIXELS``."""
    factor = 1
    while (width // factor) * (height // factor) > config.DECODE_MAX_PIXELS:
        factor += 1
    return factor


def reduce_area(a: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks of a uint8 or native-order 16-bit (h, w[, c]) array (a
    trailing partial block is dropped), rounded to the array's dtype: an (h // factor, w // factor[, c])
    array."""
    if factor == 1:
        return a
    h, w = a.shape[0] // factor, a.shape[1] // factor
    a = np.ascontiguousarray(a[: h * factor, : w * factor])
    return cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA).reshape((h, w) + a.shape[2:])


def decode_peak_bytes(stored: int, transient: int, out_pixels: int, grey: bool) -> int:
    """Estimated peak extra memory of one decode, the largest of its three phases.

    Decoding: the decoder's full-size image (``stored`` bytes) and its own buffers (``transient``:
    JPEG coefficients, a TIFF strip, WebP's canvas). Converting: the image, one block and the
    uint8 output. After: the output, its RGB copy and an EXIF-rotated copy.
    """
    decoding = stored + transient
    converting = stored + _WORKING_BYTES + out_pixels * (1 if grey else 3)
    after = out_pixels * (5 if grey else 6)
    return max(decoding, converting, after)


def check_decode_memory(width: int, height: int, need: int, what: str) -> None:
    """Refuse an image whose decode is estimated to need more than the per-image memory budget."""
    if need > config.DECODE_MEMORY_BUDGET_MB << 20:
        raise ImageError(
            f"The image is {width}x{height} pixels ({what}); decoding it would take about "
            f"{need >> 20:,} MB of memory, more than the {config.DECODE_MEMORY_BUDGET_MB} MB pneumo "
            "allows for one image. Export it at a lower resolution (4000 pixels on the long side "
            "is plenty) or as 8-bit greyscale PNG or JPEG, and re-upload it."
        )


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """Repeat a single channel three times."""
    return np.repeat(gray[..., None], 3, axis=-1)


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """(h, w, 3) RGB: a 2-D (greyscale) array repeated to three channels, RGB as it is."""
    return gray_to_rgb(pixels) if pixels.ndim == 2 else pixels
