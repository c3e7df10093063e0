"""Host batch loader: which examples each step sees, and a prefetching iterator over them.

The data position is a pure function of ``(seed, step)``: epoch ``e = step // steps_per_epoch`` uses the permutation
``np.random.default_rng([seed, e]).permutation(N)`` and step ``step`` takes its slice
``[(step % steps_per_epoch) * B, ... + B)``, with ``steps_per_epoch = N // B`` (the last ``N % B`` examples of each
permutation are dropped). Resuming at step ``s`` therefore replays exactly the batches a run from 0 would see, and
each host takes a contiguous slice of the global batch.
"""

from __future__ import annotations

import functools
import queue
import threading
from typing import Any

import numpy as np


def _check_nonneg_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f'{name} must be a non-negative int, got {value!r}')
    return int(value)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int64)
    perm.setflags(write=False)  # shared through the cache
    return perm


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
    """``num_examples // global_batch`` (drop remainder); ValueError if that is 0."""
    n = _check_nonneg_int('num_examples', num_examples)
    b = _check_nonneg_int('global_batch', global_batch)
    if b == 0:
        raise ValueError('global_batch must be positive, got 0')
    if n < b:
        raise ValueError(f'global_batch {b} exceeds num_examples {n}: an epoch would have no full batch')
    return n // b


def global_batch_indices(num_examples: int, global_batch: int, seed: int, step: int) -> np.ndarray:
    """Dataset indices of the global batch at ``step``: int64 [global_batch].

    ``perm = default_rng([seed, step // spe]).permutation(num_examples)`` with ``spe = num_examples // global_batch``;
    returns ``perm[j * global_batch:(j + 1) * global_batch]`` with ``j = step % spe``. Within an epoch the batches are
    disjoint and cover ``spe * global_batch`` distinct examples.
    """
    spe = steps_per_epoch(num_examples, global_batch)
    seed = _check_nonneg_int('seed', seed)
    step = _check_nonneg_int('step', step)
    epoch, j = divmod(step, spe)
    perm = _epoch_permutation(int(num_examples), seed, epoch)
    return perm[j * global_batch : (j + 1) * global_batch].copy()


def host_slice(global_batch: int, process_index: int, process_count: int) -> slice:
    """Contiguous rows of the global batch owned by ``process_index``: ``[i * B / P, (i + 1) * B / P)``."""
    b = _check_nonneg_int('global_batch', global_batch)
    p = _check_nonneg_int('process_count', process_count)
    i = _check_nonneg_int('process_index', process_index)
    if p == 0:
        raise ValueError('process_count must be positive, got 0')
    if i >= p:
        raise ValueError(f'process_index {i} out of range for process_count {p}')
    if b % p:
        raise ValueError(f'global_batch {b} is not divisible by process_count {p}')
    local = b // p
    return slice(i * local, (i + 1) * local)


class _Failure:
    """Carries an exception from the prefetch thread to the consumer."""

    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


def _make_batch(
    source, num_examples: int, global_batch: int, seed: int, slc: slice, step: int, indices_fn=None
) -> dict:
    rows = indices_fn(step) if indices_fn is not None else global_batch_indices(num_examples, global_batch, seed, step)
    idx = np.asarray(rows, np.int64)[slc]
    out = source.get(idx)
    image = np.asarray(out['image'])
    label = np.asarray(out['label'])
    if image.dtype != np.uint8 or image.ndim != 4 or image.shape[0] != len(idx) or image.shape[-1] != 3:
        raise ValueError(f'source returned image {image.dtype} {image.shape}, expected uint8 [{len(idx)}, H, W, 3]')
    if label.shape != (len(idx),):
        raise ValueError(f'source returned label shape {label.shape}, expected [{len(idx)}]')
    return dict(image=image, label=label.astype(np.int32, copy=False), index=idx)


def _produce(make, q: queue.Queue, stop: threading.Event, step: int, end: int | None) -> None:
    """Prefetch thread: puts make(step), make(step + 1), ... into q; a failure or the end is put once, then it exits."""
    while not stop.is_set():
        if end is not None and step >= end:
            item = _DONE
        else:
            try:
                item = make(step)
            except BaseException as e:  # pylint: disable=broad-except
                item = _Failure(e)
        # Put with a timeout so close() can stop a producer blocked on a full queue.
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                break
            except queue.Full:
                continue
        if item is _DONE or isinstance(item, _Failure):
            return
        step += 1


class HostLoader:
    """Iterator of this host's numpy batches from ``start_step`` on.

    Each ``next()`` returns ``dict(image=uint8 [local, H, W, 3], label=int32 [local], index=int64 [local])`` for step
    ``self.step`` (then increments it), where the rows are ``global_batch_indices(len(source), global_batch, seed,
    step)[host_slice(global_batch, process_index, process_count)]``. ``source`` is a Split or any random-access source
    with ``__len__`` and ``get(indices) -> dict(image, label)``. With ``prefetch > 0`` a daemon thread computes up to
    ``prefetch`` batches ahead; an exception there is re-raised (same object, same message) by the next ``next()``.
    ``num_steps`` (optional) ends iteration after that many batches; otherwise it runs forever (training by steps).
    """

    def __init__(
        self,
        source,
        global_batch: int,
        seed: int,
        start_step: int,
        process_index: int = 0,
        process_count: int = 1,
        prefetch: int = 2,
        num_steps: int | None = None,
        indices_fn=None,
    ):
        if not hasattr(source, 'get') or not hasattr(source, '__len__'):
            raise ValueError(f'source must have __len__ and get(indices), got {type(source).__name__}')
        self.source = source
        self.num_examples = len(source)
        self.global_batch = _check_nonneg_int('global_batch', global_batch)
        self.steps_per_epoch = steps_per_epoch(self.num_examples, self.global_batch)
        self.seed = _check_nonneg_int('seed', seed)
        self.step = _check_nonneg_int('start_step', start_step)
        self._slice = host_slice(self.global_batch, process_index, process_count)
        self.prefetch = _check_nonneg_int('prefetch', prefetch)
        self._end = None if num_steps is None else self.step + _check_nonneg_int('num_steps', num_steps)
        self.indices_fn = indices_fn  # step -> global indices (a sampler); default global_batch_indices
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, self.prefetch))
        self._thread = None
        self._finished = False
        if self.prefetch > 0:
            # The thread gets no reference to self, so an unclosed loader can still be collected (its __del__ stops it).
            make = functools.partial(
                _make_batch,
                self.source,
                self.num_examples,
                self.global_batch,
                self.seed,
                self._slice,
                indices_fn=indices_fn,
            )
            self._thread = threading.Thread(
                target=_produce,
                args=(make, self._queue, self._stop, self.step, self._end),
                name='ssljax-host-loader',
                daemon=True,
            )
            self._thread.start()

    @property
    def local_batch(self) -> int:
        return self._slice.stop - self._slice.start

    def batch_at(self, step: int) -> dict:
        """The batch of ``step`` for this host, computed synchronously (pure function of seed and step)."""
        return _make_batch(
            self.source, self.num_examples, self.global_batch, self.seed, self._slice, step, self.indices_fn
        )

    def __iter__(self) -> 'HostLoader':
        return self

    def __next__(self) -> dict:
        if self._finished:
            raise StopIteration
        if self._thread is None:
            if self._end is not None and self.step >= self._end:
                self._finished = True
                raise StopIteration
            batch = self.batch_at(self.step)
        else:
            item = self._queue.get()
            if item is _DONE:
                self._finished = True
                raise StopIteration
            if isinstance(item, _Failure):
                self._finished = True
                raise item.error
            batch = item
        self.step += 1
        return batch

    def close(self) -> None:
        """Stops and joins the prefetch thread; further ``next()`` raises StopIteration."""
        self._stop.set()
        if self._thread is not None:
            while True:  # drain so a blocked put returns promptly
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._thread.join()
            self._thread = None
        self._finished = True

    def __enter__(self) -> 'HostLoader':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        stop = getattr(self, '_stop', None)  # absent when __init__ failed early
        if stop is not None:
            stop.set()
