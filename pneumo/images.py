"""Images in: any supported file -> the model's input, defined once for training, evaluation and app.

``load_image`` is the one preprocessing path: decode (PNG, JPEG, BMP, TIFF, GIF, WebP, DICOM),
apply EXIF orientation, bring grayscale / RGB / RGBA / palette / CMYK / 16-bit / float to RGB
uint8, then stretch the whole image to 224x224 (no crop, as the Kaggle 224 px copies were made).

Whatever the bytes, :func:`decode_image` returns a :class:`DecodedImage` or raises
:class:`ImageError`, whose message is meant for the person who uploaded the file: it says what
is wrong and what to do. No other exception type leaves it. Sizes are checked from the file's
header before any pixel is decoded, and truncated files are refused rather than padded with grey.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

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
    """A decoded image at its own resolution, RGB uint8, with notes for the reader."""

    rgb: np.ndarray
    notes: list[str] = field(default_factory=list)


def is_dicom(data: bytes) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def decode_image(data: bytes) -> DecodedImage:
    """Decode file bytes to an RGB uint8 array at full resolution, or raise :class:`ImageError`."""
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
            decoded = _decode_raster(data)
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
    """The promise to callers: C-contiguous, writable (h, w, 3) uint8 within the size limits."""
    rgb = decoded.rgb
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageError(f"pneumo could not convert this image to RGB. {_TRY_AGAIN}")
    _check_size(rgb.shape[1], rgb.shape[0])
    if not (rgb.flags.c_contiguous and rgb.flags.writeable):
        rgb = np.array(rgb, dtype=np.uint8, order="C")
    notes = list(decoded.notes)
    if rgb.size and int(rgb.min()) == int(rgb.max()):
        notes.append("The image is blank (every pixel has the same value); check the export.")
    return DecodedImage(rgb, notes)


# --- raster formats (PIL) ---------------------------------------------------------------------


def _decode_raster(data: bytes) -> DecodedImage:
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
            img.load()
            img = _apply_exif_orientation(img, notes)
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
    return DecodedImage(_to_rgb_uint8(img, notes), notes)


def _apply_exif_orientation(img: Image.Image, notes: list[str]) -> Image.Image:
    """Rotate/flip as the EXIF Orientation tag says; a broken EXIF block leaves the image as stored."""
    try:
        orientation = img.getexif().get(0x0112)  # Orientation
    except Exception:
        notes.append("The file's EXIF data is damaged; the image is shown as stored, unrotated.")
        return img
    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation if isinstance(orientation, int) else 1)
    return img if method is None else img.transpose(method)


def _to_rgb_uint8(img: Image.Image, notes: list[str]) -> np.ndarray:
    mode = img.mode
    if mode in _HIGH_DEPTH_MODES:
        return gray_to_rgb(scale_to_uint8(np.asarray(img)))
    if mode in ("1", "L"):
        return gray_to_rgb(np.array(img.convert("L"), dtype=np.uint8))
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes.append("Transparent parts of the image were shown as black.")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    try:
        rgb = img.convert("RGB")
    except ValueError as err:  # e.g. LAB or HSV TIFFs
        raise ImageError(
            f"The image uses a colour mode ({mode}) pneumo cannot convert. "
            "Export it as an 8-bit greyscale or RGB PNG or JPEG and re-upload it."
        ) from err
    return np.array(rgb, dtype=np.uint8)


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
    (+inf); an array without any finite spread gives zeros.
    """
    gray = np.asarray(gray, dtype=np.float64)
    finite = np.isfinite(gray)
    if not finite.all():
        if not finite.any():
            return np.zeros(gray.shape, dtype=np.uint8)
        lo, hi = float(gray[finite].min()), float(gray[finite].max())
        gray = np.nan_to_num(gray, nan=lo, posinf=hi, neginf=lo)
    else:
        lo, hi = (float(gray.min()), float(gray.max())) if gray.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(gray.shape, dtype=np.uint8)
    out = (gray - lo) * (255.0 / (hi - lo))
    return np.clip(np.round(out, out=out), 0, 255, out=out).astype(np.uint8)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """Repeat a single channel three times."""
    return np.repeat(gray[..., None], 3, axis=-1)


def to_model_input(rgb: np.ndarray) -> np.ndarray:
    """Stretch an RGB uint8 image of any size to the model's 224x224x3 uint8 input.

    A 224x224 RGB uint8 image is returned unchanged; a 2-D (greyscale) array is repeated to RGB.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = gray_to_rgb(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != config.CHANNELS or rgb.dtype != np.uint8:
        raise ValueError(f"to_model_input needs an (h, w, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    size = (config.IMAGE_SIZE, config.IMAGE_SIZE)
    rgb = np.ascontiguousarray(rgb)
    if rgb.shape[:2] == size:
        return rgb
    shrinking = rgb.shape[0] > size[0] or rgb.shape[1] > size[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(rgb, size, interpolation=interpolation)


def load_image(source: bytes | str | Path) -> np.ndarray:
    """File path or bytes -> 224x224x3 uint8 model input. The single preprocessing path.

    Raises :class:`ImageError` for a file that is not a readable X-ray, and ``OSError`` when a
    path cannot be read at all.
    """
    data = source if isinstance(source, (bytes, bytearray, memoryview)) else Path(source).read_bytes()
    return to_model_input(decode_image(data).rgb)
