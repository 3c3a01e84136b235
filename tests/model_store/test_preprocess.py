"""Any image a client may send becomes the eval tensor, and hostile bytes are refused early."""

import io

import numpy as np
import pytest
from PIL import Image

from model_store import (
    ImageError,
    ImageTooLarge,
    Preprocess,
    decode_image,
    eval_pixels,
    eval_transform,
    normalize,
    preprocess_bytes,
)
from model_store.preprocess import to_rgb
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


def test_sixteen_bit_rescaling_keeps_its_values_for_every_level() -> None:
    """The in-place rescaling gives every 16-bit level the grey of the expression it replaced
    (arr / 65535 * 255 + 0.5, clipped, truncated)."""
    levels = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    grey = np.asarray(decode_image(_encode(Image.fromarray(levels)), 70_000))[..., 0]
    expected = np.clip(levels / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(grey, expected)


def test_an_rgb_image_is_not_copied() -> None:
    """A 40 MP photo is 160 MB: each needless full copy adds that to the decode's peak."""
    img = Image.new("RGB", (8, 6))
    assert to_rgb(img) is img


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


def test_a_large_jpeg_decodes_at_reduced_scale_close_to_the_full_decode() -> None:
    coarse = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    photo = Image.fromarray(coarse).resize((1600, 1200), Image.Resampling.BILINEAR)
    data = _encode(photo, "JPEG", quality=90)
    full, small = decode_image(data, 10**7), decode_image(data, 10**7, min_side=36)
    assert full.size == (1600, 1200) and small.size == (200, 150)  # 1/8: both sides still >= 36
    pre = Preprocess(36, 32, (0.5,) * 3, (0.25,) * 3)
    a, b = eval_pixels(full, pre).astype(int), eval_pixels(small, pre).astype(int)
    assert np.abs(a - b).max() <= 4  # grey levels, after resize and crop
    # the server's path takes the reduced decode
    np.testing.assert_array_equal(
        preprocess_bytes(data, pre, 10**7), normalize(eval_pixels(small, pre), pre)
    )
    # a PNG has no reduced decode: min_side changes nothing
    png = _encode(photo.resize((400, 300)))
    assert decode_image(png, 10**7, min_side=36).size == (400, 300)
