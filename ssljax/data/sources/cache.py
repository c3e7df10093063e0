"""The decoded cache (``cache_dir``): image folders and tfds datasets loaded into memory are kept decoded, as
``<stem>-<key[:24]>.images.npy`` (raw .npy: reads at disk speed, unlike .npz) plus ``<stem>-<key[:24]>.meta.npz``
(labels, class names, the files left out by ``bad_images='skip'``); the meta file is written last, so its presence
marks a complete entry. The key is the source's ``cache_key()`` (``FolderSource``, ``TfdsSource``): sha256 over
``_CACHE_FORMAT``, the root or dataset, the split, the stored size, the class names and every file of the data
(relative path, size, mtime_ns).
"""

from __future__ import annotations

import os
import threading
from typing import Callable

import numpy as np

from ssljax.data.sources.base import Split

_CACHE_FORMAT = 'ssljax-image-folder-v2'  # v2: JPEGs decoded at a reduced DCT scale when resized


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
        np.savez(
            fh,
            labels=out.labels,
            class_names=np.asarray(out.class_names, dtype=str),
            bad_paths=np.asarray([p for p, _ in out.bad_files], dtype=str),
            bad_reasons=np.asarray([r for _, r in out.bad_files], dtype=str),
        )
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
