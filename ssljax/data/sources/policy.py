"""Which datasets there are, their sizes, and how each is fed: into host memory (``load_split``) or read on demand
(``open_source``).

``DATASETS`` maps each dataset name to the loader of one split (``embedded``, ``folders``, ``tfds``);
``DATASET_SHAPES`` gives each one's image size and class count (0: from the data), an image folder's size being the
median shorter side of its images, at most ``FOLDER_MAX_SIDE``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ssljax.data.sources.base import Split
from ssljax.data.sources.embedded import _load_digits, _load_mnist
from ssljax.data.sources.folders import FolderSource, _load_image_folder, report_problems
from ssljax.data.sources.scan import BAD_IMAGES_MODES
from ssljax.data.sources.tfds import TFDS_DATASETS, TfdsSource, _tfds_loader

# Image size and class count of each dataset; 0 means "from the data" (an image folder's classes are its subfolders,
# its size the median shorter side of its images, at most FOLDER_MAX_SIDE).
DATASET_SHAPES = {
    'mnist': dict(image_size=28, num_classes=10),
    'digits': dict(image_size=8, num_classes=10),
    'cifar10': dict(image_size=32, num_classes=10),
    'cifar100': dict(image_size=32, num_classes=100),
    'stl10': dict(image_size=96, num_classes=10),
    'imagenet2012': dict(image_size=224, num_classes=1000),
    'image_folder': dict(image_size=0, num_classes=0),
}
FOLDER_MAX_SIDE = 224


DATASETS: dict[str, Callable[..., Split]] = {
    'mnist': _load_mnist,
    'digits': _load_digits,
    'image_folder': _load_image_folder,
    **{name: _tfds_loader(name) for name in TFDS_DATASETS},
}


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f'unknown dataset {dataset!r}; valid names: {", ".join(sorted(DATASETS))}')


def _check_image_size(image_size) -> None:
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size <= 0
    ):
        raise ValueError(f'image_size must be a positive int or None, got {image_size!r}')


def load_split(
    dataset: str,
    split: str,
    data_dir: str | None = None,
    image_size: int | None = None,
    *,
    cache_dir: str | None = None,
    num_workers: int | None = None,
    bad_images: str = 'error',
    bad_images_report: str | None = None,
) -> Split:
    """Loads one split of ``dataset`` into host memory as uint8 RGB images and int32 labels.

    Args:
      dataset: a key of ``DATASETS``.
      split: 'train' or 'test' (stl10 also 'unlabeled', 'train+unlabeled'; imagenet2012 'test' reads 'validation').
      data_dir: image-folder root or tfds data_dir (unused by 'mnist' and 'digits').
      image_size: resize every image to image_size x image_size (shorter side bicubic + centre crop); None keeps the
        stored size and requires all images to share it.
      cache_dir: image_folder and tfds datasets: the decoded arrays (.npy images + .npz labels/class names) keyed by
        sha256(root or dataset, split, image_size, class names, every file's relative path, size and mtime_ns), so a
        second load skips decoding.
      num_workers: decode threads (default one per core, at most 16).
      bad_images: image_folder only: 'error' stops with BadImagesError listing every unreadable file and empty class
        folder; 'skip' warns with the count and leaves them out (listed in the result's ``bad_files``).
      bad_images_report: image_folder only: a file that receives the full list (``<path>\t<reason>`` lines).

    Raises:
      BadImagesError: unreadable images or empty class folders with bad_images='error' (a ValueError).
      ValueError: unknown dataset/split, empty split folder, size mismatch.
      FileNotFoundError: missing data_dir or split folder, or tfds data not prepared (names the path).
    """
    _check_dataset(dataset)
    _check_image_size(image_size)
    if bad_images not in BAD_IMAGES_MODES:
        raise ValueError(f"bad_images must be 'error' or 'skip', got {bad_images!r}")
    if cache_dir is not None and dataset not in ('image_folder', *TFDS_DATASETS):
        raise ValueError(f'cache_dir is supported for image_folder and tfds datasets only, not {dataset!r}')
    kwargs = dict(num_workers=num_workers)
    if cache_dir is not None:
        kwargs['cache_dir'] = cache_dir
    if dataset == 'image_folder':
        kwargs.update(bad_images=bad_images, bad_images_report=bad_images_report)
    return DATASETS[dataset](split, data_dir=data_dir, image_size=image_size, **kwargs)


def open_source(
    dataset: str,
    split: str,
    data_dir: str | None = None,
    image_size: int | None = None,
    *,
    num_workers: int | None = None,
    bad_images: str = 'error',
):
    """Random-access source with ``__len__``, ``num_classes``, ``get(indices) -> dict(image, label)`` (decoded at
    ``image_size``) and, for the streaming pipeline, ``record(i) -> (encoded bytes or uint8 array, label)`` and
    ``describe(i)`` (the file's path, or ``dataset:split[i]``).

    tfds datasets and image folders decode on demand (for data that does not fit in memory, e.g. imagenet2012, where
    ``image_size`` is needed since its images differ in size); 'mnist' and 'digits' return the in-memory Split.
    An image folder opened this way is not decoded in advance: ``bad_images`` applies to its empty class folders
    in advance, and to an unreadable file when ``get`` meets it: 'error' raises UnreadableImageError naming it,
    'skip' reads the next readable file in its place with a warning (``substitute_unreadable``).
    """
    _check_dataset(dataset)
    _check_image_size(image_size)
    if dataset in TFDS_DATASETS:
        return TfdsSource(dataset, split, data_dir, image_size, num_workers)
    if dataset == 'image_folder':
        return report_problems(
            FolderSource(data_dir, split, image_size=image_size, num_workers=num_workers, bad_images=bad_images)
        )
    return DATASETS[dataset](split, data_dir=data_dir, image_size=image_size)
