"""pneumo.images: any bytes give an RGB uint8 image or an ImageError that says what to do."""

from __future__ import annotations

import io
import struct
import zlib

import imagegen as gen
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, features

from pneumo import config
from pneumo.images import (
    DecodedImage,
    ImageError,
    decode_image,
    gray_to_rgb,
    is_dicom,
    load_image,
    scale_to_uint8,
    to_model_input,
)

OK = None  # expectation: decodes; otherwise a phrase the ImageError message must contain

# Key phrases of the user-facing messages.
EMPTY = "empty (0 bytes)"
NOT_IMAGE = "not an image pneumo can read"
INCOMPLETE = "incomplete"
DAMAGED = "damaged"
TOO_LARGE = "too large to open safely"
TOO_SMALL = f"at least {config.MIN_IMAGE_SIDE} pixels"
ELONGATED = "far too elongated"


def _png_with_bad_crc() -> bytes:
    data = bytearray(gen.png())
    data[29] ^= 0xFF  # last byte of the IHDR CRC
    return bytes(data)


def _png_with_broken_idat() -> bytes:
    data = bytearray(gen.png())
    start = data.index(b"IDAT") + 40
    data[start:start + 64] = bytes(64)
    body_start = data.index(b"IDAT")  # keep the CRC valid so only the zlib stream is wrong
    length = struct.unpack(">I", data[body_start - 4:body_start])[0]
    body = bytes(data[body_start:body_start + 4 + length])
    data[body_start + 4 + length:body_start + 8 + length] = struct.pack(">I", zlib.crc32(body))
    return bytes(data)


def _jpeg_with_garbage_after_soi() -> bytes:
    return b"\xff\xd8\xff" + bytes(range(256)) * 8


def _ico() -> bytes:
    return gen.encode(Image.fromarray(gen.chest_like(64, 64)), "ICO")


def _eps() -> bytes:
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 300 300\nshowpage\n"


def _uniform() -> bytes:
    return gen.png(np.full((100, 100), 77, np.uint8))


# (id, file factory, expectation, note phrase expected on success)
CORPUS = [
    # empty, not an image, other formats
    ("empty", lambda: b"", EMPTY, None),
    ("text-named-png", lambda: b"this is definitely not a chest x-ray\n" * 20, NOT_IMAGE, None),
    ("random-bytes", lambda: np.random.default_rng(1).bytes(5000), NOT_IMAGE, None),
    ("one-byte", lambda: b"\x89", NOT_IMAGE, None),
    ("pdf", lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "PDF document", None),
    ("zip", lambda: b"PK\x03\x04" + bytes(200), "ZIP archive", None),
    ("gzip", lambda: b"\x1f\x8b\x08\x00" + bytes(100), "gzip", None),
    ("heic", lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(100), "HEIC", None),
    ("jpeg2000", lambda: b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(100), "JPEG 2000", None),
    ("html", lambda: b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "text (HTML", None),
    ("eps-not-run", _eps, NOT_IMAGE, None),
    ("ico-not-allowed", _ico, NOT_IMAGE, None),
    # truncated and damaged
    ("jpeg-cut-10pc", lambda: gen.truncated(gen.jpeg(), 0.1), INCOMPLETE, None),
    ("jpeg-cut-50pc", lambda: gen.truncated(gen.jpeg(), 0.5), INCOMPLETE, None),
    ("jpeg-cut-95pc", lambda: gen.truncated(gen.jpeg(), 0.95), INCOMPLETE, None),
    ("jpeg-no-eoi", lambda: gen.jpeg()[:-2], INCOMPLETE, None),
    ("jpeg-progressive-cut", lambda: gen.truncated(gen.jpeg(progressive=True), 0.6), INCOMPLETE, None),
    ("png-cut-50pc", lambda: gen.truncated(gen.png(), 0.5), INCOMPLETE, None),
    ("png-cut-95pc", lambda: gen.truncated(gen.png(), 0.95), INCOMPLETE, None),
    ("png-header-only", lambda: gen.png()[:33], INCOMPLETE, None),
    ("png16-cut", lambda: gen.truncated(gen.png16(), 0.7), INCOMPLETE, None),
    ("gif-cut", lambda: gen.truncated(gen.animated_gif(1), 0.5), INCOMPLETE, None),
    ("tiff-cut", lambda: gen.truncated(gen.multipage_tiff(1), 0.5), INCOMPLETE, None),
    ("bmp-cut", lambda: gen.truncated(gen.encode(gen.chest_like(), "BMP"), 0.5), INCOMPLETE, None),
    ("png-bad-crc", _png_with_bad_crc, DAMAGED, None),
    ("png-broken-zlib", _png_with_broken_idat, DAMAGED, None),
    ("jpeg-garbage", _jpeg_with_garbage_after_soi, DAMAGED, None),
    # sizes
    ("bomb-30000px", lambda: gen.png_declaring(30000, 30000), TOO_LARGE, None),
    ("bomb-just-over", lambda: gen.png_declaring(9000, 9000), TOO_LARGE, None),
    ("bomb-16bit-rgba", lambda: gen.png_declaring(60000, 60000, 16, 6), TOO_LARGE, None),
    ("tiny-1x1", lambda: gen.png(np.zeros((1, 1), np.uint8)), TOO_SMALL, None),
    ("tiny-32x32", lambda: gen.png(gen.chest_like(32, 32)), TOO_SMALL, None),
    ("tiny-63-high", lambda: gen.png(gen.chest_like(63, 200)), TOO_SMALL, None),
    ("strip-wide", lambda: gen.png(gen.chest_like(64, 300)), ELONGATED, None),
    ("strip-tall", lambda: gen.png(gen.chest_like(400, 80)), ELONGATED, None),
    ("zero-width-header", lambda: gen.png_declaring(0, 100), DAMAGED, None),
    # decodable edge cases
    ("png-gray", lambda: gen.png(), OK, None),
    ("png-rgb", lambda: gen.png(gen.rgb(gen.chest_like())), OK, None),
    ("jpeg-gray", lambda: gen.jpeg(), OK, None),
    ("jpeg-rgb", lambda: gen.jpeg(gen.rgb(gen.chest_like())), OK, None),
    ("jpeg-progressive", lambda: gen.jpeg(progressive=True), OK, None),
    ("png-16bit", gen.png16, OK, None),
    ("png-palette", lambda: gen.palette_png(False), OK, None),
    ("png-palette-transparent", lambda: gen.palette_png(True), OK, "Transparent"),
    ("png-rgba", gen.rgba_png, OK, "Transparent"),
    ("png-rgba-opaque", lambda: gen.rgba_png(255), OK, None),
    ("png-la", gen.la_png, OK, None),
    ("jpeg-cmyk", gen.cmyk_jpeg, OK, None),
    ("gif-animated", gen.animated_gif, OK, "3 frames/pages; only the first"),
    ("tiff-multipage", gen.multipage_tiff, OK, "3 frames/pages; only the first"),
    ("tiff-float", gen.float_tiff, OK, None),
    ("tiff-float-nan-inf", lambda: gen.float_tiff(True), OK, None),
    ("tiff-16bit", lambda: gen.encode(Image.fromarray(gen.chest_like_16bit()), "TIFF"), OK, None),
    ("png-1bit", gen.one_bit_png, OK, None),
    ("bmp", lambda: gen.encode(gen.rgb(gen.chest_like()), "BMP"), OK, None),
    ("jpeg-exif-rotated", lambda: gen.jpeg(exif_orientation=6), OK, None),
    ("png-without-iend", lambda: gen.png()[:-12], OK, None),
    ("smallest-allowed", lambda: gen.png(gen.chest_like(64, 64)), OK, None),
    ("widest-allowed", lambda: gen.png(gen.chest_like(64, 256)), OK, None),
    ("blank", _uniform, OK, "blank"),
]
if features.check("webp"):
    CORPUS.append(("webp", lambda: gen.encode(gen.chest_like(), "WEBP", lossless=True), OK, None))
    CORPUS.append(("webp-cut", lambda: gen.truncated(gen.encode(gen.chest_like(), "WEBP"), 0.5),
                   DAMAGED, None))


@pytest.mark.parametrize(("make", "expected", "note"), [c[1:] for c in CORPUS],
                         ids=[c[0] for c in CORPUS])
def test_corpus(make, expected, note):
    data = make()
    if expected is OK:
        model_input = load_image(data)
        assert model_input.shape == (config.IMAGE_SIZE, config.IMAGE_SIZE, 3)
        assert model_input.dtype == np.uint8
        decoded = decode_image(data)
        _assert_valid(decoded)
        if note is None:
            assert decoded.notes == []
        else:
            assert any(note in n for n in decoded.notes), decoded.notes
    else:
        with pytest.raises(ImageError) as info:
            load_image(data)
        _assert_user_message(str(info.value))
        assert expected in str(info.value)


def _assert_valid(decoded: DecodedImage) -> None:
    rgb = decoded.rgb
    assert isinstance(rgb, np.ndarray)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert min(rgb.shape[:2]) >= config.MIN_IMAGE_SIDE
    assert rgb.flags.c_contiguous and rgb.flags.writeable
    assert all(isinstance(n, str) and n for n in decoded.notes)


def _assert_user_message(message: str) -> None:
    """A sentence for a person: says what is wrong and what to do, no Python internals."""
    assert len(message) > 30 and message.endswith(".")
    for internal in ("Traceback", "Error:", "<_io.", "errno", "PIL", "numpy"):
        assert internal not in message


# --- specific conversions -------------------------------------------------------------------


def test_16bit_png_is_stretched_to_full_range():
    values = np.linspace(1000, 3000, 100 * 120).reshape(100, 120).astype(np.uint16)
    decoded = decode_image(gen.png16(values))
    assert Image.open(io.BytesIO(gen.png16(values))).mode.startswith("I")
    assert decoded.rgb.min() == 0 and decoded.rgb.max() == 255
    np.testing.assert_array_equal(decoded.rgb[..., 0], scale_to_uint8(values))


def test_float_tiff_is_stretched_and_non_finite_values_are_tolerated():
    values = np.asarray(Image.open(io.BytesIO(gen.float_tiff())))
    np.testing.assert_array_equal(decode_image(gen.float_tiff()).rgb[..., 0], scale_to_uint8(values))
    rgb = decode_image(gen.float_tiff(with_non_finite=True)).rgb
    assert rgb[0, 0, 0] == 0 and rgb[0, 1, 0] == 255 and rgb[1, 0, 0] == 0  # nan, +inf, -inf


@pytest.mark.parametrize(("orientation", "turn"), [
    (1, lambda a: a),
    (3, lambda a: np.rot90(a, 2)),
    (6, lambda a: np.rot90(a, -1)),  # stored rotated: displayed turned 90 degrees clockwise
    (8, lambda a: np.rot90(a, 1)),
    (2, np.fliplr),
])
def test_exif_orientation_is_applied(orientation, turn):
    marker = np.full((160, 96), 40, np.uint8)
    marker[:40, :30] = 230  # bright top-left corner
    decoded = decode_image(gen.jpeg(marker, exif_orientation=orientation)).rgb[..., 0]
    expected = turn(marker)
    assert decoded.shape == expected.shape
    assert np.abs(decoded.astype(int) - expected).mean() < 4


def test_exif_orientation_6_turns_the_image():
    marker = gen.quadrant_marker(128)
    rgb = decode_image(gen.jpeg(marker, exif_orientation=6)).rgb
    assert rgb[:64, 64:].mean() > 200  # the bright top-left quadrant is now top-right
    assert rgb[:64, :64].mean() < 80


def test_palette_transparency_becomes_black():
    gray = np.full((80, 80), 200, np.uint8)
    gray[:40] = 10
    image = Image.fromarray(gray).convert("P")
    index = image.getpixel((0, 0))
    rgb = decode_image(gen.encode(image, "PNG", transparency=index)).rgb
    assert (rgb[:40] == 0).all() and (rgb[40:] == 200).all()


def test_cmyk_jpeg_keeps_its_grey_levels():
    rgb = decode_image(gen.cmyk_jpeg()).rgb
    assert np.abs(rgb.astype(int) - gen.rgb(gen.chest_like())).mean() < 6


def test_one_bit_image_is_black_and_white():
    rgb = decode_image(gen.one_bit_png()).rgb
    assert set(np.unique(rgb)) == {0, 255}


@pytest.mark.parametrize("make", [gen.animated_gif, gen.multipage_tiff], ids=["gif", "tiff"])
def test_multi_frame_files_give_the_first_frame(make):
    decoded = decode_image(make(3))
    np.testing.assert_array_equal(decoded.rgb[..., 0], gen.frame(0))
    assert "only the first" in decoded.notes[0]


def test_truncated_files_are_refused_even_if_pil_was_told_to_load_them(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    for data in (gen.truncated(gen.jpeg(), 0.6), gen.truncated(gen.png(), 0.6)):
        with pytest.raises(ImageError, match=INCOMPLETE):
            decode_image(data)


def test_bomb_is_refused_from_the_header_without_decoding(monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for width, height in ((30000, 30000), (9000, 9000), (200000, 500)):
        with pytest.raises(ImageError, match=TOO_LARGE):
            decode_image(gen.png_declaring(width, height))


def test_file_over_the_upload_limit_is_refused(monkeypatch):
    data = gen.png()
    monkeypatch.setattr(config, "MAX_UPLOAD_MB", len(data) / 2**20 / 2)
    with pytest.raises(ImageError, match="reads files up to"):
        decode_image(data)


def test_bytes_like_input_is_accepted():
    data = gen.png()
    expected = decode_image(data).rgb
    for variant in (bytearray(data), memoryview(data)):
        np.testing.assert_array_equal(decode_image(variant).rgb, expected)


def test_image_error_is_a_value_error():
    assert issubclass(ImageError, ValueError)


def test_is_dicom():
    assert is_dicom(gen.dicom())
    assert not is_dicom(gen.png())
    assert not is_dicom(b"")
    assert not is_dicom(gen.dicom(preamble=False))


# --- helpers --------------------------------------------------------------------------------


def test_scale_to_uint8():
    np.testing.assert_array_equal(scale_to_uint8(np.array([[0, 2048, 4096]])), [[0, 128, 255]])
    np.testing.assert_array_equal(scale_to_uint8(np.array([[-5.0, 5.0]])), [[0, 255]])
    assert scale_to_uint8(np.full((3, 3), 7)).tolist() == np.zeros((3, 3), np.uint8).tolist()
    assert scale_to_uint8(np.full((2, 2), np.nan)).max() == 0
    assert scale_to_uint8(np.array([[np.nan, 1.0, 3.0]])).tolist() == [[0, 0, 255]]
    assert scale_to_uint8(np.zeros((0, 4))).shape == (0, 4)


def test_gray_to_rgb():
    gray = gen.chest_like(70, 80)
    rgb = gray_to_rgb(gray)
    assert rgb.shape == (70, 80, 3) and rgb.dtype == np.uint8
    assert all((rgb[..., c] == gray).all() for c in range(3))


def test_to_model_input_is_identity_at_224():
    rgb = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    out = to_model_input(rgb)
    assert out.dtype == np.uint8 and out.shape == (224, 224, 3)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("shape", [(64, 64), (100, 80), (256, 224), (225, 224), (500, 300),
                                   (64, 256), (1000, 900)])
def test_to_model_input_resizes_any_size(shape):
    rgb = gen.rgb(gen.chest_like(*shape))
    out = to_model_input(rgb)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert abs(float(out.mean()) - float(rgb.mean())) < 8  # a stretch, not a crop or a pad


def test_to_model_input_accepts_greyscale_and_rejects_other_arrays():
    assert to_model_input(gen.chest_like(100, 100)).shape == (224, 224, 3)
    with pytest.raises(ValueError):
        to_model_input(np.zeros((100, 100, 3), np.float32))


@pytest.mark.parametrize(("suffix", "make"), [
    (".png", gen.png), (".jpg", gen.jpeg), (".tif", gen.multipage_tiff), (".dcm", gen.dicom),
    (".png", gen.png16),
])
def test_path_and_bytes_give_the_same_array(tmp_path, suffix, make):
    data = make()
    path = tmp_path / f"xray{suffix}"
    path.write_bytes(data)
    from_bytes = load_image(data)
    np.testing.assert_array_equal(load_image(path), from_bytes)
    np.testing.assert_array_equal(load_image(str(path)), from_bytes)


def test_missing_path_raises_os_error(tmp_path):
    with pytest.raises(OSError):
        load_image(tmp_path / "missing.png")


# --- property-based: nothing but an image or an ImageError ---------------------------------

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def _image_or_image_error(data: bytes) -> None:
    try:
        decoded = decode_image(data)
    except ImageError as err:
        assert str(err)
        return
    _assert_valid(decoded)
    assert to_model_input(decoded.rgb).shape == (224, 224, 3)


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data):
    _image_or_image_error(data)


MAGIC = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"GIF87a", b"II*\x00", b"MM\x00*", b"BM",
         b"RIFF\x00\x00\x00\x00WEBPVP8 ", bytes(128) + b"DICM", b"\x08\x00\x05\x00CS", b"\x02\x00\x00\x00"]


@FUZZ
@given(st.sampled_from(MAGIC), st.binary(max_size=2048))
def test_bytes_that_start_like_an_image(magic, tail):
    _image_or_image_error(magic + tail)


_SMALL = gen.chest_like(96, 96)
SEEDS = {
    "png": gen.png(_SMALL),
    "png16": gen.png16(gen.chest_like_16bit(96, 96)),
    "jpeg": gen.jpeg(_SMALL),
    "jpeg-progressive": gen.jpeg(_SMALL, progressive=True),
    "jpeg-exif": gen.jpeg(_SMALL, exif_orientation=6),
    "gif": gen.encode(_SMALL, "GIF"),
    "tiff": gen.encode(_SMALL, "TIFF"),
    "dicom": gen.dicom(gen.chest_like_16bit(96, 96), window=(2000, 3000)),
    "dicom-jpeg": gen.dicom_jpeg_baseline(_SMALL),
    "dicom-deflated": gen.deflated_dicom(gen.chest_like_16bit(96, 96)),
    "dicom-bare": gen.dicom(gen.chest_like_16bit(96, 96), preamble=False, file_meta=False),
}


@st.composite
def mutated(draw):
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "byte", "delete", "insert", "truncate", "copy"]))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "truncate":
            del data[pos:]
        else:  # duplicate a chunk of the file elsewhere (chunk and marker confusion)
            start = draw(st.integers(0, len(data) - 1))
            data[pos:pos] = data[start:start + draw(st.integers(1, 256))]
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_valid_files(data):
    _image_or_image_error(data)
