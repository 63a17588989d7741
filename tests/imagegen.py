"""Test images made in memory: PNG, JPEG, TIFF, GIF, 16-bit, float, DICOM and broken variants.

Nothing here touches the disk or the network; every function returns ``bytes`` (a file's
contents) or a numpy array. Sizes are small (about 100-260 px) so the suites stay fast.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

# Header values the DICOM tests plant and then look for in everything pneumo returns.
PATIENT_NAME = "Doe^Janeqz"
PATIENT_ID = "PID-77305-QZ"
PATIENT_BIRTH_DATE = "20190412"
INSTITUTION = "Saint Qzxy Childrens Hospital"
PHI_VALUES = (PATIENT_NAME, "Janeqz", PATIENT_ID, PATIENT_BIRTH_DATE, INSTITUTION)


# --- pixel arrays --------------------------------------------------------------------------


def chest_like(height: int = 256, width: int = 224, seed: int = 0) -> np.ndarray:
    """A synthetic frontal chest radiograph, uint8 (h, w): body, two dark lungs, spine, ribs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    y /= height
    x /= width
    body = ((x - 0.5) / 0.46) ** 2 + ((y - 0.55) / 0.55) ** 2 < 1
    img = np.where(body, 150.0, 20.0)
    for cx in (0.3, 0.7):
        lung = ((x - cx) / 0.16) ** 2 + ((y - 0.45) / 0.3) ** 2 < 1
        ribs = 18 * (np.sin(y * 60 + np.abs(x - 0.5) * 8) > 0.6)
        img = np.where(lung, 60.0 + ribs, img)
    img = np.where(np.abs(x - 0.5) < 0.05, 210.0, img)  # spine
    heart = ((x - 0.57) / 0.13) ** 2 + ((y - 0.62) / 0.13) ** 2 < 1
    img = np.where(heart, 175.0, img)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def chest_like_16bit(height: int = 256, width: int = 224, bits: int = 12, seed: int = 0) -> np.ndarray:
    """The same picture as uint16 using ``bits`` bits (e.g. 0..4095 for 12)."""
    gray = chest_like(height, width, seed).astype(np.float64)
    return np.round(gray / 255.0 * (2**bits - 1)).astype(np.uint16)


def quadrant_marker(size: int = 128) -> np.ndarray:
    """Grey uint8 square with a white top-left quadrant: shows any rotation or flip."""
    img = np.full((size, size), 40, np.uint8)
    img[: size // 2, : size // 2] = 230
    return img


def rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


# --- raster files ---------------------------------------------------------------------------


def encode(image: Image.Image | np.ndarray, fmt: str, **save_kwargs) -> bytes:
    """Save a PIL image (or an array, via ``Image.fromarray``) to bytes in format ``fmt``."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_kwargs)
    return buffer.getvalue()


def png(array: np.ndarray | None = None, **kw) -> bytes:
    return encode(chest_like() if array is None else array, "PNG", **kw)


def jpeg(array: np.ndarray | None = None, quality: int = 92, exif_orientation: int | None = None,
         **kw) -> bytes:
    image = Image.fromarray(chest_like() if array is None else array)
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif.tobytes()
    return encode(image, "JPEG", quality=quality, **kw)


def png16(array: np.ndarray | None = None) -> bytes:
    """16-bit greyscale PNG (PIL mode I;16)."""
    array = chest_like_16bit(bits=12) if array is None else array
    return encode(Image.fromarray(array.astype(np.uint16)), "PNG")


def palette_png(transparent: bool = False) -> bytes:
    image = Image.fromarray(rgb(chest_like())).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    kw = {"transparency": 0} if transparent else {}
    return encode(image, "PNG", **kw)


def rgba_png(alpha: int = 128) -> bytes:
    rgba = np.dstack([rgb(chest_like()), np.full(chest_like().shape, alpha, np.uint8)])
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


def la_png(alpha: int = 255) -> bytes:
    gray = chest_like()
    return encode(Image.fromarray(np.dstack([gray, np.full_like(gray, alpha)]), "LA"), "PNG")


def cmyk_jpeg() -> bytes:
    return encode(Image.fromarray(rgb(chest_like())).convert("CMYK"), "JPEG", quality=95)


def one_bit_png() -> bytes:
    return encode(Image.fromarray(chest_like() > 100), "PNG")


def float_tiff(with_non_finite: bool = False) -> bytes:
    values = chest_like().astype(np.float32) / 255.0 * 3.5 - 1.0
    if with_non_finite:
        values[0, 0], values[0, 1], values[1, 0] = np.nan, np.inf, -np.inf
    return encode(Image.fromarray(values, "F"), "TIFF")


def frame(index: int) -> np.ndarray:
    """Frame/page ``index`` of the multi-frame files: frame 0 is ``chest_like()``, later frames
    are its negative, so reading the wrong one shows."""
    return chest_like() if index == 0 else 255 - chest_like(seed=index)


def animated_gif(frames: int = 3) -> bytes:
    images = [Image.fromarray(frame(i)) for i in range(frames)]
    return _save_all(images, "GIF", duration=100, loop=0)


def multipage_tiff(pages: int = 3) -> bytes:
    return _save_all([Image.fromarray(frame(i)) for i in range(pages)], "TIFF")


def _save_all(images: list[Image.Image], fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    images[0].save(buffer, fmt, save_all=True, append_images=images[1:], **kw)
    return buffer.getvalue()


def png_declaring(width: int, height: int, bit_depth: int = 8, color_type: int = 0) -> bytes:
    """A valid-looking PNG whose header declares ``width`` x ``height`` but holds a few bytes of
    pixel data: a decompression bomb's header (no memory is needed to make it)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    """The first ``keep`` fraction of a file, as an interrupted download leaves it."""
    return data[: max(1, int(len(data) * keep))]


# --- DICOM ------------------------------------------------------------------------------------


def dicom(
    pixels: np.ndarray | None = None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    signed: bool = False,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    voi_lut: tuple[int, list[int], int] | None = None,
    transfer_syntax: str | None = None,
    encapsulated_frames: list[bytes] | None = None,
    frame_shape: tuple[int, ...] | None = None,
    with_pixel_data: bool = True,
    preamble: bool = True,
    file_meta: bool = True,
    patient: bool = True,
    image_module: bool = True,
    sop_class: str = "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    extra: dict | None = None,
) -> bytes:
    """A DICOM Part 10 file (a DX image) as bytes.

    ``pixels`` is (rows, cols), (frames, rows, cols) or (rows, cols, 3). ``voi_lut`` is
    (first mapped value, LUT data, bits per entry). ``encapsulated_frames`` holds already
    compressed frames for ``transfer_syntax``; their size is ``frame_shape`` (rows, cols[, 3]).
    ``preamble=False`` writes no 128-byte preamble and 'DICM'; ``file_meta=False`` also drops
    the file meta group (a bare implicit-VR data set). ``image_module=False`` makes a document
    without image attributes or pixel data. Patient fields (``PHI_VALUES``) are planted unless
    ``patient=False``.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

    syntax = transfer_syntax or (ExplicitVRLittleEndian if file_meta else ImplicitVRLittleEndian)
    if pixels is None and encapsulated_frames is None:
        pixels = chest_like_16bit(bits=12)
    shape = tuple(frame_shape) if encapsulated_frames is not None else pixels.shape
    frames = len(encapsulated_frames) if encapsulated_frames is not None else 1
    if encapsulated_frames is None and (pixels.ndim == 3 and pixels.shape[-1] != 3):
        frames, shape = pixels.shape[0], pixels.shape[1:]
    samples = 3 if len(shape) == 3 else 1

    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    if file_meta:
        ds.file_meta = meta
    if patient:
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = PATIENT_BIRTH_DATE
        ds.InstitutionName = INSTITUTION
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if not image_module:  # a document (report, SR): no image attributes, no pixels
        with_pixel_data = False
    else:
        ds.Rows, ds.Columns = shape[0], shape[1]
        ds.SamplesPerPixel = samples
        ds.PhotometricInterpretation = photometric
        if samples == 3:
            ds.PlanarConfiguration = 0
        if frames > 1:
            ds.NumberOfFrames = frames
        dtype = np.dtype(pixels.dtype) if pixels is not None else np.dtype(np.uint8)
        ds.BitsAllocated = dtype.itemsize * 8
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if signed else 0
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        if voi_function is not None:
            ds.VOILUTFunction = voi_function
        if voi_lut is not None:
            first, lut, bits = voi_lut
            item = Dataset()
            item.add_new("LUTDescriptor", "US", [len(lut), first, bits])
            item.add_new("LUTData", "US", list(lut))
            ds.VOILUTSequence = [item]
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    if with_pixel_data:
        if encapsulated_frames is not None:
            ds.PixelData = encapsulate(encapsulated_frames)
            ds["PixelData"].VR = "OB"
        else:
            ds.PixelData = np.ascontiguousarray(pixels).tobytes()
            ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    buffer = io.BytesIO()
    if preamble and not UID(syntax).is_transfer_syntax:
        # pydicom writes only syntaxes it knows: write a known one of the same padded length,
        # then put the unknown UID in its place.
        stand_in = _stand_in_syntax(syntax)
        meta.TransferSyntaxUID = stand_in
        dcmwrite(buffer, ds, enforce_file_format=True)
        data = buffer.getvalue()
        return data.replace(_padded(stand_in), _padded(syntax), 1)
    if preamble:
        dcmwrite(buffer, ds, enforce_file_format=True)
    else:
        implicit = syntax == ImplicitVRLittleEndian
        dcmwrite(buffer, ds, implicit_vr=implicit, little_endian=True)
    return buffer.getvalue()


def _padded(uid: str) -> bytes:
    return uid.encode() + b"\x00" * (len(uid) % 2)


def _stand_in_syntax(uid: str) -> str:
    for known in ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.100"):
        if len(_padded(known)) == len(_padded(uid)):
            return known
    raise ValueError(f"no stand-in transfer syntax as long as {uid}")


def dicom_jpeg_baseline(gray: np.ndarray | None = None, quality: int = 95) -> bytes:
    """An 8-bit MONOCHROME2 DICOM whose pixel data is one baseline JPEG frame."""
    from pydicom.uid import JPEGBaseline8Bit

    gray = chest_like() if gray is None else gray
    return dicom(
        transfer_syntax=JPEGBaseline8Bit,
        encapsulated_frames=[encode(gray, "JPEG", quality=quality)],
        frame_shape=gray.shape,
    )


def dicom_compressed(pixels: np.ndarray, transfer_syntax: str, plugin: str = "", **kw) -> bytes:
    """A DICOM compressed with pydicom's own encoders (RLE natively, JPEG 2000 via pylibjpeg)."""
    import pydicom

    plain = pydicom.dcmread(io.BytesIO(dicom(pixels, **kw)))
    plain.compress(transfer_syntax, encoding_plugin=plugin)
    buffer = io.BytesIO()
    plain.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def deflated_dicom(pixels: np.ndarray | None = None) -> bytes:
    """A DICOM in Deflated Explicit VR Little Endian (the whole data set zlib-deflated)."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    return dicom(pixels, transfer_syntax=DeflatedExplicitVRLittleEndian)


def deflate_bomb_dicom(inflated_bytes: int) -> bytes:
    """A deflated DICOM whose data set inflates to ``inflated_bytes`` of zeros after the header."""
    plain = dicom(np.zeros((64, 64), np.uint8), transfer_syntax="1.2.840.10008.1.2.1.99")
    meta_end = 132 + 12 + struct.unpack_from("<I", plain, 140)[0]  # (0002,0000) group length
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk, body = bytes(1 << 20), []
    for _ in range(inflated_bytes // len(chunk)):
        body.append(deflater.compress(chunk))
    body.append(deflater.flush())
    return plain[:meta_end] + b"".join(body)
