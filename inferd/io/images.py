"""Image decoding and preprocessing: untrusted bytes in, the tensor a model expects out.

Decoding is where hostile input meets native code, so every failure Pillow can
raise is turned into an `InvalidImage` that tells the caller what was wrong, and
the pixel count is checked from the header before any pixel data is decoded.
"""

from __future__ import annotations

import io
import os
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from inferd.errors import ImageTooLarge, InvalidImage, InvalidInput
from inferd.manifest import Manifest
from inferd.types import ImageType

DEFAULT_MAX_PIXELS = 40_000_000

ImageSource = bytes | bytearray | memoryview | str | os.PathLike[str] | Image.Image

# Restricting Pillow to these plugins keeps the attack surface small: without the
# list Image.open also tries formats such as EPS, which shells out to Ghostscript.
# The JPEG plugin also opens the multi-picture (MPO) JPEGs that many phones write.
_PILLOW_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_SUPPORTED = "JPEG, PNG, WebP, GIF, BMP and TIFF"
# The same formats as media types, for the API document's image fields.
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff")
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255)
_BASE64 = re.compile(rb"(data:image/|[A-Za-z0-9+/]{16,}=*$)")
# What Pillow raises from plugins and decoders on data that is corrupt or cut short.
_CORRUPT = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


def decode_image(data: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an upload, a file or an already open image into an upright RGB image.

    `str` and path-like values are file paths, never base64: guessing would turn a
    mistyped path into a confusing decoding error. Only the first frame of
    animations and multi-page TIFFs is used, since models take a single picture.
    """
    if isinstance(data, Image.Image):
        _check_pixels(data.size, max_pixels)
        with _decoding_errors(max_pixels):
            return _to_rgb(_load_upright(data))
    with _binary_stream(data) as stream, _decoding_errors(max_pixels):
        try:
            image = Image.open(stream, formats=_PILLOW_FORMATS)
        except UnidentifiedImageError:
            stream.seek(0)
            raise InvalidImage(
                f"not an image inferd can decode: supported formats are {_SUPPORTED}; {_describe(stream.read(32))}"
            ) from None
        with image:
            _check_pixels(image.size, max_pixels)
            return _to_rgb(_load_upright(image))


def to_tensor(image: Image.Image, spec: ImageType) -> np.ndarray:
    """Resize, reorder and normalise a picture into one float32 input (no batch dimension).

    The pixels stay uint8 through every reordering (views only) and are converted
    to float32 exactly once, by the multiplication that applies `scale`.
    """
    if spec.color_layout != "GRAY":
        image = _to_rgb(image)
    elif image.mode != "L":
        image = _to_rgb(image).convert("L")
    pixels = np.asarray(_resize(image, spec))
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    if spec.color_layout == "BGR":
        pixels = pixels[:, :, ::-1]
    scale = np.asarray(spec.scale, dtype=np.float32).reshape(-1)
    bias = np.asarray(spec.bias, dtype=np.float32).reshape(-1)
    if spec.channel_layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
        scale, bias = scale[:, np.newaxis, np.newaxis], bias[:, np.newaxis, np.newaxis]
    tensor = np.multiply(pixels, scale, dtype=np.float32, order="C")
    tensor += bias
    return tensor


def preprocess_image(data: ImageSource, spec: ImageType, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode and convert in one call, the path every image request takes."""
    return to_tensor(decode_image(data, max_pixels=max_pixels), spec)


@contextmanager
def _binary_stream(data: bytes | bytearray | memoryview | str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open the source ourselves so that a bad path is told apart from bad image data."""
    if isinstance(data, (str, os.PathLike)):
        path = os.fsdecode(data)
        try:
            file = open(path, "rb")  # noqa: SIM115 -- closed by the `with` below
        except FileNotFoundError:
            raise InvalidImage(f"no image file at {path!r:.300}: check the path") from None
        except OSError as error:
            raise InvalidImage(f"cannot read image file {path!r:.300}: {error.strerror}") from None
        with file:
            if os.fstat(file.fileno()).st_size == 0:
                raise InvalidImage(f"empty image: the file {path!r:.300} has 0 bytes")
            yield file
        return
    if memoryview(data).nbytes == 0:
        raise InvalidImage("empty image: the upload has 0 bytes; send the image file's contents as the body")
    yield io.BytesIO(data)


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """Refuse from the header alone, before the pixels cost memory and time."""
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} ({width * height / 1e6:.1f} megapixels); "
            f"the limit is {max_pixels / 1e6:.1f} megapixels — send a smaller image"
        )


def _over_pillow_limit(max_pixels: int) -> ImageTooLarge:
    """Explain Pillow's own bomb guard, which fires inside Image.open before we see the size.

    Pillow's limit is left alone: it is process-wide state that other threads rely on.
    """
    pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return ImageTooLarge(
        f"image is over {pillow_limit / 1e6:.1f} megapixels; the limit is "
        f"{min(max_pixels, pillow_limit) / 1e6:.1f} megapixels — send a smaller image"
    )


def _load_upright(image: Image.Image) -> Image.Image:
    """Decode the pixels now, so corrupt data fails inside `decode_image`, and apply the EXIF orientation."""
    image.load()
    if image.getexif().get(ExifTags.Base.Orientation, 1) == 1:
        return image
    return ImageOps.exif_transpose(image)


@contextmanager
def _decoding_errors(max_pixels: int) -> Iterator[None]:
    """Turn what Pillow raises on hostile or damaged data into errors the caller can act on."""
    try:
        yield
    except Image.DecompressionBombError:
        raise _over_pillow_limit(max_pixels) from None
    except _CORRUPT as error:
        raise InvalidImage(f"could not decode image: the data is truncated or corrupt ({error})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Bring any Pillow mode to 8-bit RGB the way a viewer would show it."""
    if image.mode in _ALPHA_MODES or (image.mode in ("P", "L", "RGB") and "transparency" in image.info):
        return _over_white(image.convert("RGBA"))
    if image.mode == "RGB":
        return image
    if image.mode == "F" or image.mode.startswith("I"):
        image = _to_8bit(image)
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise InvalidImage(f"cannot convert a {image.mode} image to RGB ({error})") from None


def _over_white(image: Image.Image) -> Image.Image:
    """Composite over white: transparent regions of logos and scans are paper, not black."""
    background = Image.new("RGB", image.size, _WHITE)
    background.paste(image, mask=image.getchannel("A"))
    return background


def _to_8bit(image: Image.Image) -> Image.Image:
    """Map 16-bit, 32-bit and float greyscale onto 0..255.

    16-bit modes use their full range; for `I` and `F`, whose range the file does
    not state, values already in 0..255 (or 0..1 for floats) are kept, 16-bit
    looking data is scaled like I;16, and anything else is stretched min to max.
    """
    pixels = np.nan_to_num(np.asarray(image, dtype=np.float32))
    low, high = float(pixels.min()), float(pixels.max())
    if image.mode.startswith("I;16") or (low >= 0 and 255 < high <= 65535):
        pixels /= 257
    elif image.mode == "F" and low >= 0 and high <= 1:
        pixels *= 255
    elif low < 0 or high > 255:
        pixels = (pixels - low) * (255 / (high - low))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _resize(image: Image.Image, spec: ImageType) -> Image.Image:
    """Resize like torchvision's Resize + CenterCrop, or stretch, to the model's input size."""
    if spec.resize == "stretch":
        return _bicubic(image, (spec.width, spec.height))
    width, height = _cover_size(image.size, spec)
    left = round((width - spec.width) / 2)
    top = round((height - spec.height) / 2)
    # Resample only the source region that the crop keeps: the same pixels as resizing
    # the whole picture then cropping (within one level), in half the time.
    x_scale, y_scale = image.width / width, image.height / height
    box = (left * x_scale, top * y_scale, (left + spec.width) * x_scale, (top + spec.height) * y_scale)
    return _bicubic(image, (spec.width, spec.height), box)


def _cover_size(size: tuple[int, int], spec: ImageType) -> tuple[int, int]:
    """Shorter side to size / crop_fraction, with torchvision's rounding so accuracy matches training code.

    For non-square inputs the result is widened where needed so the crop never
    falls outside the image.
    """
    width, height = size
    short = round(min(spec.height, spec.width) / spec.crop_fraction)
    if width <= height:
        width, height = short, int(short * height / width)
    else:
        width, height = int(short * width / height), short
    return max(width, spec.width), max(height, spec.height)


def _bicubic(image: Image.Image, size: tuple[int, int],
             box: tuple[float, float, float, float] | None = None) -> Image.Image:
    """Bicubic resize of `box` (the whole picture by default); reducing_gap first shrinks big photos by an
    integer factor, which is much faster."""
    if image.size == size and box in (None, (0, 0, *size)):
        return image
    return image.resize(size, Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)


def _describe(head: bytes) -> str:
    """Say what the bytes look like, since a wrong payload is usually text: JSON, HTML or base64."""
    if not head:
        return "the data is empty"
    if all(32 <= byte < 127 or byte in b"\t\n\r" for byte in head):
        hint = "; if it is base64, decode it and send the raw bytes" if _BASE64.match(head.strip()) else ""
        return f"the first bytes look like text ({head.decode('ascii')!r}){hint}"
    return f"the first bytes are {head[:8].hex(' ')}"


def image_input(manifest: Manifest, *, hint: str | None = None, name: str | None = None) -> ImageType:
    """The one image input of an image model, or an error whose `hint` says what the caller should send instead
    (by default: tensors through the V2 protocol). `name` is the one the caller knows the model by, a server's
    URL name, which need not be the package's own."""
    name = name or manifest.name
    images = [spec for spec in manifest.inputs if isinstance(spec, ImageType)]
    if len(images) != 1 or len(manifest.inputs) != 1:
        hint = hint or f"send tensors to /v2/models/{name}/infer"
        raise InvalidInput(f"model {name!r} does not take a single image; {hint}")
    return images[0]
