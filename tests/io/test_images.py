"""read_grayscale: one output convention whatever the file format, and a clear error for every bad file."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageFile
from synthetic import png_claiming

from covidct.errors import InputError
from covidct.io.images import read_grayscale

HEIGHT, WIDTH = 40, 56  # not square, so a transposed result cannot pass


def gray_content() -> np.ndarray:
    """(HEIGHT, WIDTH) uint8: a smooth gradient with a bright ellipse (JPEG keeps it nearly intact)."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    gradient = 20 + 180 * xx / (WIDTH - 1)
    ellipse = ((xx - 28) / 14) ** 2 + ((yy - 20) / 10) ** 2 <= 1
    return np.where(ellipse, 230, gradient).round().astype(np.uint8)


def _gray_palette() -> list[int]:
    return [value for level in range(256) for value in (level, level, level)]


def _palette_image(gray: np.ndarray) -> Image.Image:
    image = Image.frombytes("P", (gray.shape[1], gray.shape[0]), gray.tobytes())
    image.putpalette(_gray_palette())
    return image


def _opaque(gray: np.ndarray, channels: int) -> np.ndarray:
    return np.dstack([gray] * channels + [np.full_like(gray, 255)])


# (id, file name, image from the gray content, save options, largest allowed |difference| from gray / 255)
FORMATS: list[tuple[str, str, Callable[[np.ndarray], Image.Image], dict, float]] = [
    ("png-L", "slice.png", lambda g: Image.fromarray(g, mode="L"), {}, 1e-6),
    ("png-RGB", "slice.png", lambda g: Image.fromarray(np.dstack([g] * 3), mode="RGB"), {}, 1 / 255 + 1e-6),
    ("png-RGBA", "slice.png", lambda g: Image.fromarray(_opaque(g, 3), mode="RGBA"), {}, 1 / 255 + 1e-6),
    ("png-P-palette", "slice.png", _palette_image, {}, 1 / 255 + 1e-6),
    ("png-I16", "slice.png", lambda g: Image.fromarray(g.astype(np.uint16) * 257), {}, 1e-6),
    ("png-LA", "slice.png", lambda g: Image.fromarray(_opaque(g, 1), mode="LA"), {}, 1 / 255 + 1e-6),
    ("jpeg", "slice.jpg", lambda g: Image.fromarray(g, mode="L"), {"quality": 95}, 0.08),
    (
        "jpeg-RGB",
        "slice.jpeg",
        lambda g: Image.fromarray(np.dstack([g] * 3), mode="RGB"),
        {"quality": 95},
        0.08,
    ),
    ("bmp", "slice.bmp", lambda g: Image.fromarray(g, mode="L"), {}, 1e-6),
    ("tiff", "slice.tif", lambda g: Image.fromarray(g, mode="L"), {}, 1e-6),
    ("tiff-RGB", "slice.tiff", lambda g: Image.fromarray(np.dstack([g] * 3), mode="RGB"), {}, 1 / 255 + 1e-6),
]


@pytest.mark.parametrize(
    ("name", "make", "options", "tolerance"),
    [case[1:] for case in FORMATS],
    ids=[case[0] for case in FORMATS],
)
def test_every_format_gives_the_same_unit_gray_array(tmp_path, name, make, options, tolerance):
    gray = gray_content()
    path = tmp_path / name
    make(gray).save(path, **options)

    result = read_grayscale(path)

    assert result.dtype == np.float32
    assert result.shape == (HEIGHT, WIDTH)
    assert result.min() >= 0.0
    assert result.max() <= 1.0
    assert np.abs(result - gray / 255.0).max() <= tolerance


def test_lossy_jpeg_stays_close_on_average(tmp_path):
    gray = gray_content()
    Image.fromarray(gray, mode="L").save(tmp_path / "slice.jpg", quality=95)

    assert np.abs(read_grayscale(tmp_path / "slice.jpg") - gray / 255.0).mean() < 0.01


def test_transparent_pixels_are_composited_on_black(tmp_path):
    rgba = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:, : WIDTH // 2, 3] = 255  # left half opaque white, right half fully transparent white
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "half.png")

    result = read_grayscale(tmp_path / "half.png")

    assert result[:, : WIDTH // 2].min() == 1.0
    assert result[:, WIDTH // 2 :].max() == 0.0


def test_16_bit_images_are_scaled_by_their_type_range_not_per_image(tmp_path):
    Image.fromarray(np.full((HEIGHT, WIDTH), 6553, np.uint16)).save(tmp_path / "dim16.png")

    assert read_grayscale(tmp_path / "dim16.png") == pytest.approx(
        np.full((HEIGHT, WIDTH), 0.1, np.float32), abs=1e-4
    )


def _truncated_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8), mode="L").save(
        buffer, format="PNG"
    )
    data = buffer.getvalue()
    return data[: len(data) // 2]


def _tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (20, 31)).save(buffer, format="PNG")
    return buffer.getvalue()


def _several_frames(format_name: str) -> bytes:
    """Three slices in one file (a multi-page TIFF, an animated PNG), as some viewers export a stack."""
    frames = [Image.fromarray(np.full((64, 64), 40 * (i + 1), np.uint8), mode="L") for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=format_name, save_all=True, append_images=frames[1:])
    return buffer.getvalue()


# (id, file name, bytes to write or None for no file, expected message)
BAD_FILES = [
    ("empty-file", "empty.png", b"", "empty file"),
    ("truncated-png", "cut.png", _truncated_png(), "cannot decode image"),
    (
        "text-named-png",
        "notes.png",
        b"patient notes, not an image\n",
        "not a readable PNG, JPEG, BMP or TIFF image",
    ),
    ("under-32-px", "tiny.png", _tiny_png(), "20x31 pixels; expected at least 32 on each side"),
    (
        "over-pixel-limit",
        "huge.png",
        png_claiming(9000, 9000),
        "9000x9000 pixels, over the 64,000,000-pixel limit",
    ),
    ("decompression-bomb", "bomb.png", png_claiming(100_000, 100_000), "10000000000 pixels"),
    ("missing-file", "absent.png", None, "file not found"),
    ("multi-page-tiff", "stack.tif", _several_frames("TIFF"), "TIFF file with 3 frames; covidct reads one"),
    ("animated-png", "stack.png", _several_frames("PNG"), "PNG file with 3 frames; covidct reads one"),
]


@pytest.mark.parametrize(
    ("name", "content", "message"), [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES]
)
def test_bad_files_raise_input_error_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)

    with pytest.raises(InputError, match=message) as raised:
        read_grayscale(path)

    assert raised.value.path == str(path)


def test_a_jpeg_with_extra_pictures_is_read_as_its_first(tmp_path):
    """An MPO JPEG's further pictures are previews or stereo views of the first, not more slices."""
    first, preview = (Image.fromarray(np.full((64, 64), v, np.uint8)).convert("RGB") for v in (100, 200))
    first.save(tmp_path / "slice.jpg", format="MPO", save_all=True, append_images=[preview])

    assert read_grayscale(tmp_path / "slice.jpg").mean() == pytest.approx(100 / 255, abs=2 / 255)


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(InputError, match="is a directory, expected an image file"):
        read_grayscale(tmp_path)


def test_accepts_str_paths(tmp_path):
    Image.fromarray(gray_content(), mode="L").save(tmp_path / "slice.png")

    assert read_grayscale(str(tmp_path / "slice.png")).shape == (HEIGHT, WIDTH)


@pytest.mark.parametrize(
    ("width", "height"), [(9000, 9000), (100_000, 100_000)], ids=["over-pixel-limit", "decompression-bomb"]
)
def test_huge_headers_are_refused_before_decoding(tmp_path, monkeypatch, width, height):
    """The size is checked from the header: decoding a 10-gigapixel image would not
    return in time or memory."""
    path = tmp_path / "huge.png"
    path.write_bytes(png_claiming(width, height))

    def fail_load(self):
        raise AssertionError("the pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail_load)
    with pytest.raises(InputError, match=f"{width * height} pixels|{width}x{height} pixels"):
        read_grayscale(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [case[1:] for case in BAD_FILES if case[2] is not None],
    ids=[case[0] for case in BAD_FILES if case[2] is not None],
)
def test_uploaded_bytes_get_the_same_errors_as_files(name, content, message):
    with pytest.raises(InputError, match=message) as raised:
        read_grayscale((name, content))

    assert raised.value.path == name


def test_uploaded_bytes_decode_like_the_file(tmp_path):
    Image.fromarray(gray_content(), mode="L").save(tmp_path / "slice.png")

    np.testing.assert_array_equal(
        read_grayscale(("slice.png", (tmp_path / "slice.png").read_bytes())),
        read_grayscale(tmp_path / "slice.png"),
    )


def test_the_pixel_cap_is_configurable(tmp_path):
    Image.fromarray(gray_content(), mode="L").save(tmp_path / "slice.png")

    with pytest.raises(InputError, match=r"slice\.png: image is 56x40 pixels, over the 2,000-pixel limit"):
        read_grayscale(tmp_path / "slice.png", max_pixels=2000)


def _saved_as(pillow_format: str, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray_content()).convert(mode).save(buffer, format=pillow_format)
    return buffer.getvalue()


# Formats the README does not list, each under a name that claims PNG (issue 15): Pillow decodes them all when
# asked without formats=, and hands PostScript to Ghostscript.
OTHER_FORMATS = [
    ("EPS", "L"),
    ("SGI", "L"),
    ("TGA", "L"),
    ("PCX", "L"),
    ("ICO", "RGBA"),
    ("WEBP", "RGB"),
    ("GIF", "L"),
    ("PPM", "L"),
]


@pytest.mark.parametrize(("pillow_format", "mode"), OTHER_FORMATS, ids=[f for f, _ in OTHER_FORMATS])
def test_formats_other_than_the_readme_lists_are_refused_under_any_name(tmp_path, pillow_format, mode):
    content = _saved_as(pillow_format, mode)
    path = tmp_path / "scan.png"
    path.write_bytes(content)

    for source in (path, ("scan.png", content)):
        with pytest.raises(InputError, match=r"scan.png: not a readable PNG, JPEG, BMP or TIFF image$"):
            read_grayscale(source)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_a_float_tiff_with_non_finite_pixels_is_refused_naming_the_file(tmp_path, bad):
    pixels = np.linspace(0, 1, HEIGHT * WIDTH, dtype=np.float32).reshape(HEIGHT, WIDTH)
    pixels[3, 5] = bad
    path = tmp_path / "float.tif"
    Image.fromarray(pixels, mode="F").save(path)

    with pytest.raises(
        InputError, match=r"float.tif: float image with NaN or infinite pixels; expected finite gray levels$"
    ):
        read_grayscale(path)
