"""PNG, JPEG, BMP, TIFF, GIF and WebP through Pillow: EXIF orientation, any mode to grey or RGB
uint8, reduced decoding of large files (see :mod:`pneumo.io.images` on memory)."""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFile, JpegImagePlugin, UnidentifiedImageError

from pneumo import config
from pneumo.io.base import (
    TRY_AGAIN,
    DecodedImage,
    ImageError,
    check_decode_memory,
    check_size,
    decode_peak_bytes,
    finite_range,
    map_row_blocks,
    not_an_image_message,
    reduction_factor,
    row_blocks,
    stretch_reduced,
    too_large,
)

# Our own check (``check_size``) refuses anything above the limit from the header; PIL's guard
# (a warning above the limit, an error at twice it) is the second line.
Image.MAX_IMAGE_PIXELS = config.MAX_IMAGE_PIXELS

# PIL plugins allowed to open a file. Anything else PIL could open (EPS, which runs Ghostscript,
# PSD, ICO, JPEG 2000, AVIF, ...) is refused as "not an image pneumo can read". The JPEG plugin
# also opens multi-picture (MPO) JPEGs from phones and cameras.
PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP")

_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# A high-bit-depth image up to this size is copied out of PIL whole (PIL's tobytes holds it twice
# for a moment: within ``base._WORKING_BYTES``), larger ones a strip at a time, twice over.
_WHOLE_COPY_BYTES = 16 << 20
_16_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


# --- raster formats (PIL) ---------------------------------------------------------------------


def decode_raster(data: bytes, max_side: int | None = None) -> DecodedImage:
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
            check_size(*img.size)  # from the header, before any pixel is decoded
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                notes.append(f"The file holds {frames} frames/pages; only the first was read.")
                img.seek(0)
                check_size(*img.size)
            # from the header: may refuse, or ask the JPEG decoder to reduce
            factor, full_size = _plan_raster(img, data, max_side)
            img.load()
            orientation = _exif_orientation(img, notes)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise too_large() from err
    except UnidentifiedImageError as err:
        raise ImageError(not_an_image_message(data)) from err
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, struct.error, IndexError,
            KeyError, ZeroDivisionError) as err:  # what PIL's plugins raise for broken files
        if isinstance(err, EOFError) or "truncated" in str(err).lower():
            raise ImageError(
                "The image file is incomplete: it ends before all of the picture is stored "
                "(an interrupted download or copy?). " + TRY_AGAIN
            ) from err
        raise ImageError(
            f"The image is damaged (it could not be decoded). {TRY_AGAIN}"
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
    a first pass; 16-bit ones averaged before the stretch when reduced, :func:`stretch_reduced`),
    transparency is shown as black, everything else goes through PIL's RGB.
    """
    mode = img.mode
    if mode in _HIGH_DEPTH_MODES:
        width, height = img.size
        if width * height * _pil_bytes_per_pixel(mode) <= _WHOLE_COPY_BYTES:
            values = np.asarray(img)  # one copy, read as views below
            value_range = finite_range(values[rows] for rows in row_blocks(height, width))
            return map_row_blocks(height, width, factor, reduces=True, to_uint8=lambda rows:
                                  stretch_reduced(values[rows], value_range, factor))
        value_range = finite_range(np.asarray(img.crop((0, rows.start, width, rows.stop)))
                                   for rows in row_blocks(height, width))
        return _reduce_strips(img, factor, reduces=True,
                              convert=lambda s: stretch_reduced(np.asarray(s), value_range, factor))
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
    that keeps its long side at least ``max_side`` and its short side ``config.IMAGE_SIZE``, and a
    16-bit image is reduced as converted by the largest integer factor that keeps them.
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
    if max_side and img.mode in _16_BIT_MODES:
        # reduced as converted, averaged in 16 bits before the stretch (see ``stretch_reduced``)
        factor = max(factor, _hint_factor(width, height, max_side))
    w, h = img.size
    need = decode_peak_bytes(w * h * _pil_bytes_per_pixel(img.mode),
                             _transient_bytes(img, data, width, height),
                             (w // factor) * (h // factor),
                             img.mode in _HIGH_DEPTH_MODES or img.mode in ("1", "L"))
    check_decode_memory(width, height, need, f"{img.format or 'image'}, {img.mode}")
    return factor, full_size


def _hint_factor(width: int, height: int, max_side: int) -> int:
    """The largest integer factor that divides both sides (no row or column is left out) and keeps
    the long side at least ``max_side`` pixels and the short side ``config.IMAGE_SIZE``; 1 if none.

    Leaving out a partial block would shift the picture by up to a pixel against the full decode:
    measured up to 11 grey levels apart at the model input on sharp edges."""
    long_side, short_side = max(width, height), min(width, height)
    largest = min(long_side // max_side, short_side // config.IMAGE_SIZE)
    return next((f for f in range(largest, 1, -1) if width % f == 0 and height % f == 0), 1)


def _reduce_strips(img: Image.Image, factor: int, convert: Callable[[Image.Image], np.ndarray],
                   reduces: bool = False) -> np.ndarray:
    """``convert`` each strip of rows of a loaded image to uint8 and :func:`map_row_blocks` them
    (``reduces``: ``convert`` reduces the strip ``factor`` times itself)."""
    width, height = img.size
    return map_row_blocks(height, width * len(img.getbands()), factor,
                          lambda rows: convert(img.crop((0, rows.start, width, rows.stop))), reduces)
