"""pneumo.io.dicom: grey-level pipeline, frames, compression and privacy."""

from __future__ import annotations

import io
import logging
import warnings

import imagegen as gen
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEGBaseline8Bit, RLELossless

from pneumo.io import dicom as pneumo_dicom
from pneumo.io.base import ImageError, scale_to_uint8
from pneumo.io.images import decode_image, load_image

RAMP = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (96, 1))  # 96x256: every 16th 12-bit value


def grey(data: bytes) -> np.ndarray:
    rgb = decode_image(data).rgb
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    return rgb[..., 0].astype(int)


def test_plain_dicom_is_stretched_to_full_range():
    pixels = gen.chest_like_16bit(bits=12)
    np.testing.assert_array_equal(grey(gen.dicom(pixels)), scale_to_uint8(pixels))
    assert load_image(gen.dicom(pixels)).shape == (224, 224, 3)


# --- MONOCHROME1 ------------------------------------------------------------------------------


def test_monochrome1_equals_its_monochrome2_equivalent():
    pixels = gen.chest_like_16bit(bits=12)
    mono1 = grey(gen.dicom(pixels, photometric="MONOCHROME1", bits_stored=12))
    mono2 = grey(gen.dicom((4095 - pixels).astype(np.uint16), photometric="MONOCHROME2", bits_stored=12))
    assert np.abs(mono1 - mono2).max() <= 1  # rounding only


def test_monochrome1_shows_the_lowest_value_white():
    pixels = gen.chest_like_16bit(bits=12)
    out = grey(gen.dicom(pixels, photometric="MONOCHROME1"))
    assert out[pixels == pixels.min()].min() == 255
    assert out[pixels == pixels.max()].max() == 0


def test_monochrome1_is_inverted_after_the_window():
    pixels = RAMP
    window = (1500, 1000)
    mono1 = grey(gen.dicom(pixels, photometric="MONOCHROME1", window=window))
    mono2 = grey(gen.dicom(pixels, photometric="MONOCHROME2", window=window))
    np.testing.assert_array_equal(mono1, 255 - mono2)


# --- VOI: window and LUT ----------------------------------------------------------------------


def _linear_window(x, center, width):
    x = np.asarray(x, np.float64)
    out = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.clip(np.round(out), 0, 255).astype(int)


def test_window_is_applied_and_pixels_outside_it_clip():
    center, width = 2048, 1025
    out = grey(gen.dicom(RAMP, window=(center, width)))
    below = RAMP <= center - 0.5 - (width - 1) / 2
    above = RAMP > center - 0.5 + (width - 1) / 2
    assert below.any() and above.any()
    assert (out[below] == 0).all() and (out[above] == 255).all()
    np.testing.assert_array_equal(out, _linear_window(RAMP, center, width))
    assert len(np.unique(out[~below & ~above])) > 50  # a linear ramp inside the window
    assert not np.array_equal(out, grey(gen.dicom(RAMP)))  # differs from the min-max stretch


def test_multi_valued_window_uses_the_first():
    out = grey(gen.dicom(RAMP, extra={"WindowCenter": [1000, 3000], "WindowWidth": [500, 500]}))
    np.testing.assert_array_equal(out, _linear_window(RAMP, 1000, 500))


def test_linear_exact_and_sigmoid_windows():
    exact = grey(gen.dicom(RAMP, window=(2000, 800), voi_function="LINEAR_EXACT"))
    expected = np.clip(np.round(((RAMP - 2000.0) / 800 + 0.5) * 255), 0, 255)
    np.testing.assert_array_equal(exact, expected)
    sigmoid = grey(gen.dicom(RAMP, window=(2000, 800), voi_function="SIGMOID"))
    expected = np.round(255 / (1 + np.exp(-4 * (RAMP - 2000.0) / 800)))
    np.testing.assert_array_equal(sigmoid, expected)


def test_invalid_window_falls_back_to_min_max():
    out = grey(gen.dicom(RAMP, window=(2000, 0)))
    np.testing.assert_array_equal(out, scale_to_uint8(RAMP))


def test_voi_lut_is_applied_in_preference_to_the_window():
    lut = [0] * 2048 + [4095] * 2048  # a step at stored value 2048
    out = grey(gen.dicom(RAMP, voi_lut=(0, lut, 12), window=(100, 10)))
    np.testing.assert_array_equal(out, np.where(RAMP >= 2048, 255, 0))


def test_voi_lut_with_offset_first_value_and_clipping():
    lut = list(range(0, 1000, 10))  # 100 entries for stored values 1000..1099
    out = grey(gen.dicom(RAMP, voi_lut=(1000, lut, 16)))
    assert (out[RAMP < 1000] == 0).all() and (out[RAMP >= 1099] == 255).all()


# --- modality LUT: rescale slope / intercept --------------------------------------------------


def test_rescale_intercept_is_applied_before_the_window():
    # modality value = stored - 1024 (multiples of 16); a 2-wide window at 8.5 splits 0 from 16
    out = grey(gen.dicom(RAMP, rescale=(1.0, -1024.0), window=(8.5, 2)))
    np.testing.assert_array_equal(out, np.where(RAMP > 1024, 255, 0))


def test_rescale_slope_is_applied_before_the_window():
    # modality value = 0.5 * stored (multiples of 8); the window at 1004.5 splits 1000 from 1008
    out = grey(gen.dicom(RAMP, rescale=(0.5, 0.0), window=(1004.5, 2)))
    np.testing.assert_array_equal(out, np.where(RAMP > 2000, 255, 0))


def test_negative_rescale_slope_inverts_the_stretch():
    out = grey(gen.dicom(RAMP, rescale=(-1.0, 4095.0)))
    np.testing.assert_array_equal(out, 255 - scale_to_uint8(RAMP))


def test_signed_pixels_with_rescale():
    pixels = (RAMP.astype(np.int32) - 2048).astype(np.int16)
    out = grey(gen.dicom(pixels, signed=True, rescale=(1.0, 2048.0), window=(2048, 1025)))
    np.testing.assert_array_equal(out, _linear_window(RAMP, 2048, 1025))


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("rescale", [None, (1.0, 0.0)], ids=["no-rescale", "identity-rescale"])
@pytest.mark.parametrize("max_pixels", [None, 20_000], ids=["full", "reduced"])
def test_stored_integers_are_stretched_as_their_float_copy_to_the_bit(signed, rescale, max_pixels,
                                                                      monkeypatch):
    """Integers whose modality values are themselves skip the float64 copy (the PACS speed
    target): the grey levels are the same to the bit, full size and reduced."""
    from pneumo import config

    pixels = gen.chest_like_16bit(bits=12, seed=3)
    if signed:
        pixels = (pixels.astype(np.int32) - 2048).astype(np.int16)
    data = gen.dicom(pixels, signed=signed, rescale=rescale)
    if max_pixels:
        monkeypatch.setattr(config, "DECODE_MAX_PIXELS", max_pixels)
    fast = decode_image(data).pixels
    monkeypatch.setattr(pneumo_dicom, "_identity_modality", lambda attrs: False)
    np.testing.assert_array_equal(fast, decode_image(data).pixels)
    assert fast.shape[0] < pixels.shape[0] if max_pixels else fast.shape == pixels.shape


def test_enhanced_multiframe_functional_groups_give_window_and_rescale():
    transform, voi, group = Dataset(), Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -1024, "US"
    voi.WindowCenter, voi.WindowWidth = 8.5, 2
    group.PixelValueTransformationSequence = [transform]
    group.FrameVOILUTSequence = [voi]
    out = grey(gen.dicom(RAMP, extra={"SharedFunctionalGroupsSequence": [group]}))
    np.testing.assert_array_equal(out, np.where(RAMP > 1024, 255, 0))


# --- frames, colour, compression --------------------------------------------------------------


def test_multi_frame_gives_the_first_frame_and_a_note():
    frames = np.stack([gen.chest_like_16bit(seed=0), np.zeros((256, 224), np.uint16),
                       4095 - gen.chest_like_16bit(seed=2)])
    decoded = decode_image(gen.dicom(frames))
    np.testing.assert_array_equal(decoded.rgb[..., 0], scale_to_uint8(frames[0]))
    assert any("3 frames" in n and "only the first" in n for n in decoded.notes)


def test_rgb_dicom():
    rgb = np.dstack([gen.chest_like(), 255 - gen.chest_like(), np.full((256, 224), 90, np.uint8)])
    np.testing.assert_array_equal(decode_image(gen.dicom(rgb, photometric="RGB")).rgb, rgb)


def test_8bit_dicom_without_window_is_kept_as_stored():
    gray = gen.chest_like()
    np.testing.assert_array_equal(grey(gen.dicom(gray)), gray)


def test_jpeg_baseline_dicom_matches_the_jpeg():
    gray = gen.chest_like()
    out = grey(gen.dicom_jpeg_baseline(gray))
    assert np.abs(out - gray.astype(int)).mean() < 3


def test_ybr_jpeg_dicom_is_converted_to_rgb_once():
    rgb = np.dstack([gen.chest_like(), 255 - gen.chest_like(), np.full((256, 224), 90, np.uint8)])
    jpeg = gen.encode(rgb, "JPEG", quality=95)
    data = gen.dicom(transfer_syntax=JPEGBaseline8Bit, photometric="YBR_FULL_422",
                     encapsulated_frames=[jpeg], frame_shape=rgb.shape)
    from PIL import Image

    pillow = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)
    assert np.abs(decode_image(data).rgb.astype(int) - pillow).mean() < 2


def test_rle_lossless_dicom():
    pixels = gen.chest_like_16bit(bits=12)
    out = grey(gen.dicom_compressed(pixels, RLELossless))
    np.testing.assert_array_equal(out, scale_to_uint8(pixels))


def test_jpeg2000_lossless_dicom():
    pytest.importorskip("openjpeg")
    from pydicom.uid import JPEG2000Lossless

    pixels = gen.chest_like_16bit(bits=12)
    out = grey(gen.dicom_compressed(pixels, JPEG2000Lossless, plugin="pylibjpeg"))
    np.testing.assert_array_equal(out, scale_to_uint8(pixels))


@pytest.mark.parametrize(("reference", "compressed", "plugin"), [
    ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm", "libjpeg"),  # JPEG-LS lossless
    ("MR_small.dcm", "MR_small_jp2klossless.dcm", "openjpeg"),  # JPEG 2000 lossless
    ("MR_small.dcm", "MR_small_RLE.dcm", None),
    ("SC_rgb_rle.dcm", "SC_rgb_jpeg_gdcm.dcm", "libjpeg"),  # JPEG lossless, first-order prediction
])
def test_pydicom_sample_files_decode_like_their_uncompressed_versions(reference, compressed, plugin):
    """Files that ship inside the pydicom package (not fixtures of ours), made by other encoders."""
    if plugin:
        pytest.importorskip(plugin)
    from pydicom.data import get_testdata_file

    paths = [get_testdata_file(name, download=False) for name in (reference, compressed)]
    if None in paths:
        pytest.skip("pydicom's sample files are not installed")
    np.testing.assert_array_equal(load_image(paths[1]), load_image(paths[0]))


def test_deflated_dicom():
    pixels = gen.chest_like_16bit(bits=12)
    np.testing.assert_array_equal(grey(gen.deflated_dicom(pixels)), scale_to_uint8(pixels))


def test_deflate_bomb_is_refused_before_pydicom_inflates_it(monkeypatch):
    monkeypatch.setattr(pneumo_dicom, "MAX_INFLATED_BYTES", 2 << 20)
    with pytest.raises(ImageError, match="unpacks to more than"):
        decode_image(gen.deflate_bomb_dicom(8 << 20))


def test_oversized_jpeg_inside_a_dicom_is_refused():
    # a baseline JPEG header declaring 65535x65535, whatever Rows/Columns say
    header = bytes.fromhex("ffd8 ffc0 000b 08 ffff ffff 01 01 11 00 ffd9")
    data = gen.dicom(transfer_syntax=JPEGBaseline8Bit, encapsulated_frames=[header],
                     frame_shape=(256, 224))
    with pytest.raises(ImageError, match="damaged or incomplete"):
        decode_image(data)


@pytest.mark.parametrize(("syntax", "phrase"), [
    ("1.2.840.10008.1.2.4.100", "MPEG2"),  # known to pydicom, no decoder anywhere
    ("1.2.840.10008.1.2.4.110", "unrecognised transfer syntax"),  # unknown to pydicom 3.0
])
def test_unsupported_transfer_syntax(syntax, phrase):
    data = gen.dicom(transfer_syntax=syntax, encapsulated_frames=[b"\x00\x01garbage" * 10],
                     frame_shape=(256, 224))
    with pytest.raises(ImageError, match="cannot decode") as info:
        decode_image(data)
    assert phrase in str(info.value) and "Explicit VR Little Endian" in str(info.value)


def test_garbage_in_a_supported_compressed_syntax():
    data = gen.dicom(transfer_syntax=JPEGBaseline8Bit, encapsulated_frames=[b"\xff\xd8" + bytes(300)],
                     frame_shape=(256, 224))
    with pytest.raises(ImageError, match="damaged or incomplete"):
        decode_image(data)


# --- damaged, empty, odd files -----------------------------------------------------------------


def test_dicom_document_without_pixel_data():
    data = gen.dicom(image_module=False, sop_class="1.2.840.10008.5.1.4.1.1.88.11")  # Basic Text SR
    with pytest.raises(ImageError, match="holds no image"):
        decode_image(data)


def test_dicom_image_without_pixel_data():
    # issue #20: it has no image at all, so it is not called "damaged or incomplete"
    with pytest.raises(ImageError, match="holds no pixel data") as info:
        decode_image(gen.dicom(with_pixel_data=False))
    assert "damaged" not in str(info.value)


@pytest.mark.parametrize("keep", [0.2, 0.6, 0.99])
def test_truncated_dicom(keep):
    with pytest.raises(ImageError, match="damaged"):
        decode_image(gen.truncated(gen.dicom(), keep))


def test_dicom_header_only():
    with pytest.raises(ImageError, match="damaged"):
        decode_image(gen.dicom()[:140])


def test_tiny_and_huge_dicom_sizes():
    with pytest.raises(ImageError, match="at least 64"):
        decode_image(gen.dicom(np.zeros((32, 32), np.uint16)))
    data = gen.dicom(np.zeros((64, 64), np.uint16), extra={"Rows": 20000, "Columns": 20000})
    with pytest.raises(ImageError, match="too large"):
        decode_image(data)


@pytest.mark.parametrize("file_meta", [True, False], ids=["meta", "bare"])
def test_dicom_without_preamble_is_read(file_meta):
    pixels = gen.chest_like_16bit(bits=12)
    decoded = decode_image(gen.dicom(pixels, preamble=False, file_meta=file_meta))
    np.testing.assert_array_equal(decoded.rgb[..., 0], scale_to_uint8(pixels))
    assert any("Non-standard DICOM" in n for n in decoded.notes)


def test_bytes_that_only_start_like_dicom_are_not_an_image():
    with pytest.raises(ImageError, match="not an image pneumo can read"):
        decode_image(b"\x08\x00\x05\x00CS\x0a\x00" + bytes(range(256)) * 4)


def test_unsupported_photometric_interpretation():
    with pytest.raises(ImageError, match="does not support"):
        decode_image(gen.dicom(RAMP, photometric="HSV"))


# --- privacy ----------------------------------------------------------------------------------

PRIVACY_CASES = {
    "ok": lambda: gen.dicom(),
    "monochrome1": lambda: gen.dicom(photometric="MONOCHROME1", window=(2000, 1000)),
    "multi-frame": lambda: gen.dicom(np.stack([gen.chest_like_16bit()] * 2)),
    "bare": lambda: gen.dicom(preamble=False, file_meta=False),
    "no-pixels": lambda: gen.dicom(with_pixel_data=False),
    "document": lambda: gen.dicom(image_module=False, sop_class="1.2.840.10008.5.1.4.1.1.88.11"),
    "truncated": lambda: gen.truncated(gen.dicom(), 0.5),
    "unsupported": lambda: gen.dicom(transfer_syntax="1.2.840.10008.1.2.4.100",
                                     encapsulated_frames=[b"garbage!"], frame_shape=(256, 224)),
    "bad-photometric": lambda: gen.dicom(RAMP, photometric="HSV"),
    "invalid-values": lambda: gen.dicom(extra={"PatientSex": "not a code string value at all"}),
}


@pytest.mark.parametrize("make", PRIVACY_CASES.values(), ids=PRIVACY_CASES.keys())
def test_no_header_value_reaches_notes_messages_logs_or_warnings(make, caplog):
    data = make()
    assert gen.PATIENT_NAME.encode() in data  # the file does carry them
    said: list[str] = []
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            decoded = decode_image(data)
            said += decoded.notes + [repr(decoded.notes)]
            assert set(vars(decoded)) == {"pixels", "notes", "full_size", "header"}
            # the header is reduced to the scope facts (issue #20): no value is kept as it is
            said.append(repr(decoded.header))
        except ImageError as err:
            said.append(str(err))
            cause = err.__cause__
            while cause is not None:
                said.append(str(cause))
                cause = cause.__cause__
    said += [r.getMessage() for r in caplog.records] + [str(w.message) for w in caught]
    text = "\n".join(said)
    for value in gen.PHI_VALUES:
        assert value not in text
