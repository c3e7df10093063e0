"""Shared types of the image sources: ``Split`` (one split in host memory), the random-access ``Source`` protocol,
``UnreadableImageError`` (one file that cannot be decoded), and the helpers every source uses: resizing an array
(``resize_array``, ``resize_shorter_and_crop``), a decode error in a few words (``short_reason``) and the check of a
split name (``_check_split``).

Resizing (``image_size=S``): shorter side to ``S`` with PIL bicubic (antialiased when shrinking), longer side
``round(long * S / short)``, then a centre crop to ``S x S`` (offset ``(long - S) // 2``).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

from ssljax.data import decode


class UnreadableImageError(ValueError):
    """One image file that cannot be decoded: ``path`` and a short ``reason``."""

    def __init__(self, path: str, reason: str):
        super().__init__(f'cannot decode image {path}: {reason}')
        self.path, self.reason = path, reason

    def __reduce__(self):  # crosses process boundaries intact (streaming workers)
        return type(self), (self.path, self.reason)


# --------------------------------------------------------------------------------------------------------------------
# In-memory split and the random-access protocol.


class Source(Protocol):
    """Random-access image source used by the streaming loader."""

    name: str

    def __len__(self) -> int: ...

    @property
    def num_classes(self) -> int: ...

    def get(self, indices: Sequence[int]) -> dict: ...


@dataclasses.dataclass
class Split:
    """One split held in host memory.

    Attributes:
      images: uint8 [N, H, W, 3] RGB.
      labels: int32 [N]; -1 for unlabeled examples.
      class_names: names of classes 0..C-1.
      name: '<dataset>:<split>', e.g. 'mnist:train'.
      bad_files: (path, reason) of every file or class folder left out by ``bad_images='skip'``.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str
    bad_files: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(
                f'{self.name}: images must be uint8 [N, H, W, 3], got {self.images.dtype} {self.images.shape}'
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f'{self.name}: labels shape {self.labels.shape} does not match {self.images.shape[0]} images'
            )
        self.labels = self.labels.astype(np.int32, copy=False)
        self.class_names = tuple(self.class_names)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def get(self, indices: Sequence[int]) -> dict:
        """Random access: ``dict(image=images[indices], label=labels[indices])`` (copies)."""
        idx = np.asarray(indices, dtype=np.int64)
        return dict(image=self.images[idx], label=self.labels[idx])

    def record(self, i: int) -> tuple[np.ndarray, int]:
        """One example as the streaming pipeline reads it: (uint8 [H, W, 3] image, label)."""
        return np.asarray(self.images[i]), int(self.labels[i])

    def describe(self, i: int) -> str:
        return f'{self.name}[{i}]'


# --------------------------------------------------------------------------------------------------------------------
# Pixel helpers.


resize_shorter_and_crop = decode.resize_shorter_and_crop


def resize_array(image: np.ndarray, size: int) -> np.ndarray:
    """``resize_shorter_and_crop`` on a uint8 [H, W, 3] array."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(resize_shorter_and_crop(Image.fromarray(image, 'RGB'), size))


_OBJECT_REPR = re.compile(r'\s*<[^<>]* (object )?at 0x[0-9a-fA-F]+>')


def short_reason(e: BaseException, limit: int = 120) -> str:
    """A decode error in a few words, without the in-memory objects PIL names (``<_io.BytesIO object at 0x..>``)."""
    from PIL import UnidentifiedImageError  # pylint: disable=import-outside-toplevel

    if isinstance(e, UnidentifiedImageError):
        return 'not an image format PIL can identify'
    if isinstance(e, FileNotFoundError):
        return 'file disappeared while reading'
    if isinstance(e, OSError) and e.strerror:
        return f'{type(e).__name__}: {e.strerror}'
    text = ' '.join(_OBJECT_REPR.sub('', str(e)).split())
    text = f'{type(e).__name__}: {text}' if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + '...'


def _check_split(dataset: str, split: str, valid: Sequence[str]) -> None:
    if split not in valid:
        raise ValueError(f'unknown split {split!r} for dataset {dataset!r}; valid splits: {", ".join(valid)}')
