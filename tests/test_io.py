"""inferd.io on real photographs encoded in every supported format, and on the inputs that break decoders."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from inferd.errors import ImageTooLarge, InvalidImage, InvalidInput
from inferd.io import (
    DEFAULT_MAX_PIXELS,
    Prediction,
    decode_image,
    preprocess_image,
    softmax,
    to_tensor,
    top_k,
)
from inferd.types import ImageType

PHOTOS = {"chelsea": skdata.chelsea(), "coffee": skdata.coffee(), "astronaut": skdata.astronaut()}
FORMATS = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]
LOSSLESS = {"PNG", "BMP", "TIFF"}


def encode(image: Image.Image | np.ndarray, fmt: str, **options: object) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def spec(**overrides: object) -> ImageType:
    fields: dict[str, object] = {"name": "image", "shape": (1, 3, 224, 224)}
    fields.update(overrides)
    return ImageType.model_validate(fields)


def png_of_zeros(width: int, height: int) -> bytes:
    """A valid 1-bit PNG written row by row, so a huge image costs kilobytes and no pixel buffer."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# --- decoding -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", PHOTOS)
def test_decode_every_format_gives_rgb_of_the_right_size(name: str, fmt: str) -> None:
    pixels = PHOTOS[name]
    image = decode_image(encode(pixels, fmt))
    assert image.mode == "RGB"
    assert image.size == (pixels.shape[1], pixels.shape[0])
    if fmt in LOSSLESS:
        assert np.array_equal(np.asarray(image), pixels)


def test_decode_accepts_bytes_like_paths_and_images(tmp_path: Path) -> None:
    payload = encode(PHOTOS["chelsea"], "PNG")
    file = tmp_path / "chelsea.png"
    file.write_bytes(payload)
    sources: list[object] = [payload, bytearray(payload), memoryview(payload), str(file), file, Image.open(file)]
    for source in sources:
        image = decode_image(source)  # type: ignore[arg-type]
        assert image.mode == "RGB"
        assert np.array_equal(np.asarray(image), PHOTOS["chelsea"])


def test_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (32, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    payload = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert np.asarray(decode_image(payload))[8, 16].tolist() == [255, 0, 0]


def test_exif_orientation_is_applied() -> None:
    pixels = PHOTOS["chelsea"].copy()
    pixels[:40, :40] = (255, 0, 0)  # a red mark in the stored top-left corner
    stored = Image.fromarray(pixels)
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    image = decode_image(encode(stored, "JPEG", exif=exif.tobytes(), quality=95))
    assert image.size == (pixels.shape[0], pixels.shape[1])
    red, green, blue = np.asarray(image)[10, -10].astype(int)  # the mark is now top-right
    assert red > 200 and green < 60 and blue < 60


def test_transparency_is_composited_over_white() -> None:
    rgba = np.zeros((20, 40, 4), dtype=np.uint8)
    rgba[:, 20:] = (255, 0, 0, 255)  # left half fully transparent (and black), right half opaque red
    for payload in (encode(rgba, "PNG"), encode(Image.fromarray(rgba), "WEBP", lossless=True)):
        decoded = np.asarray(decode_image(payload))
        assert decoded[10, 5].tolist() == [255, 255, 255]
        assert decoded[10, 30].tolist() == [255, 0, 0]


def test_palette_transparency_and_grey_alpha_are_composited_over_white() -> None:
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0])
    palette.paste(1, (5, 0, 10, 10))
    decoded = np.asarray(decode_image(encode(palette, "GIF", transparency=0)))
    assert decoded[5, 2].tolist() == [255, 255, 255]
    assert decoded[5, 7].tolist() == [0, 255, 0]

    grey_alpha = Image.fromarray(np.dstack([np.full((4, 4), 50, np.uint8), np.zeros((4, 4), np.uint8)]), "LA")
    assert np.asarray(decode_image(encode(grey_alpha, "PNG"))).min() == 255


def test_cmyk_and_greyscale_give_rgb() -> None:
    cmyk = decode_image(encode(Image.fromarray(PHOTOS["coffee"]).convert("CMYK"), "JPEG"))
    assert (cmyk.mode, cmyk.size) == ("RGB", (600, 400))

    grey = skdata.camera()
    decoded = np.asarray(decode_image(encode(grey, "PNG")))
    assert decoded.shape == (*grey.shape, 3)
    assert all(np.array_equal(decoded[:, :, c], grey) for c in range(3))


def test_high_bit_depth_greyscale_is_scaled_to_8_bits() -> None:
    sixteen = Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16))
    assert np.asarray(decode_image(encode(sixteen, "PNG")))[0, :, 0].tolist() == [0, 100, 255]

    unit_floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(decode_image(encode(unit_floats, "TIFF")))[0, :, 0].tolist() == [0, 128, 255]

    wide_floats = Image.fromarray(np.array([[-1000.0, 0.0, 1000.0]], dtype=np.float32))
    assert np.asarray(decode_image(encode(wide_floats, "TIFF")))[0, :, 0].tolist() == [0, 128, 255]


# --- bad input ------------------------------------------------------------------------------------------------------


def test_empty_upload() -> None:
    with pytest.raises(InvalidImage, match="empty image: the upload has 0 bytes"):
        decode_image(b"")


def test_text_is_recognised_as_text() -> None:
    with pytest.raises(InvalidImage, match="JPEG, PNG, WebP, GIF, BMP and TIFF") as error:
        decode_image(b"hello this is text")
    assert "look like text ('hello this is text')" in error.value.message
    assert "base64" not in error.value.message


def test_base64_gets_a_hint() -> None:
    with pytest.raises(InvalidImage, match="if it is base64, decode it"):
        decode_image(base64.b64encode(encode(PHOTOS["chelsea"], "JPEG")))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_data(fmt: str) -> None:
    payload = encode(PHOTOS["astronaut"], fmt)
    with pytest.raises(InvalidImage, match="truncated or corrupt"):
        decode_image(payload[: len(payload) // 2])


def test_random_bytes() -> None:
    noise = np.random.default_rng(0).bytes(4096)
    with pytest.raises(InvalidImage, match="first bytes are") as error:
        decode_image(noise)
    assert type(error.value) is InvalidImage


def test_formats_outside_the_list_are_refused() -> None:
    with pytest.raises(InvalidImage, match="not an image inferd can decode"):
        decode_image(encode(PHOTOS["chelsea"], "PPM"))


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLarge, match="megapixels — send a smaller image") as error:
        decode_image(png_of_zeros(20_000, 20_000))
    assert error.value.status_code == 413


def test_pixel_limit_is_checked_from_the_header() -> None:
    assert DEFAULT_MAX_PIXELS < 8000 * 6000
    with pytest.raises(ImageTooLarge) as error:
        decode_image(png_of_zeros(8000, 6000))
    assert error.value.message == (
        "image is 8000x6000 (48.0 megapixels); the limit is 40.0 megapixels — send a smaller image"
    )
    with pytest.raises(ImageTooLarge, match="451x300"):
        decode_image(encode(PHOTOS["chelsea"], "PNG"), max_pixels=100_000)
    with pytest.raises(ImageTooLarge):
        decode_image(Image.new("RGB", (10, 10)), max_pixels=99)


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match=r"no image file at .*missing\.jpg"):
        decode_image(tmp_path / "missing.jpg")
    with pytest.raises(InvalidImage, match="cannot read image file"):
        decode_image(str(tmp_path))
    (tmp_path / "empty.png").touch()
    with pytest.raises(InvalidImage, match="empty image"):
        decode_image(tmp_path / "empty.png")


# --- tensors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "shape"),
    [
        ({}, (3, 224, 224)),
        ({"shape": (1, 224, 224, 3), "channel_layout": "NHWC"}, (224, 224, 3)),
        ({"shape": (1, 1, 224, 224), "color_layout": "GRAY", "bias": (0.0,)}, (1, 224, 224)),
        ({"shape": (1, 3, 224, 448)}, (3, 224, 448)),
        ({"shape": (-1, 3, 160, 120), "resize": "stretch"}, (3, 160, 120)),
    ],
)
def test_tensor_shapes(overrides: dict[str, object], shape: tuple[int, ...]) -> None:
    tensor = to_tensor(decode_image(encode(PHOTOS["chelsea"], "PNG")), spec(**overrides))
    assert tensor.shape == shape
    assert tensor.dtype == np.float32
    assert tensor.flags.c_contiguous


def test_bgr_is_reversed_rgb() -> None:
    image = decode_image(encode(PHOTOS["coffee"], "PNG"))
    rgb = to_tensor(image, spec())
    bgr = to_tensor(image, spec(color_layout="BGR"))
    assert np.array_equal(bgr, rgb[::-1])
    nhwc = to_tensor(image, spec(shape=(1, 224, 224, 3), channel_layout="NHWC", color_layout="BGR"))
    assert np.array_equal(nhwc, rgb[::-1].transpose(1, 2, 0))


def test_scale_and_bias_are_exact() -> None:
    solid = Image.new("RGB", (300, 200), (127, 127, 127))
    tensor = to_tensor(solid, spec(scale=1 / 128, bias=(-127 / 128,) * 3))
    assert np.all(tensor == 0.0)

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    imagenet = spec(
        shape=(1, 224, 224, 3),
        channel_layout="NHWC",
        resize="stretch",
        scale=tuple(1 / (255 * s) for s in std),
        bias=tuple(-m / s for m, s in zip(mean, std, strict=True)),
    )
    pixels = PHOTOS["astronaut"][:224, :224]
    expected = (pixels / 255 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(to_tensor(Image.fromarray(pixels), imagenet), expected, atol=1e-5)


def test_center_crop_keeps_the_centre() -> None:
    pixels = np.zeros((300, 400, 3), dtype=np.uint8)
    pixels[:, :140] = (0, 255, 0)
    pixels[:, 140:260] = (255, 0, 0)
    pixels[:, 260:] = (0, 0, 255)
    tensor = to_tensor(Image.fromarray(pixels), spec(scale=1 / 255, bias=(0.0,)))
    assert np.allclose(tensor[:, 112, 112], (1, 0, 0))  # centre: red
    assert np.allclose(tensor[:, 112, 0], (0, 1, 0))  # crop edges stay inside the side bands
    assert np.allclose(tensor[:, 112, 223], (0, 0, 1))


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_center_crop_matches_resize_then_crop(name: str) -> None:
    """Only the kept region is resampled; the pixels must be those of torchvision's Resize then CenterCrop."""
    image = Image.fromarray(PHOTOS[name])
    short = round(224 / 0.875)
    scale = short / min(image.size)
    width, height = max(224, int(image.width * scale)), max(224, int(image.height * scale))
    if image.width <= image.height:
        width = short
    else:
        height = short
    resized = image.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = round((width - 224) / 2), round((height - 224) / 2)
    expected = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float32).transpose(2, 0, 1)
    tensor = to_tensor(image, spec(scale=1.0, bias=(0.0,), crop_fraction=0.875))
    assert np.abs(tensor - expected).max() <= 1.0


def test_preprocess_is_decode_then_to_tensor() -> None:
    payload = encode(PHOTOS["astronaut"], "JPEG")
    expected = to_tensor(decode_image(payload), spec())
    assert np.array_equal(preprocess_image(payload, spec()), expected)


# --- classification -------------------------------------------------------------------------------------------------


def test_top_k_ranks_known_logits() -> None:
    logits = np.array([[1.0, 3.0, 2.0, 0.0], [0.5, 0.0, 5.0, 1.0]], dtype=np.float32)
    ranked = top_k(logits, ["a", "b", "c", "d"], k=3)
    assert [[p.label for p in row] for row in ranked] == [["b", "c", "a"], ["c", "d", "a"]]
    exps = np.exp([3.0, 2.0, 1.0])
    np.testing.assert_allclose([p.probability for p in ranked[0]], exps / (exps.sum() + 1), rtol=1e-6)
    assert all(sum(p.probability for p in row) <= 1 for row in ranked)
    assert ranked[0][0].as_dict() == {"label": "b", "index": 1, "probability": ranked[0][0].probability}
    assert isinstance(ranked[0][0].probability, float)


def test_top_k_vector_clamp_and_unlabelled() -> None:
    ranked = top_k(np.array([0.1, 0.7, 0.2]), [], k=10, activation="none")
    assert ranked == [[Prediction("1", 1, 0.7), Prediction("2", 2, 0.2), Prediction("0", 0, 0.1)]]


def test_top_k_sigmoid() -> None:
    ranked = top_k(np.array([[0.0, 800.0, -800.0]]), ["x", "y", "z"], k=3, activation="sigmoid")
    assert [(p.label, p.probability) for p in ranked[0]] == [("y", 1.0), ("x", 0.5), ("z", 0.0)]


def test_top_k_errors() -> None:
    with pytest.raises(InvalidInput, match="4 class scores but 3 labels"):
        top_k(np.zeros((1, 4)), ["a", "b", "c"])
    with pytest.raises(InvalidInput, match="k must be ≥ 1"):
        top_k(np.zeros((1, 4)), [], k=0)
    with pytest.raises(InvalidInput, match="shape"):
        top_k(np.zeros((2, 2, 2)), [])


def test_softmax_is_stable() -> None:
    probabilities = softmax(np.array([1000.0, 1001.0, 1002.0]))
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities, softmax(np.array([0.0, 1.0, 2.0])))
    np.testing.assert_allclose(softmax(np.array([[1, 2], [3, 4]]), axis=0).sum(axis=0), [1.0, 1.0])
