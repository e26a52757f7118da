"""The one image loader against hostile and odd files: every one is refused with a reason, or
decoded correctly; none crashes, hangs or gets decoded into a made-up picture."""
import io
import os
import re
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import encode
from facet.preprocess import ImageError, ImageRules, ImageTooLarge, PreprocessSpec, load, read_image


def _photo(w=120, h=100) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x * y) % 256], -1).astype(np.uint8)


def test_header_bomb_is_too_large_before_pillow_refuses_it(header_bomb):
    data = header_bomb
    assert len(data) < 100
    # our limit, from the header (Pillow's own check would have raised first, above ~179 MP)
    with pytest.raises(ImageTooLarge, match="900,000,000 pixels, over the pixel limit of 40,000,000"):
        read_image(data)


def test_truncated_jpeg_with_an_end_marker_appended_is_refused():
    data = encode(Image.fromarray(_photo(200, 200)), "JPEG", quality=90)
    with pytest.raises(ImageError, match="truncated or corrupt JPEG"):
        read_image(data[: len(data) // 2] + b"\xff\xd9")
    read_image(data)  # the whole file is fine


def test_junk_before_the_end_marker_is_tolerated():
    """Some cameras leave a few stray bytes before EOI; libjpeg warns but the image is whole."""
    data = encode(Image.fromarray(_photo()), "JPEG", quality=95)
    assert data.endswith(b"\xff\xd9")
    out = read_image(data[:-2] + b"\0\0\0" + b"\xff\xd9")
    np.testing.assert_array_equal(out, read_image(data))


@pytest.mark.parametrize("size,match", [((1, 1), "minimum side"), ((3, 5000), "aspect ratio"),
                                        ((5000, 3), "aspect ratio"), ((15, 40), "minimum side")])
def test_what_cannot_be_a_face_is_refused(size, match):
    data = encode(Image.new("RGB", size, (90, 120, 150)), "PNG")
    with pytest.raises(ImageError, match=match):
        read_image(data)


def test_face_size_and_aspect_rules_are_settings():
    data = encode(Image.new("RGB", (8, 40)), "PNG")
    assert read_image(data, ImageRules(min_side=8, max_aspect=5)).shape == (40, 8, 3)


def test_16_bit_grey_and_colour_pngs_match_their_8_bit_version():
    import cv2
    rgb8 = _photo()
    grey8 = rgb8[..., 0]
    for image16, image8 in ((grey8.astype(np.uint16) * 257, grey8),
                            (rgb8.astype(np.uint16) * 257, rgb8),
                            (np.dstack([rgb8.astype(np.uint16) * 257,
                                        np.full(grey8.shape, 65535, np.uint16)]), rgb8)):
        # OpenCV writes BGR(A); reverse the colour channels so the file holds image8's colours
        bgr16 = image16 if image16.ndim == 2 else np.concatenate(
            [image16[..., 2::-1], image16[..., 3:]], axis=2)
        data = cv2.imencode(".png", bgr16)[1].tobytes()
        assert Image.open(io.BytesIO(data)).mode in ("I;16", "RGB", "RGBA")
        expected = np.repeat(image8[..., None], 3, 2) if image8.ndim == 2 else image8
        got = read_image(data)
        assert np.abs(got.astype(int) - expected).mean() < 1, Image.open(io.BytesIO(data)).mode


def test_gif_and_tiff_are_refused_by_name():
    for fmt in ("GIF", "TIFF"):
        with pytest.raises(ImageError, match=f"{fmt} images are not accepted"):
            read_image(encode(Image.fromarray(_photo()), fmt))


def test_truncated_cmyk_jpeg_is_refused():
    data = encode(Image.fromarray(_photo(200, 200)).convert("CMYK"), "JPEG", quality=90)
    assert read_image(data).shape == (200, 200, 3)
    with pytest.raises(ImageError, match="truncated"):
        read_image(data[: len(data) // 2] + b"\xff\xd9")


def test_only_regular_files_are_opened(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    result: list = []
    worker = threading.Thread(target=lambda: result.append(_error_of(fifo)), daemon=True)
    worker.start()
    worker.join(5)
    assert result and "not a regular file" in result[0]  # refused at once, not blocked
    assert "not a regular file" in _error_of("/dev/zero")
    assert "folder" in _error_of(tmp_path)
    assert _error_of(tmp_path / "missing.jpg") == "file not found"
    assert _error_of("bad\0name.jpg") == "not a valid path"
    link = tmp_path / "link.jpg"
    link.symlink_to("/dev/zero")
    assert "not a regular file" in _error_of(link)  # links are judged by what they name


def test_byte_cap_is_checked_before_reading(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(encode(Image.fromarray(_photo()), "PNG"))
    size = path.stat().st_size
    with pytest.raises(ImageTooLarge, match=f"{size:,} bytes, over the limit"):
        read_image(path, ImageRules(max_bytes=size - 1))
    assert read_image(path, ImageRules(max_bytes=size)).shape == (100, 120, 3)


# the loader's reasons for refusing bytes that are not a whole image (see facet/preprocess.py)
DAMAGE_REASONS = re.compile(r"truncated or corrupt JPEG: |corrupt or truncated image: |"
                            r"corrupt or truncated image header: |not a recognised image \(|"
                            r"image is \d+x\d+: |.* pixels, over the pixel limit")


def test_no_decoder_exception_escapes_the_loader():
    """Random bytes behind real headers, every file cut short: each one is refused with an
    ImageError that names the damage; nothing else escapes and nothing is decoded."""
    rng = np.random.default_rng(0)
    spec = PreprocessSpec(32, 32)
    for fmt in ("JPEG", "PNG", "WEBP", "BMP"):
        data = encode(Image.fromarray(_photo()), fmt)
        assert load(data, spec).shape[:2] == (32, 32)  # the whole file decodes
        decoded, reasons = [], []
        for _ in range(40):
            cut = int(rng.integers(8, len(data)))  # always short of the whole file
            noisy = bytearray(data[:cut])
            for i in rng.integers(0, len(noisy), 4):
                noisy[i] = int(rng.integers(0, 256))
            try:
                load(bytes(noisy), spec)
            except ImageError as exc:
                reasons.append(str(exc))
            else:
                decoded.append(cut)
        assert not decoded, f"{fmt} cut to {decoded} bytes was decoded into a made-up picture"
        unclear = [r for r in reasons if not DAMAGE_REASONS.match(r)]
        assert len(reasons) == 40 and not unclear, (fmt, unclear)


def _error_of(path) -> str:
    try:
        read_image(path)
    except ImageError as exc:
        return str(exc)
    return ""


def test_training_skips_and_counts_what_serving_refuses(tmp_path, header_bomb):
    """The decoded-image cache uses the same loader: the same files fail, for the same reason."""
    from facet.models.cache import build_cache
    good = encode(Image.fromarray(_photo()), "JPEG", quality=90)
    files = {"good.jpg": good, "bomb.png": header_bomb, "dot.png": encode(Image.new("RGB", (1, 1)), "PNG"),
             "cut.jpg": good[: len(good) // 2] + b"\xff\xd9", "text.jpg": b"hello"}
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    spec = PreprocessSpec(32, 32)
    images, bad, _ = build_cache(paths, spec, tmp_path / "cache", workers=2)
    assert [i for i, _ in bad] == [1, 2, 3, 4]
    for (i, message) in bad:
        assert message == f"{paths[i]}: {_error_of(paths[i])}"
    np.testing.assert_array_equal(images[0], load(paths[0], spec))
