"""DICOM in: pixel data to RGB uint8 with rescale, VOI LUT/window and MONOCHROME1 inversion.

No header field is returned, so nothing patient-identifying can reach the page or an export.
"""

from __future__ import annotations

import io

import numpy as np

from pneumo.images import DecodedImage, ImageError, _check_size, gray_to_rgb, scale_to_uint8


def decode_dicom(data: bytes) -> DecodedImage:
    """Decode a DICOM Part 10 file's first frame to RGB uint8."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    notes: list[str] = []
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError) as err:
        raise ImageError("The DICOM file is damaged and could not be read. Export it again.") from err
    if "PixelData" not in ds:
        raise ImageError(
            "This DICOM file holds no image (no pixel data): it may be a report or structured "
            "document. Export the radiograph itself."
        )
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    _check_size(cols, rows)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many types for missing or failing handlers
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise ImageError(
            f"The DICOM image is compressed ({name}) in a way pneumo cannot decode here. "
            "Export it uncompressed (Explicit VR Little Endian) and re-upload it."
        ) from err
    if frames > 1:
        pixels = pixels[0]
        notes.append(f"The DICOM file holds {frames} frames; only the first was read.")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        values = apply_modality_lut(pixels, ds)
        values = apply_voi_lut(values, ds, index=0) if _has_voi(ds) else values
        gray = scale_to_uint8(np.asarray(values))
        if photometric == "MONOCHROME1":
            gray = 255 - gray
            notes.append("MONOCHROME1 DICOM: grey levels were inverted for display.")
        return DecodedImage(gray_to_rgb(gray), notes)
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, photometric, "RGB")
        rgb = pixels if pixels.dtype == np.uint8 else gray_to_rgb(scale_to_uint8(pixels.mean(-1)))
        return DecodedImage(np.asarray(rgb, dtype="uint8"), notes)
    raise ImageError(f"DICOM photometric interpretation {photometric} is not supported.")


def _has_voi(ds) -> bool:
    return "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
