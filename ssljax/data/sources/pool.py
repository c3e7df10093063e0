"""Decoding many images into one preallocated ``uint8 [n, H, W, 3]`` array with a thread pool (``_fill_parallel``),
as image folders and tfds datasets do when a split is loaded into memory or a batch is read; one pool per size for the
process, ``default_num_workers`` threads by default (PIL releases the GIL while decoding pixels).
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from typing import Callable

import numpy as np

# Reads of one chunk (at most _CHUNK items, at least n / workers) run in one pool task: per-file futures would cost
# more than decoding a 32x32 JPEG.
_CHUNK = 256


def default_num_workers() -> int:
    """Decode threads: one per CPU core, at most 16 (PIL releases the GIL while decoding pixels)."""
    return max(1, min(16, os.cpu_count() or 1))


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
