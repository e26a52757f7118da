import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import encode
from facet.preprocess import (ImageError, ImageRules, ImageTooLarge, PreprocessSpec, decode_faces,
                              load, normalize, read_image, resize)


def _gradient(w=80, h=60) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 128)], -1).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
def test_formats_decode_to_rgb(fmt):
    rgb = _gradient()
    out = read_image(encode(Image.fromarray(rgb), fmt, **({"quality": 95} if fmt == "JPEG" else {})))
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 4  # RGB order kept (not BGR)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA"])
def test_other_modes_become_rgb(mode):
    image = Image.fromarray(_gradient()).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = read_image(encode(image, fmt))
    assert out.shape == (60, 80, 3)


def test_transparent_pixels_become_white():
    rgba = np.zeros((20, 20, 4), np.uint8)
    out = read_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (out == 255).all()


def test_exif_orientation_is_honoured():
    rgb = _gradient(80, 60)
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    for fmt in ("JPEG", "PNG"):
        out = read_image(encode(image, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {})))
        assert out.shape == (80, 60, 3)
        np.testing.assert_allclose(out.astype(int), np.rot90(rgb, -1).astype(int), atol=12)


@pytest.mark.parametrize("data,match", [(b"", "empty"), (b"hello world", "not a recognised"),
                                        (b"\xff\xd8\xff\xe0" + b"\0" * 20, "truncated|corrupt|not a recognised")])
def test_garbage_is_refused(data, match):
    with pytest.raises(ImageError, match=match):
        read_image(data)


def test_truncated_jpeg_and_png_are_refused():
    rgb = _gradient(200, 200)
    for fmt in ("JPEG", "PNG"):
        data = encode(Image.fromarray(rgb), fmt)
        with pytest.raises(ImageError, match="truncated|corrupt"):
            read_image(data[: len(data) * 2 // 3])


def test_pixel_limit_refuses_before_decoding():
    data = encode(Image.new("RGB", (1000, 1000)), "PNG")
    with pytest.raises(ImageTooLarge, match="1,000,000 pixels"):
        read_image(data, ImageRules(max_pixels=999_999))
    assert read_image(data, ImageRules(max_pixels=1_000_000)).shape == (1000, 1000, 3)


def test_reduced_decoding_of_large_jpegs_keeps_the_picture(tmp_path):
    rgb = cv2.resize(_gradient(80, 60), (1600, 1200))
    path = tmp_path / "big.jpg"
    path.write_bytes(encode(Image.fromarray(rgb), "JPEG", quality=95))
    small = read_image(path, decode_side=100)
    assert small.shape == (150, 200, 3)  # 1/8 scale still has >= 100 px on the short side
    spec = PreprocessSpec(64, 64)
    np.testing.assert_allclose(load(path, spec).astype(int), resize(read_image(path), spec).astype(int),
                               atol=6)


def test_resize_takes_height_then_width():
    out = resize(_gradient(80, 60), PreprocessSpec(height=30, width=50))
    assert out.shape == (30, 50, 3)
    letter = resize(_gradient(80, 40), PreprocessSpec(40, 40, resize_mode="letterbox"))
    assert letter.shape == (40, 40, 3)
    assert (letter[:10] == 0).all() and (letter[-10:] == 0).all() and letter[20].any()


def test_normalize_layout_and_values():
    spec = PreprocessSpec(2, 3, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 255, 0, 51
    out = normalize(img[None], spec)
    assert out.shape == (1, 3, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, 0, 0], [1.0, -1.0, 0.2], atol=1e-6)
    np.testing.assert_array_equal(normalize(img, spec), out[0])


def test_spec_round_trip_and_validation():
    spec = PreprocessSpec(96, 64, "letterbox", (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError):
        PreprocessSpec(resize_mode="crop")


def test_normalize_matches_the_plain_formula_bit_for_bit():
    # Models trained before normalize() was made faster must see exactly the same inputs.
    spec = PreprocessSpec(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    images = np.random.default_rng(0).integers(0, 256, (5, 17, 23, 3), dtype=np.uint8)
    scale = (1.0 / (255.0 * np.asarray(spec.std, np.float32))).astype(np.float32)
    bias = (-np.asarray(spec.mean, np.float32) / np.asarray(spec.std, np.float32)).astype(np.float32)
    expected = (images.astype(np.float32) * scale + bias).transpose(0, 3, 1, 2)
    out = normalize(images, spec)
    assert out.flags.c_contiguous and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_allclose(out, (images / 255.0 - spec.mean).transpose(0, 3, 1, 2)
                               / np.asarray(spec.std)[:, None, None], atol=1e-5)


def test_one_decode_gives_each_spec_exactly_what_load_gives_it(tmp_path):
    rgb = cv2.resize(_gradient(80, 60), (1600, 1200))
    path = tmp_path / "big.jpg"
    path.write_bytes(encode(Image.fromarray(rgb), "JPEG", quality=95))
    specs = [PreprocessSpec(40, 40), PreprocessSpec(160, 160, "letterbox"), PreprocessSpec(48, 64)]
    for spec, image in decode_faces(path, specs).inputs[0].items():  # JPEG scales 1/8, 1/4, 1/8
        np.testing.assert_array_equal(image, load(path, spec))
