"""Input images of DreamLLM: PIL modes the image processor would misread, greyscale arrays, and opening files."""

import os
from typing import BinaryIO

import numpy as np
import PIL.Image
import torch
import transformers.image_utils

# Integer greyscale modes PIL converts to RGB by clipping at 255 (white): their values span 0-65535 (16-bit PNG, TIFF).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def image_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """`image` in RGB, with 16-bit greyscale scaled from 0-65535 to 0-255 (PIL's own `convert` clips it to white)."""
    if image.mode in SIXTEEN_BIT_MODES:
        levels = np.asarray(image, dtype=np.float64) / 257
        image = PIL.Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def open_image(source: str | os.PathLike | BinaryIO, name: str | None = None) -> PIL.Image.Image:
    """
    The image file `source` (a path or a binary file) in RGB, see [`image_to_rgb`].

    Raises:
        `OSError`: naming the file (`name`, or `source`) when it cannot be read, including a decompression bomb (an
            image of more pixels than `PIL.Image.MAX_IMAGE_PIXELS` allows).
    """
    name = name or str(source)
    try:
        with PIL.Image.open(source) as image:
            return image_to_rgb(image)
    except PIL.Image.DecompressionBombError as error:
        raise OSError(f"cannot read image {name}: it is too large ({error})") from error
    except (OSError, ValueError, SyntaxError) as error:
        raise OSError(f"cannot read image {name}: {error}") from error


def load_image(source: str | os.PathLike | PIL.Image.Image) -> PIL.Image.Image:
    """
    An image in RGB from a PIL image (see [`image_to_rgb`]), a local file (see [`open_image`]) or, for a string that
    names no file, from what `transformers.image_utils.load_image` reads (a URL or a base64 image).
    """
    if isinstance(source, PIL.Image.Image):
        return image_to_rgb(source)
    if isinstance(source, os.PathLike) or (isinstance(source, str) and os.path.isfile(source)):
        return open_image(source)
    return transformers.image_utils.load_image(source)


def prepare_images(images, argument: str = "images"):
    """
    `images` (one image, or nested lists of them) ready for the CLIP image processor: PIL images, image files and
    URLs in RGB (see [`image_to_rgb`] and [`load_image`]), 2-D greyscale arrays and tensors repeated to three
    channels, other arrays unchanged.

    Raises:
        `TypeError`: naming the entry (`images[1]`) that is `None` or of another type.
        `OSError`: naming an image file that cannot be read.
        `ValueError`: naming an array or tensor entry that has no image shape.
    """
    if isinstance(images, (list, tuple)):
        return [prepare_images(image, f"{argument}[{index}]") for index, image in enumerate(images)]
    if images is None:
        raise TypeError(f"{argument} is None; give a PIL image, a numpy array or a torch tensor")
    if isinstance(images, PIL.Image.Image):
        return image_to_rgb(images)
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return _array_with_channels(images, argument)
    if isinstance(images, (str, os.PathLike)):
        return load_image(images)
    raise TypeError(
        f"{argument} must be a PIL image, a numpy array, a torch tensor or a path, got {type(images).__name__}"
    )


def _array_with_channels(array: np.ndarray | torch.Tensor, argument: str) -> np.ndarray | torch.Tensor:
    """A greyscale `(height, width)` array as `(height, width, 3)`, a tensor as `(3, height, width)`; others as given."""
    if not 2 <= array.ndim <= 4:
        raise ValueError(
            f"{argument} has shape {tuple(array.shape)}; an image is (height, width), (height, width, channels) or "
            "(channels, height, width)"
        )
    if array.ndim > 2:
        return array
    if isinstance(array, torch.Tensor):
        return array.unsqueeze(0).expand(3, -1, -1)
    return np.repeat(array[..., None], 3, axis=-1)


__all__ = ["SIXTEEN_BIT_MODES", "image_to_rgb", "load_image", "open_image", "prepare_images"]
