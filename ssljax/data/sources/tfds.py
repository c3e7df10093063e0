"""tfds datasets: ``'cifar10'``, ``'cifar100'``, ``'stl10'``, ``'imagenet2012'`` through ``tfds.data_source`` over a
``data_dir`` already prepared in array_record format (no TensorFlow: never ``tfds.load``; nothing is downloaded).

stl10 also has ``'unlabeled'`` and ``'train+unlabeled'``; records of its unlabeled split get label ``-1``. For
imagenet2012 the ``'test'`` split name maps to tfds ``'validation'`` (the labelled held-out split; the real test labels
are not public). ``TfdsSource`` decodes records on demand; ``_tfds_loader(dataset)`` loads a whole split into memory,
kept in the decoded cache (``cache``) when ``cache_dir`` is given.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Sequence

import numpy as np

from ssljax.data import decode
from ssljax.data.sources.base import Split, UnreadableImageError, _check_split, resize_array, short_reason
from ssljax.data.sources.cache import _CACHE_FORMAT, _cached
from ssljax.data.sources.pool import _fill_parallel

TFDS_DATASETS = ('cifar10', 'cifar100', 'stl10', 'imagenet2012')


def _tfds_subsplits(dataset: str, split: str) -> list[tuple[str, bool]]:
    """Maps a split name to [(tfds split, unlabeled?)]; 'train+unlabeled' is read as two parts to label the
    second -1."""
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
            return tfds.data_source(
                dataset, split=tfds_split, data_dir=data_dir, download=False, try_gcs=False, decoders=decoders
            )
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
                raw = [
                    self._open(dataset, s, data_dir, {'image': tfds.decode.SkipDecoding()})
                    for s, _ in _tfds_subsplits(dataset, self.split)
                ]
                sample = raw[0][0]['image']
                if not isinstance(sample, bytes):
                    raise TypeError(f'encoded image is {type(sample).__name__}, not bytes')
                self._raw_parts = raw
            except Exception as e:  # pylint: disable=broad-except
                self._raw_parts = False
                if self.name not in TfdsSource._noted:
                    TfdsSource._noted.add(self.name)
                    print(
                        f'ssljax: note: {self.name}: tfds returns no encoded images here ({short_reason(e)}); '
                        'its records are decoded by tfds at full size',
                        file=sys.stderr,
                        flush=True,
                    )
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
                raise UnreadableImageError(self.describe(i), short_reason(e)) from e
        if self.image_size is not None:
            data = resize_array(data, self.image_size)
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
        h.update(
            json.dumps(
                [_CACHE_FORMAT, 'tfds', self.dataset, self.split, self.image_size, list(self.class_names)]
            ).encode()
        )
        root = os.fspath(self._parts[0][0].dataset_info.data_dir)
        for dirpath, _, names in sorted(os.walk(root)):
            for name in sorted(names):
                f = os.path.join(dirpath, name)
                st = os.stat(f)
                h.update(f'\n{os.path.relpath(f, root)}\t{st.st_size}\t{st.st_mtime_ns}'.encode())
        return h.hexdigest()


def _tfds_loader(dataset: str):
    def load(
        split: str,
        data_dir: str | None = None,
        image_size: int | None = None,
        num_workers: int | None = None,
        cache_dir: str | None = None,
        **unused,
    ) -> Split:
        del unused
        src = TfdsSource(dataset, split, data_dir, image_size, num_workers)
        return _cached(cache_dir, f'{dataset}-{split}', src.cache_key, src.load_all, src.name)

    load.__doc__ = f'tfds {dataset!r} from an array_record data_dir, fully in memory (cached in cache_dir).'
    return load
