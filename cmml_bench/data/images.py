"""Image loading and the constant image used in place of a missing one."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from cmml_bench.data.errors import DataError

# The openclipart PNGs include a few images above Pillow's default limit of
# about 89 million pixels; they are drawings, not decompression bombs.
MAX_IMAGE_PIXELS = 400_000_000

WHITE = (255, 255, 255)


def load_rgb(path: str | Path) -> Image.Image:
    """Load an image as RGB, compositing any transparency onto a white background.

    Palette and grey images with alpha are converted through RGBA first, so
    their transparent pixels become white rather than black.
    """
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, MAX_IMAGE_PIXELS)
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb_on_white(image)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot read image {path}: {error}; replace or remove the file") from error


def _to_rgb_on_white(image: Image.Image) -> Image.Image:
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if not has_alpha:
        return image.convert("RGB")

    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, WHITE + (255,))
    background.alpha_composite(rgba)
    return background.convert("RGB")


def check_image(path: Path) -> str | None:
    """Return None when Pillow can open and verify the file, else the reason it cannot."""
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, MAX_IMAGE_PIXELS)
    if not path.is_file():
        return "missing file"
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as error:
        return f"unreadable image ({error})"
    return None


def missing_image(size: int | tuple[int, int]) -> Image.Image:
    """Return the constant image used for a sample whose image is missing: white RGB.

    The image is white before normalisation, so after the backbone's
    normalisation its tensor is whatever white maps to. NOTE: MAP instead sets
    the already-normalised pixel tensor to ones, so the two conventions give
    different model inputs. A backbone that follows MAP must set the tensor
    itself instead of using this image.
    """
    if isinstance(size, int):
        size = (size, size)
    return Image.new("RGB", size, WHITE)
