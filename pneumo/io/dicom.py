"""DICOM in: the first frame's pixels to RGB uint8, displayed as a DICOM viewer would.

Grey-level pipeline (PS3.4 N.2): stored values -> Modality LUT (LUT or rescale slope/intercept)
-> VOI LUT (LUT, else window centre/width with its VOI LUT Function, else a linear min-max
stretch) -> 0..255, inverted for MONOCHROME1. Enhanced multi-frame files carry these values in
their functional groups; frame 1's are used.

Privacy: only the image-pixel and LUT attributes listed in ``_PIXEL_TAGS``, and the scope facts
of :data:`pneumo.io.header.HEADER_TAGS` (age or birth and study dates, view, laterality, body part,
modality; reduced at once to :class:`~pneumo.io.header.HeaderFacts`), are read from the
file (``dcmread(specific_tags=...)``), so patient, study and device fields are never parsed,
returned, logged or quoted in a message. pydicom's value-validation warnings, which quote
values, are silenced while decoding, and its reading validation is set to IGNORE (a process-wide
pydicom setting; nothing else in pneumo reads DICOM).

Compressed transfer syntaxes are decoded by whichever pydicom plugins are installed
(requirements.txt pins pylibjpeg with its libjpeg and openjpeg plugins for JPEG lossless,
JPEG-LS and JPEG 2000; Pillow covers baseline JPEG; pydicom itself RLE and deflate). Files whose
syntax no installed plugin decodes get an :class:`ImageError` saying how to re-export them.

Memory: the decoded frame's size is estimated from Rows, Columns, SamplesPerPixel and
BitsAllocated before anything is decoded, and a file that would take more than
``config.DECODE_MEMORY_BUDGET_MB`` is refused. The grey-level pipeline then runs a block of rows
at a time (no full-size float64 copy), and a frame above ``config.DECODE_MAX_PIXELS`` is
reduced by an integer factor as it goes.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np

from pneumo import config
from pneumo.io.base import (
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
    scale_to_uint8,
    stretch,
)
from pneumo.io.header import HEADER_TAGS, header_facts

# The only attributes read from a file (SpecificCharacterSet is added by pydicom; the file meta
# group is always read, and none of it is used beyond the transfer syntax and SOP class).
_PIXEL_TAGS = [
    "SOPClassUID",  # to tell a report or other document from an image whose pixels are missing
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "PlanarConfiguration", "NumberOfFrames",
    "PixelData", "FloatPixelData", "DoubleFloatPixelData", "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "RescaleSlope", "RescaleIntercept", "ModalityLUTSequence",
    "VOILUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction",
    "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData", "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
]
_PIXEL_DATA = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# A deflated data set larger than this once inflated is refused (a zip bomb in a DICOM).
MAX_INFLATED_BYTES = 1 << 30
_DEFLATED = b"1.2.840.10008.1.2.1.99"

_DAMAGED = "The DICOM file is damaged and could not be read. Export it again and re-upload it."
_NO_PIXELS = (
    "This DICOM file holds no image (no pixel data): it may be a report, a structured document "
    "or a directory. Export the radiograph itself."
)
_MISSING_PIXELS = (
    "This DICOM file describes an image but holds no pixel data, so there is nothing to read. "
    "Export the radiograph again with its image and re-upload it."
)
_BAD_PIXELS = (
    "The DICOM image data is damaged or incomplete and could not be decoded. "
    "Export it again and re-upload it."
)


def decode_dicom(data: bytes, *, bare: bool = False) -> DecodedImage:
    """Decode a DICOM file's first frame to RGB uint8.

    ``bare=True`` reads a data set written without the 128-byte preamble and 'DICM' prefix
    (pydicom's ``force``); if that does not give an image, the file is "not an image".
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's warnings may quote header values
        try:
            return _decode(data, bare)
        except (ImageError, MemoryError):
            raise
        except Exception as err:  # pydicom converts elements lazily: bad ones fail on first use
            raise ImageError(_DAMAGED) from err


def _decode(data: bytes, bare: bool) -> DecodedImage:
    import pydicom
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    notes: list[str] = []
    _refuse_deflate_bomb(data, 0 if bare else 132)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=bare, specific_tags=_PIXEL_TAGS + HEADER_TAGS)
        has_pixels = any(name in ds for name in _PIXEL_DATA)
    except MemoryError:
        raise
    except Exception as err:
        if bare:
            raise ImageError(not_an_image_message(data)) from None
        raise ImageError(_DAMAGED) from err
    if not has_pixels:
        if bare:
            raise ImageError(not_an_image_message(data))
        sop_classes = [uid for uid in (ds.get("SOPClassUID"),
                                       ds.file_meta.get("MediaStorageSOPClassUID")) if uid]
        if "Rows" in ds or "Columns" in ds or any("Image Storage" in _uid_name(u) for u in sop_classes):
            raise ImageError(_MISSING_PIXELS)  # an image object without its pixel data element
        if not sop_classes:  # nothing says what this file is
            raise ImageError(_DAMAGED)
        raise ImageError(_NO_PIXELS)
    facts = header_facts(ds)
    for name in HEADER_TAGS:  # the facts are kept; the values themselves are not
        if name in ds:
            del ds[name]
    if bare:
        notes.append("Non-standard DICOM file (no preamble or 'DICM' header); it was read anyway.")

    if not ds.file_meta.get("TransferSyntaxUID"):  # bare data sets, or a meta header without it
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else
            ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian
        )
    syntax = ds.file_meta.TransferSyntaxUID
    rows, cols = _int(ds.get("Rows")), _int(ds.get("Columns"))
    if rows is None or cols is None:
        raise ImageError(_DAMAGED)
    check_size(cols, rows)
    frames = _int(ds.get("NumberOfFrames")) or 1
    _require_decoder(syntax)
    compressed = _is_compressed(syntax)
    if "PixelData" in ds and compressed:
        _refuse_embedded_bomb(ds.PixelData)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    factor = reduction_factor(cols, rows)
    _check_memory(ds, rows, cols, factor, compressed, photometric)

    from pydicom.pixels import pixel_array

    try:
        pixels = np.asarray(pixel_array(ds, index=0))  # decodes the first frame only
    except MemoryError:
        raise
    except Exception as err:
        raise ImageError(_BAD_PIXELS) from err
    for name in _PIXEL_DATA:  # the encoded copy is no longer needed
        if name in ds:
            del ds[name]
    if frames > 1:
        notes.append(f"The DICOM file holds {frames} frames; only the first was read.")

    if pixels.ndim == 2 and photometric in ("MONOCHROME1", "MONOCHROME2", ""):
        gray = _grey_levels(pixels, ds, notes, factor)
        del pixels
        if photometric == "MONOCHROME1":
            gray = 255 - gray  # MONOCHROME1: the minimum value is shown white
        return DecodedImage(gray, notes, header=facts)
    if pixels.ndim == 2 and photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        def colours(block: np.ndarray) -> np.ndarray:
            try:
                return np.asarray(apply_color_lut(block, ds))
            except Exception as err:
                raise ImageError(_BAD_PIXELS) from err

        return DecodedImage(_rgb_uint8(pixels, factor, colours), notes, header=facts)
    if pixels.ndim == 3 and pixels.shape[-1] == 3:  # RGB; pydicom has converted YBR to RGB
        return DecodedImage(_rgb_uint8(pixels, factor), notes, header=facts)
    raise ImageError(
        "This DICOM image uses a pixel layout or colour encoding pneumo does not support. "
        "Export it as a greyscale (MONOCHROME2) DICOM, a PNG or a JPEG and re-upload it."
    )


def _uid_name(uid) -> str:
    try:
        return str(uid.name)
    except Exception:
        return ""


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _is_compressed(syntax) -> bool:
    try:
        return bool(syntax.is_compressed)
    except (ValueError, AttributeError):
        return True


def _require_decoder(syntax) -> None:
    """Refuse a transfer syntax that no installed plugin decodes, naming it only if it's standard."""
    from pydicom.pixels import get_decoder

    try:
        available = get_decoder(syntax).is_available
    except (NotImplementedError, ValueError):
        available = False
    if available:
        return
    try:
        name = syntax.name if syntax.is_transfer_syntax and syntax.name != str(syntax) else None
    except (ValueError, AttributeError):
        name = None
    what = f"with {name}" if name else "in an unrecognised transfer syntax"
    raise ImageError(
        f"The DICOM image is encoded {what}, which pneumo cannot decode. "
        "Export it uncompressed (Explicit VR Little Endian) or as PNG and re-upload it."
    )


# --- memory ----------------------------------------------------------------------------------


def _check_memory(ds, rows: int, cols: int, factor: int, compressed: bool, photometric: str) -> None:
    """Refuse, from the header, a frame whose decoding would exceed the per-image memory budget.

    pydicom decodes the whole frame (one sample in 1, 2, 4 or 8 bytes); a compressed frame's
    decoder also works in 32-bit integers (measured with pylibjpeg-openjpeg: about 4.5 bytes per
    sample beside the output). The encoded pixel data held in the data set is counted too.
    """
    samples = _int(ds.get("SamplesPerPixel")) or 1
    bits = _int(ds.get("BitsAllocated")) or 16
    sample_bytes = 1 if bits <= 8 else 2 if bits <= 16 else 4 if bits <= 32 else 8
    if "FloatPixelData" in ds:
        sample_bytes = 4
    elif "DoubleFloatPixelData" in ds:
        sample_bytes = 8
    decoded = rows * cols * samples * sample_bytes
    encoded = sum(len(ds[name].value or b"") for name in _PIXEL_DATA if name in ds)
    grey = samples == 1 and photometric != "PALETTE COLOR"
    transient = rows * cols * samples * 9 // 2 if compressed else 0
    need = encoded + decode_peak_bytes(decoded, transient,
                                       (rows // factor) * (cols // factor), grey)
    check_decode_memory(cols, rows, need, f"DICOM, {samples} x {bits}-bit")


# --- bombs -----------------------------------------------------------------------------------


def _refuse_deflate_bomb(data: bytes, start: int) -> None:
    """pydicom inflates a deflated data set whole: inflate it here first, bounded, to be sure."""
    end = _file_meta_end(data, start)
    if end is None or _DEFLATED not in data[start:end]:
        return
    # pydicom holds the inflated data set and a copy of its pixel data, then decodes the pixels:
    # measured, about 3.8 times the inflated size, which must fit the per-image memory budget.
    limit = min(MAX_INFLATED_BYTES, (config.DECODE_MEMORY_BUDGET_MB << 20) // 4)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, pending = 0, memoryview(data)[end:]
    try:
        while pending and not inflater.eof:
            total += len(inflater.decompress(pending, 1 << 24))
            if total > limit:
                raise ImageError(
                    f"The compressed DICOM file unpacks to more than {limit >> 20:,} MB, "
                    "too much to open safely. Export it uncompressed (Explicit VR Little Endian) "
                    "or as PNG and re-upload it."
                )
            pending = inflater.unconsumed_tail
    except zlib.error as err:
        raise ImageError(_DAMAGED) from err


def _file_meta_end(data: bytes, pos: int) -> int | None:
    """Offset of the first byte after the group 0x0002 elements (explicit VR little endian)."""
    long_vrs = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
                b"UT", b"UV")
    start = pos
    while pos + 8 <= len(data):
        group = struct.unpack_from("<H", data, pos)[0]
        if group != 0x0002:
            break
        if data[pos + 4:pos + 6] in long_vrs:
            if pos + 12 > len(data):
                return None
            pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return pos if pos > start else None


def _refuse_embedded_bomb(pixel_data: bytes) -> None:
    """Read the first frame's JPEG / JPEG-LS / JPEG 2000 header and refuse an oversized picture.

    Some decoders allocate whatever the codestream declares, whatever Rows and Columns say.
    """
    from pydicom.encaps import generate_fragments, parse_basic_offsets

    try:
        buffer = io.BytesIO(pixel_data)
        parse_basic_offsets(buffer)
        fragment = next(generate_fragments(buffer), b"")
    except Exception as err:
        raise ImageError(_BAD_PIXELS) from err
    size = _codestream_size(fragment[:1 << 20])
    # Rows x Columns already passed the limit, so a larger codestream contradicts the header.
    if size is not None and size[0] * size[1] > config.MAX_IMAGE_PIXELS:
        raise ImageError(_BAD_PIXELS)


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}  # SOFn and JPEG-LS SOF55


def _codestream_size(frag: bytes) -> tuple[int, int] | None:
    """(width, height) declared by a JPEG-family or JPEG 2000 codestream, if found."""
    if frag[:4] == b"\xff\x4f\xff\x51" and len(frag) >= 24:  # J2K SOC + SIZ
        xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", frag, 8)
        return max(xsiz - xosiz, 0), max(ysiz - yosiz, 0)
    if frag[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(frag):
        if frag[pos] != 0xFF:
            return None
        marker = frag[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _SOF_MARKERS and pos + 9 <= len(frag):
            height, width = struct.unpack_from(">HH", frag, pos + 5)
            return width, height
        if marker == 0xDA:  # start of scan without a frame header
            return None
        pos += 2 + struct.unpack_from(">H", frag, pos + 2)[0]
    return None


# --- grey levels -----------------------------------------------------------------------------


def _grey_levels(pixels: np.ndarray, ds, notes: list[str], factor: int = 1) -> np.ndarray:
    """Stored values -> modality LUT -> VOI LUT / window -> uint8 0..255, reduced ``factor`` times.

    Without a VOI LUT or window, 8-bit values are kept as stored and deeper ones are stretched
    linearly from their minimum to their maximum, as for 8- and 16-bit PNGs. Runs a block of rows
    at a time: the float64 values of one block exist at once, never of the whole frame.
    """
    attrs = _frame_attributes(ds)
    little = _little_endian(ds)
    modality = _modality_function(attrs, little)
    height, width = pixels.shape

    def mapped(to_uint8) -> np.ndarray:
        return map_row_blocks(height, width, factor, lambda rows: to_uint8(modality(pixels[rows])))

    if attrs.get("VOILUTSequence"):
        try:
            lut, first = _read_lut(attrs["VOILUTSequence"][0], little)
        except Exception:
            notes.append("The DICOM VOI LUT could not be read; a window or a full-range stretch "
                         "was used instead.")
        else:
            lo, hi = float(lut.min()), float(lut.max())
            if hi > lo:
                return mapped(lambda values: _linear_uint8(_lookup(values, lut, first), lo, hi))
            return _stretched(height, width, factor,
                              lambda rows: _lookup(modality(pixels[rows]), lut, first))
    window = _window_function(attrs)
    if window is not None:
        return mapped(window)
    if pixels.dtype == np.uint8 and all(np.array_equal(modality(pixels[rows]), pixels[rows])
                                        for rows in row_blocks(height, width)):
        # 8-bit without any LUT: shown as stored, like an 8-bit PNG
        return np.array(pixels) if factor == 1 else map_row_blocks(
            height, width, factor, lambda rows: pixels[rows])
    if pixels.dtype.kind in "iu" and pixels.dtype.itemsize <= 2 and _identity_modality(attrs):
        # the stored integers are the modality values: stretched through a lookup table, the
        # same to the bit as their float64 copy (every such integer is exact in float64)
        return _stretched(height, width, factor, lambda rows: pixels[rows])
    return _stretched(height, width, factor, lambda rows: modality(pixels[rows]))


def _stretched(height: int, row_values: int, factor: int, values_of) -> np.ndarray:
    """:func:`scale_to_uint8` of the values ``values_of(rows)`` gives, one block of rows at a time."""
    value_range = finite_range(values_of(rows) for rows in row_blocks(height, row_values))
    return map_row_blocks(height, row_values, factor, lambda rows: stretch(values_of(rows), value_range))


def _frame_attributes(ds) -> dict:
    """Modality and VOI attributes for frame 1: top level, else per-frame, else shared groups."""
    names = ("RescaleSlope", "RescaleIntercept", "ModalityLUTSequence", "VOILUTSequence",
             "WindowCenter", "WindowWidth", "VOILUTFunction")
    found = {name: ds.get(name) for name in names if ds.get(name) is not None}
    groups = []
    for seq_name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        seq = ds.get(seq_name)
        if seq:
            groups.append(seq[0])
    for group in groups:
        for macro in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            items = group.get(macro)
            if items:
                for name in names:
                    if name not in found and items[0].get(name) is not None:
                        found[name] = items[0].get(name)
    return found


def _little_endian(ds) -> bool:
    try:
        return ds.file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.2"
    except AttributeError:
        return True


def _modality_function(attrs: dict, little: bool):
    """Stored values -> modality values (e.g. Hounsfield units, optical density), float64.

    The modality LUT, if any, is read here (a broken one fails now, as a damaged file).
    """
    if attrs.get("ModalityLUTSequence"):
        lut, first = _read_lut(attrs["ModalityLUTSequence"][0], little)
        return lambda pixels: _lookup(pixels, lut, first)
    slope = _number(attrs.get("RescaleSlope"), 1.0)
    intercept = _number(attrs.get("RescaleIntercept"), 0.0)
    if slope == 0.0:  # invalid: would flatten the image
        slope = 1.0

    def rescale(pixels: np.ndarray) -> np.ndarray:
        values = pixels.astype(np.float64)
        if slope != 1.0:
            values *= slope
        if intercept != 0.0:
            values += intercept
        return values

    return rescale


def _identity_modality(attrs: dict) -> bool:
    """True when :func:`_modality_function` would return the stored values unchanged."""
    if attrs.get("ModalityLUTSequence"):
        return False
    slope = _number(attrs.get("RescaleSlope"), 1.0)
    return slope in (0.0, 1.0) and _number(attrs.get("RescaleIntercept"), 0.0) == 0.0


def _number(value, default: float | None) -> float | None:
    """First value of a (possibly multi-valued) numeric attribute; ``default`` if none or bad."""
    if value is None:
        return default
    if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        if len(value) == 0:
            return default
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if np.isfinite(number) else default


def _read_lut(item, little: bool) -> tuple[np.ndarray, int]:
    """A LUT item (LUT Descriptor + LUT Data) -> (its entries as float64, the first mapped value)."""
    descriptor = [int(v) for v in item.LUTDescriptor]
    entries, first = descriptor[0] or 65536, descriptor[1]
    raw = item.LUTData
    if isinstance(raw, (bytes, bytearray)):
        lut = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<u2" if little else ">u2")
    else:
        lut = np.atleast_1d(np.asarray(raw, dtype=np.float64))
    lut = lut[:entries].astype(np.float64)
    if lut.size == 0:
        raise ValueError("empty LUT")
    return lut, first


def _lookup(values: np.ndarray, lut: np.ndarray, first: int) -> np.ndarray:
    """Apply a LUT read by :func:`_read_lut`; values outside it take its first or last entry."""
    index = np.clip(np.rint(values) - first, 0, lut.size - 1).astype(np.intp)
    return lut[index]


def _linear_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return scale_to_uint8(values)
    out = (values - lo) * (255.0 / (hi - lo))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _window_function(attrs: dict):
    """Window centre/width (PS3.3 C.11.2.1.2) as a function values -> uint8 0..255; None if there
    is no usable window."""
    center = _number(attrs.get("WindowCenter"), None)
    width = _number(attrs.get("WindowWidth"), None)
    if center is None or width is None:
        return None
    function = str(attrs.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function == "SIGMOID" and width > 0:
        def window(values):
            return 255.0 / (1.0 + np.exp(np.clip(-4.0 * (values - center) / width, -700, 700)))
    elif function == "LINEAR_EXACT" and width > 0:
        def window(values):
            return ((values - center) / width + 0.5) * 255.0
    elif width >= 1:  # LINEAR, also for an unknown function name
        if width == 1:
            def window(values):
                return np.where(values > center - 0.5, 255.0, 0.0)
        else:
            def window(values):
                return ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    else:
        return None
    return lambda values: np.clip(np.round(window(values)), 0, 255).astype(np.uint8)


def _rgb_uint8(pixels: np.ndarray, factor: int = 1, colours=None) -> np.ndarray:
    """(h, w, 3) RGB, or (h, w) palette indices through ``colours``, -> RGB uint8 reduced ``factor``
    times; samples deeper than 8 bits are stretched over their whole range, one block at a time."""
    height, row_values = pixels.shape[0], pixels.shape[1] * 3

    def values_of(rows: slice) -> np.ndarray:
        return colours(pixels[rows]) if colours else pixels[rows]

    if values_of(slice(0, 1)).dtype == np.uint8:
        if colours is None and factor == 1:
            return pixels
        return map_row_blocks(height, row_values, factor, values_of)
    return _stretched(height, row_values, factor, values_of)


# --- detection ----------------------------------------------------------------------------


def is_dicom(data: bytes) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    return len(data) >= 132 and data[128:132] == b"DICM"


# Value representations that can follow a tag in explicit-VR DICOM.
_DICOM_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN "
    b"UR US UT UV".split()
)


def looks_like_bare_dicom(data: bytes) -> bool:
    """A DICOM data set without the 128-byte preamble and 'DICM' (old or hand-written files).

    Such files start with a group 0x0002 (file meta) or 0x0008 element, followed by either a VR
    (explicit VR) or a plausible 4-byte length (implicit VR). No picture format starts that way.
    """
    if len(data) < 8 or data[0:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    if data[4:6] in _DICOM_VRS:
        return True
    return struct.unpack_from("<I", data, 4)[0] <= min(len(data) - 8, 1024)
