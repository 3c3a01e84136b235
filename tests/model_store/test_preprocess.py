"""Any image a client may send becomes the eval tensor, and hostile bytes are refused early."""

import io

import numpy as np
import pytest
from PIL import Image

from model_store import ImageError, ImageTooLarge, decode_image, eval_transform, preprocess_bytes
from tests.conftest import TINY_PRE, png_header


def _encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize(
    "img, fmt",
    [
        (Image.new("L", (40, 30), 128), "PNG"),
        (Image.new("RGB", (30, 50), (10, 200, 30)), "JPEG"),
        (Image.new("RGBA", (20, 20), (0, 0, 0, 0)), "PNG"),
        (Image.new("P", (20, 24)), "GIF"),
        (Image.new("CMYK", (20, 20), (0, 255, 0, 0)), "JPEG"),
        (Image.new("I;16", (20, 20), 65535), "PNG"),
        (Image.new("RGB", (25, 20), (1, 2, 3)), "WEBP"),
        (Image.new("RGB", (25, 20), (1, 2, 3)), "BMP"),
    ],
)
def test_every_mode_becomes_a_normalised_rgb_tensor(img: Image.Image, fmt: str) -> None:
    x = preprocess_bytes(_encode(img, fmt), TINY_PRE, max_pixels=10_000)
    assert x.shape == (3, 16, 16) and x.dtype == np.float32 and np.isfinite(x).all()


def test_sixteen_bit_white_stays_white_and_alpha_goes_on_white() -> None:
    white16 = decode_image(_encode(Image.new("I;16", (4, 4), 65535)), 100)
    assert np.asarray(white16).min() == 255
    clear = decode_image(_encode(Image.new("RGBA", (4, 4), (0, 0, 0, 0))), 100)
    assert np.asarray(clear).min() == 255


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    decoded = decode_image(_encode(img, "JPEG", exif=exif), 10_000)
    assert decoded.size == (20, 40)


def test_eval_transform_resizes_shorter_side_and_centre_crops() -> None:
    arr = np.zeros((36, 72, 3), dtype=np.uint8)
    arr[:, 36:] = 255  # right half white
    x = eval_transform(Image.fromarray(arr), TINY_PRE)
    assert x.shape == (3, 16, 16)
    assert x[0, :, :7].max() < x[0, :, 9:].min()


@pytest.mark.parametrize(
    "data, error",
    [
        (b"", "empty body"),
        (b"definitely not an image", "not a readable image"),
        (_encode(Image.new("RGB", (64, 64)), "PNG")[:60], "corrupt or truncated"),
    ],
)
def test_bad_bytes_are_refused(data: bytes, error: str) -> None:
    with pytest.raises(ImageError, match=error):
        decode_image(data, 10_000)


def test_pixel_bomb_is_refused_before_decoding() -> None:
    bomb = _encode(Image.new("L", (4000, 4000)), "PNG", optimize=True)
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLarge, match="4000x4000"):
        decode_image(bomb, max_pixels=1_000_000)


def test_a_bomb_past_pillows_own_guard_is_too_large_not_unreadable() -> None:
    """Pillow refuses headers over 2 x MAX_IMAGE_PIXELS itself; that is still 'too large'."""
    with pytest.raises(ImageTooLarge, match="too many pixels"):
        decode_image(png_header(20_000, 20_000), max_pixels=10**9)
