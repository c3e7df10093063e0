"""Image folders: ``data_dir`` laid out ``root/<split>/<class>/<image>``, decoded with PIL.

Classes are the sorted subfolder names of ``root/train``; every split uses that class -> index map. Files are
ordered by class index, then by file name. ``FolderSource`` reads files on demand (streamed training, evaluation of a
streamed split); ``_load_image_folder`` decodes a whole split into memory, kept in the decoded cache (``cache``) when
``cache_dir`` is given. Unreadable files and empty class folders are reported as ``bad_images`` says (``scan``;
``report_problems`` for a folder opened on demand).

Pixel conventions: grayscale (L, 1, I;16, I) is replicated to three channels; 16-bit values map to 8 bits by
``round(v * 255 / 65535)``; palette, CMYK, YCbCr and LA images go through ``PIL.Image.convert('RGB')``; the alpha
channel of RGBA/LA/transparent-palette images is dropped (colour values kept as stored, no compositing). Only the first
frame of animated GIF/WebP/multi-page TIFF is read; EXIF orientation is not applied (as torchvision's ImageFolder).

Resizing (``image_size=S``) as ``base.resize_shorter_and_crop``; a JPEG is first decoded at the smallest DCT scale
(1/2, 1/4, 1/8) whose shorter side is still at least ``S`` (``decode.decode_resized``). Without ``image_size`` all
images of a split must share one size, else ``ValueError`` names the first mismatching file and both sizes.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from ssljax.data import decode
from ssljax.data.sources.base import Split, UnreadableImageError, short_reason
from ssljax.data.sources.cache import _CACHE_FORMAT, _cache_paths, _cached, _read_cache
from ssljax.data.sources.pool import _fill_parallel
from ssljax.data.sources.scan import (
    _EMPTY_FOLDER,
    BAD_IMAGES_MODES,
    _report_bad,
    append_bad_image,
    substitute_unreadable,
)

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')


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
        raise UnreadableImageError(path, short_reason(e)) from e
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise UnreadableImageError(path, f'decodes to shape {arr.shape}, expected [H, W, 3]')
    return arr


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
            raise ValueError(
                f'none of {len(picks)} images sampled from {self.split_dir} could be opened to take '
                f'the image size from; set --config.image_size'
            )
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


def report_problems(src, report_path: str | None = None):
    """Reports an image folder's empty class folders as its ``bad_images`` says (stops or warns), writing them to
    ``report_path`` when given, which then also receives the files skipped later (``skipped_report``); -> ``src``."""
    if isinstance(src, FolderSource):
        for folder, reason in src.problems if report_path else ():
            append_bad_image(report_path, folder, reason)  # added to, not replaced: a resumed run keeps its list
        _report_bad(src.problems, src.bad_images, src.split_dir, None)
        src.skipped_report = report_path
    return src
