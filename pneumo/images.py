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

import io
import struct
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, JpegImagePlugin, UnidentifiedImageError

from pneumo import config

# Our own check (``_check_size``) refuses anything above the limit from the header; PIL's guard
# (a warning above the limit, an error at twice it) is the second line.
Image.MAX_IMAGE_PIXELS = config.MAX_IMAGE_PIXELS

SUPPORTED_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm")

# PIL plugins allowed to open a file. Anything else PIL could open (EPS, which runs Ghostscript,
# PSD, ICO, JPEG 2000, AVIF, ...) is refused as "not an image pneumo can read". The JPEG plugin
# also opens multi-picture (MPO) JPEGs from phones and cameras.
PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP")

_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")

_TRY_AGAIN = "Export it again from the source and re-upload it."


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
    the hint let the JPEG decoder reduce.
    """

    pixels: np.ndarray
    notes: list[str] = field(default_factory=list)
    full_size: tuple[int, int] | None = None

    @property
    def rgb(self) -> np.ndarray:
        """(h, w, 3) RGB uint8 (a grey image repeated to three channels)."""
        return as_rgb(self.pixels)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of ``pixels``."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


def is_dicom(data: bytes) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def decode_image(data: bytes, max_side: int | None = None) -> DecodedImage:
    """Decode file bytes to grey or RGB uint8 pixels, or raise :class:`ImageError`.

    Full resolution up to ``config.DECODE_MAX_PIXELS``; larger images come reduced by an integer
    factor per side (see the module's note on memory).

    ``max_side``: the caller shrinks the image to at most this many pixels on its long side (and
    to ``config.IMAGE_SIZE`` on its short side) anyway. A JPEG at least twice that size is then
    decoded reduced by the JPEG decoder itself (1/2, 1/4 or 1/8 scale, ``draft``), keeping at
    least ``max_side`` and ``config.IMAGE_SIZE`` pixels: several times faster, and within a few
    grey levels of the full decode after the caller's resize (``tests/test_images.py`` measures
    by how much). Other formats are decoded as without the hint.
    """
    try:
        data = _as_bytes(data)
        if not data:
            raise ImageError("The file is empty (0 bytes). Export the image again and re-upload it.")
        if len(data) > config.MAX_UPLOAD_MB * 1024 * 1024:
            raise ImageError(
                f"The file is {len(data) / 2**20:,.0f} MB; pneumo reads files up to "
                f"{config.MAX_UPLOAD_MB} MB. Export a smaller copy (one image, PNG or JPEG)."
            )
        if is_dicom(data):
            from pneumo.dicom import decode_dicom

            decoded = decode_dicom(data)
        elif _looks_like_bare_dicom(data):
            from pneumo.dicom import decode_dicom

            decoded = decode_dicom(data, bare=True)
        else:
            decoded = _decode_raster(data, max_side)
        return _checked(decoded)
    except ImageError:
        raise
    except MemoryError as err:
        raise ImageError(
            "The image is too large to open on this machine. Export a smaller copy and re-upload it."
        ) from err
    except Exception as err:  # a decoder's own bug or an unforeseen file must not escape as such
        raise ImageError(f"pneumo could not read this file. {_TRY_AGAIN}") from err


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
        raise ImageError(f"pneumo could not convert this image to RGB. {_TRY_AGAIN}")
    full_size = decoded.full_size or (int(pixels.shape[0]), int(pixels.shape[1]))
    _check_size(full_size[1], full_size[0])
    if not (pixels.flags.c_contiguous and pixels.flags.writeable):
        pixels = np.array(pixels, dtype=np.uint8, order="C")
    notes = list(decoded.notes)
    if pixels.size:
        lo, hi = cv2.minMaxLoc(pixels.reshape(pixels.shape[0], -1))[:2]
        if lo == hi:
            notes.append("The image is blank (every pixel has the same value); check the export.")
    return DecodedImage(pixels, notes, full_size)


# --- raster formats (PIL) ---------------------------------------------------------------------


def _decode_raster(data: bytes, max_side: int | None = None) -> DecodedImage:
    notes: list[str] = []
    # Never pad a truncated file with grey, whatever another module may have set.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            # PIL's warnings about odd files (corrupt EXIF, TIFF tags past the end...) are noise
            # here: a file that can't be decoded gets an ImageError below.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
            _check_size(*img.size)  # from the header, before any pixel is decoded
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                notes.append(f"The file holds {frames} frames/pages; only the first was read.")
                img.seek(0)
                _check_size(*img.size)
            # from the header: may refuse, or ask the JPEG decoder to reduce
            factor, full_size = _plan_raster(img, data, max_side)
            img.load()
            orientation = _exif_orientation(img, notes)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _too_large() from err
    except UnidentifiedImageError as err:
        raise ImageError(_not_an_image_message(data)) from err
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, struct.error, IndexError,
            KeyError, ZeroDivisionError) as err:  # what PIL's plugins raise for broken files
        if isinstance(err, EOFError) or "truncated" in str(err).lower():
            raise ImageError(
                "The image file is incomplete: it ends before all of the picture is stored "
                "(an interrupted download or copy?). " + _TRY_AGAIN
            ) from err
        raise ImageError(
            f"The image is damaged (it could not be decoded). {_TRY_AGAIN}"
        ) from err
    try:
        pixels = _to_uint8(img, factor, notes)
    finally:
        img.close()  # frees the decoder's full-size copy before the RGB one is made
    if orientation in (5, 6, 7, 8):
        full_size = full_size[::-1]
    return DecodedImage(np.ascontiguousarray(_orient(pixels, orientation)), notes, full_size)


def _exif_orientation(img: Image.Image, notes: list[str]) -> int:
    """The EXIF Orientation tag (1-8); a broken EXIF block gives 1 (as stored) and a note."""
    try:
        orientation = img.getexif().get(0x0112)  # Orientation
    except Exception:
        notes.append("The file's EXIF data is damaged; the image is shown as stored, unrotated.")
        return 1
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip an (h, w[, c]) array as EXIF Orientation says (a view; PIL's transposes)."""
    if orientation in (5, 6, 7, 8):
        a = a.swapaxes(0, 1)  # 5: transpose; 6 (rotate 270): transpose + flip left-right, ...
    if orientation in (2, 3, 6, 7):
        a = a[:, ::-1]
    if orientation in (3, 4, 7, 8):
        a = a[::-1]
    return a


def _to_uint8(img: Image.Image, factor: int, notes: list[str]) -> np.ndarray:
    """A loaded image -> (h, w) grey or (h, w, 3) RGB uint8, reduced ``factor`` times per side.

    Converted a strip of rows at a time into the output, so no full-size temporary is made:
    high-bit-depth and float images are stretched as :func:`scale_to_uint8` does (its range from
    a first pass), transparency is shown as black, everything else goes through PIL's RGB.
    """
    mode = img.mode
    if mode in _HIGH_DEPTH_MODES:
        width = img.size[0]
        value_range = _finite_range(np.asarray(img.crop((0, rows.start, width, rows.stop)))
                                    for rows in row_blocks(img.size[1], width))
        return _reduce_strips(img, factor, lambda s: _stretch(np.asarray(s), value_range))
    if mode == "L" and factor == 1:
        return np.asarray(img)  # one copy of the decoder's pixels, nothing else
    if mode in ("1", "L"):
        return _reduce_strips(img, factor, lambda s: np.asarray(s.convert("L"), dtype=np.uint8))
    alpha = mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info)
    transparent = False

    def to_rgb(strip: Image.Image) -> np.ndarray:
        nonlocal transparent
        if alpha:
            rgba = strip.convert("RGBA")
            transparent = transparent or rgba.getextrema()[3][0] < 255
            strip = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        try:
            return np.asarray(strip.convert("RGB"), dtype=np.uint8)
        except ValueError as err:  # e.g. LAB or HSV TIFFs
            raise ImageError(
                f"The image uses a colour mode ({mode}) pneumo cannot convert. "
                "Export it as an 8-bit greyscale or RGB PNG or JPEG and re-upload it."
            ) from err

    rgb = _reduce_strips(img, factor, to_rgb)
    if transparent:
        notes.append("Transparent parts of the image were shown as black.")
    return rgb


_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF",
    b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"BM": "BMP",
}


def _not_an_image_message(data: bytes) -> str:
    kind = next((k for sig, k in _SIGNATURES.items() if data.startswith(sig)), None)
    if kind is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind = "WebP"
    if kind:
        return (f"The file starts like a {kind} image but is incomplete or damaged: its header "
                f"could not be read. {_TRY_AGAIN}")
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


# Value representations that can follow a tag in explicit-VR DICOM.
_DICOM_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN "
    b"UR US UT UV".split()
)


def _looks_like_bare_dicom(data: bytes) -> bool:
    """A DICOM data set without the 128-byte preamble and 'DICM' (old or hand-written files).

    Such files start with a group 0x0002 (file meta) or 0x0008 element, followed by either a VR
    (explicit VR) or a plausible 4-byte length (implicit VR). No picture format starts that way.
    """
    if len(data) < 8 or data[0:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    if data[4:6] in _DICOM_VRS:
        return True
    return struct.unpack_from("<I", data, 4)[0] <= min(len(data) - 8, 1024)


# --- sizes and pixel values -------------------------------------------------------------------


def _too_large() -> ImageError:
    return ImageError(
        f"The image is too large to open safely (more than {config.MAX_IMAGE_PIXELS:,} pixels). "
        "Export it at a lower resolution and re-upload it."
    )


def _check_size(width: int, height: int) -> None:
    """Refuse, from the declared size alone, images too large, too small or too elongated."""
    width, height = int(width), int(height)
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
    """Stretch a high-bit-depth (or float) array linearly to 0-255.

    NaN and infinite values are ignored for the range and shown as black (NaN, -inf) or white
    (+inf); an array without any finite spread gives zeros. Works a block of rows at a time,
    so a large array costs its uint8 result and a few MB, never a float64 copy of it.
    """
    gray = np.asarray(gray)
    if gray.ndim == 0:
        return _stretch(gray, _finite_range([gray]))
    blocks = row_blocks(gray.shape[0], gray[0].size if gray.shape[0] else 1)
    value_range = _finite_range(gray[rows] for rows in blocks)
    out = np.empty(gray.shape, dtype=np.uint8)
    for rows in blocks:
        out[rows] = _stretch(gray[rows], value_range)
    return out


def _finite_range(blocks: Iterable[np.ndarray]) -> tuple[float, float] | None:
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


def _stretch(values: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
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


_TABLES: dict[tuple, tuple[np.ndarray, np.dtype | None]] = {}


def _stretch_table(dtype: np.dtype, lo: float, hi: float) -> tuple[np.ndarray, np.dtype | None] | None:
    """For an integer ``dtype`` of 8 or 16 bits: a uint8 table of ``_stretch`` over every value it
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
                   to_uint8: Callable[[slice], np.ndarray]) -> np.ndarray:
    """Stack ``reduce_area(to_uint8(rows), factor)`` over :func:`row_blocks` into one uint8 array."""
    out = None
    for rows in row_blocks(height, row_values, factor):
        part = reduce_area(np.asarray(to_uint8(rows)), factor)
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
    """Average ``factor`` x ``factor`` blocks of a uint8 (h, w[, c]) array (a trailing partial block
    is dropped): an (h // factor, w // factor[, c]) array."""
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


def _pil_bytes_per_pixel(mode: str) -> int:
    """What PIL stores per pixel (three-band and two-band images take four bytes)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _transient_bytes(img: Image.Image, data: bytes, width: int, height: int) -> int:
    """The decoder's own buffers beside the image, from the header (full-size ``width`` x ``height``).

    A progressive or multi-scan JPEG keeps every DCT coefficient (2 bytes per sample, whatever
    the draft scale); libtiff reads a strip or tile of raw samples at a time (a single-strip file:
    the whole image); WebP decodes into its own RGBA canvas, which is copied twice (measured:
    about 12 bytes per pixel beside PIL's 4).
    """
    if isinstance(img, JpegImagePlugin.JpegImageFile):
        if not (img.info.get("progressive") or _jpeg_has_several_scans(data)):
            return 0
        layers = getattr(img, "layer", None) or [("", 1, 1, 0)]
        h_max, v_max = max(layer[1] for layer in layers), max(layer[2] for layer in layers)
        return sum(-(-width * layer[1] // (8 * h_max)) * -(-height * layer[2] // (8 * v_max)) * 128
                   for layer in layers)
    if img.format == "TIFF":
        tags = getattr(img, "tag_v2", {})
        bits = tags.get(258, (8,))
        bytes_per_pixel = -(-sum(bits if isinstance(bits, tuple) else (bits,)) // 8)
        if 322 in tags and 323 in tags:  # TileWidth, TileLength
            return int(tags[322]) * int(tags[323]) * bytes_per_pixel
        return min(int(tags.get(278, height) or height), height) * width * bytes_per_pixel
    if img.format == "WEBP":
        return width * height * 12
    return 0


def _jpeg_has_several_scans(data: bytes) -> bool:
    """Whether a start-of-scan marker follows the first scan (entropy-coded data never holds one)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return True  # not where a marker should be: assume the worst
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xDA:  # the first scan: look for another before the end of this image
            end = data.find(b"\xff\xd9", pos + 2)
            return data.find(b"\xff\xda", pos + 2, len(data) if end == -1 else end) != -1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
        else:
            pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    return False


def _plan_raster(img: Image.Image, data: bytes,
                 max_side: int | None = None) -> tuple[int, tuple[int, int]]:
    """From the header: the reduction factor left to apply after decoding and the (height, width)
    the image is decoded at without a ``max_side`` hint; or an ImageError.

    A JPEG larger than ``config.DECODE_MAX_PIXELS`` is asked to decode at 1/2, 1/4 or 1/8 scale
    (``draft``, keeping its mode); other formats decode full size and are reduced as converted.
    With ``max_side`` (see :func:`decode_image`), a JPEG is asked for the smallest of those scales
    that keeps its long side at least ``max_side`` and its short side ``config.IMAGE_SIZE``.
    """
    width, height = img.size
    factor = reduction_factor(width, height)
    scale = 1
    jpeg = isinstance(img, JpegImagePlugin.JpegImageFile)
    if factor > 1 and jpeg:
        scale = next((s for s in (2, 4, 8) if s >= factor), 8)
    full = (-(-width // scale), -(-height // scale))  # the JPEG decoder's size at 1/scale
    full_factor = reduction_factor(*full)
    full_size = (full[1] // full_factor, full[0] // full_factor)
    if jpeg and max_side:
        long_side, short_side = max(width, height), min(width, height)
        scale = max([scale] + [s for s in (2, 4, 8) if long_side // s >= max_side
                               and short_side // s >= config.IMAGE_SIZE])
    if scale > 1:
        img.draft(img.mode, (width // scale, height // scale))
        factor = reduction_factor(*img.size)
    w, h = img.size
    need = decode_peak_bytes(w * h * _pil_bytes_per_pixel(img.mode),
                             _transient_bytes(img, data, width, height),
                             (w // factor) * (h // factor),
                             img.mode in _HIGH_DEPTH_MODES or img.mode in ("1", "L"))
    check_decode_memory(width, height, need, f"{img.format or 'image'}, {img.mode}")
    return factor, full_size


def _reduce_strips(img: Image.Image, factor: int,
                   convert: Callable[[Image.Image], np.ndarray]) -> np.ndarray:
    """``convert`` each strip of rows of a loaded image to uint8 and :func:`map_row_blocks` them."""
    width, height = img.size
    return map_row_blocks(height, width * len(img.getbands()), factor,
                          lambda rows: convert(img.crop((0, rows.start, width, rows.stop))))


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """Repeat a single channel three times."""
    return np.repeat(gray[..., None], 3, axis=-1)


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """(h, w, 3) RGB: a 2-D (greyscale) array repeated to three channels, RGB as it is."""
    return gray_to_rgb(pixels) if pixels.ndim == 2 else pixels


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


READ_MAX_SIDE = 768  # the app's display copy (pneumo.reader.DISPLAY_MAX_SIDE): see load_image


def load_image(source: bytes | str | Path) -> np.ndarray:
    """File path or bytes -> 224x224x3 uint8 model input. The single preprocessing path.

    Decoded with the app's ``max_side`` hint (:data:`READ_MAX_SIDE`, :func:`decode_image`), so a
    large JPEG gives exactly the model input the app reads from it.

    Raises :class:`ImageError` for a file that is not a readable X-ray, and ``OSError`` when a
    path cannot be read at all.
    """
    data = source if isinstance(source, (bytes, bytearray, memoryview)) else Path(source).read_bytes()
    return to_model_input(decode_image(data, READ_MAX_SIDE).pixels)
