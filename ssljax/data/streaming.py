"""The streaming input pipeline: grain worker processes decode each host's slice of every global batch.

For datasets too large for host memory (imagenet2012, image folders above ``host_data_max_mb``, or any dataset with
``--config.stream=always``). Built on grain:

    grain.MapDataset.range(start_step, ...)            element k = the batch of step start_step + k
        .map(BatchMaker(...))                           step -> this host's rows, decoded and cropped
        .to_iter_dataset(...).mp_prefetch(workers)      W processes, worker w makes the batches k = w mod W

Determinism and resume. The run's sampler stays the single source of truth: ``BatchMaker`` calls
``sampler.indices(step, state)`` (``TrainData.indices``) and keeps this host's rows ``host_slice(B, i, P)`` of it;
the random-resized crops come from ``decode.crop_uniforms(seed, step, row in the global batch, views)``. A batch is
therefore a pure function of (seed, step, sampler state): the data position is the step, as for the in-memory paths,
so a resumed run starts the pipeline at its restored step and reads exactly the batches an uninterrupted run reads,
whatever the number of workers (grain's own iterator state is not needed and not checkpointed). Each host reads only
the records of its own rows.

One element is one batch. A worker decodes its batch serially into one preallocated array (no thread pool per
batch, no per-sample stacking); W workers make W batches at once and grain hands them over in step order through
shared memory. ``workers=0`` makes the batches in the training process instead, in background threads.

Layout (what the step receives): ``{'image': uint8 [b, sum_v size_v^2 * 3], 'label': int32 [b], 'index': int64 [b]}``
with every view's host crop packed per row (``augment.unpack_views``); ``augment.augment_views`` then applies the
rest of each view on the device without cropping again.

Unreadable images meet the run one at a time here (a folder larger than memory is never decoded in advance):
``bad_images='error'`` stops the run with ``UnreadableImageError`` naming the file (raised in the worker, re-raised
by the training process); ``'skip'`` decodes the next readable record in its place and warns with both paths
(``sources.substitute_unreadable``), so batches keep their size and stay deterministic.

Throughput (``python -m ssljax.bench --data-only``, BENCHMARKS.md "Streaming input pipeline"): on 500x375
JPEGs with SimCLR's two 224 px views a worker spends 2.6-2.9 ms of CPU per image (343-380 images per CPU second,
measured on 2 cores busy with other work; the decode and the two crops alone take 2.4 ms), the same with 1 and 2
workers, and the training process about 1% of that. A 16-core host with 15 workers therefore delivers about
5,000-6,000 images/s, twice what a ResNet-50 consumes on one H100 (about 2,800 images/s).
"""

from __future__ import annotations

import os
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from ssljax.data import decode, loader, sources

# Steps a pipeline covers when no end is given (training is bounded by total_steps, not by the dataset).
_HORIZON = 2**40


class CropSpec(NamedTuple):
    """What the host needs of a view (``augment.ViewConfig`` carries jax; workers should not import it)."""

    size: int
    crop_scale: tuple
    crop_ratio: tuple


def crop_specs(views: Sequence) -> tuple[CropSpec, ...]:
    return tuple(CropSpec(int(v.size), tuple(v.crop_scale), tuple(v.crop_ratio)) for v in views)


def default_workers() -> int:
    """One worker process per CPU core, at most 16."""
    return max(1, min(16, os.cpu_count() or 1))


class BatchMaker:
    """``step -> this host's batch`` (picklable: it runs in grain's worker processes).

    Args:
      source: random-access source with ``__len__``, ``record(i) -> (bytes or uint8 array, label)`` and
        ``describe(i)`` (``sources.FolderSource``, ``sources.TfdsSource``, ``sources.Split``).
      sampler, sampler_state: the run's sampler (``samplers.Sampler``) and its state: ``indices(step, state)`` gives
        the global batch.
      rows: this host's slice of the global batch (``loader.host_slice``).
      views: the views to crop, in the step's order (``CropSpec`` or ``ViewConfig``).
      seed: the run's seed (crop randomness).
      bad_images: 'error' or 'skip' (see module doc).
    """

    def __init__(
        self, source, sampler, sampler_state: dict, rows: slice, views: Sequence, seed: int, bad_images: str = 'error'
    ):
        if bad_images not in sources.BAD_IMAGES_MODES:
            raise ValueError(f"bad_images must be 'error' or 'skip', got {bad_images!r}")
        self.source, self.sampler, self.sampler_state = source, sampler, dict(sampler_state or {})
        self.rows, self.views, self.seed, self.bad_images = rows, crop_specs(views), int(seed), bad_images
        self.row_bytes = decode.packed_size([v.size for v in self.views])

    def __call__(self, step: int) -> dict:
        step = int(step)
        index = np.asarray(self.sampler.indices(step, self.sampler_state), np.int64)[self.rows]
        image = np.empty((len(index), self.row_bytes), np.uint8)
        label = np.empty((len(index),), np.int32)
        n = len(self.source)
        for j, i in enumerate(index):
            uniforms = decode.crop_uniforms(self.seed, step, self.rows.start + j, len(self.views))

            def read(k, out=image[j], uniforms=uniforms):
                data, lab = self.source.record(k)
                try:
                    decode.decode_views(data, uniforms, self.views, out)
                except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError...
                    raise sources.UnreadableImageError(self.source.describe(k), sources.short_reason(e)) from e
                return lab

            index[j], label[j] = sources.substitute_unreadable(
                int(i), n, read, self.source.describe, self.bad_images, getattr(self.source, 'skipped_report', None)
            )
        return {'image': image, 'label': label, 'index': index}


class ExitWithParent:
    """Worker start-up (grain's ``worker_init_fn``): the worker ends itself when the training process is gone.

    A run killed with SIGKILL (or by the out-of-memory killer) cannot stop its workers, which would otherwise wait on
    their full buffers forever, each holding its memory and shared-memory batches. A daemon thread checks once a
    second whether the worker's parent is still the process that started it and exits the worker when not.
    """

    def __init__(self, parent_pid: int, period_s: float = 1.0):
        self.parent_pid, self.period_s = parent_pid, period_s

    def __call__(self, worker_index: int = 0, worker_count: int = 1) -> None:
        import threading  # pylint: disable=import-outside-toplevel
        import time  # pylint: disable=import-outside-toplevel

        def watch():
            while os.getppid() == self.parent_pid:
                time.sleep(self.period_s)
            os._exit(1)  # pylint: disable=protected-access

        threading.Thread(target=watch, name='ssljax-exit-with-parent', daemon=True).start()


class StreamLoader:
    """Iterator of this host's batches from ``start_step`` on (``num_steps`` of them, or without end).

    ``workers > 0``: that many grain worker processes (spawned: each imports the pipeline afresh), each with
    ``prefetch`` finished batches buffered; ``workers == 0``: ``prefetch`` background threads of this process.
    ``close()`` stops the workers (also on garbage collection).
    """

    def __init__(
        self, maker: BatchMaker, start_step: int, workers: int, prefetch: int = 2, num_steps: int | None = None
    ):
        import grain  # pylint: disable=import-outside-toplevel
        from absl import flags  # pylint: disable=import-outside-toplevel

        if not flags.FLAGS.is_parsed():  # grain reads its absl flags; ssljax parses its command line with argparse
            flags.FLAGS.mark_as_parsed()
        start = loader._check_nonneg_int('start_step', start_step)
        end = start + (_HORIZON if num_steps is None else loader._check_nonneg_int('num_steps', num_steps))
        workers = loader._check_nonneg_int('workers', workers)
        prefetch = max(1, loader._check_nonneg_int('prefetch', prefetch))
        ds = grain.MapDataset.range(start, end).map(maker)
        if workers:
            it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1)).mp_prefetch(
                grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch),
                worker_init_fn=ExitWithParent(os.getpid()),
            )
        else:
            it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch))
        self.step = start
        self._it: Any = iter(it_ds)

    def __iter__(self) -> 'StreamLoader':
        return self

    def __next__(self) -> dict:
        if self._it is None:
            raise StopIteration
        batch = next(self._it)
        self.step += 1
        # The image stays in grain's shared memory (read once more, by the transfer to the devices; freed when
        # dropped); the small arrays are copied so that their segments are freed at once.
        return {k: v if k == 'image' else np.array(v) for k, v in batch.items()}

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None and hasattr(it, 'close'):
            it.close()
            _flush_shared_memory_deletions()

    def __enter__(self) -> 'StreamLoader':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # pylint: disable=broad-except
            pass  # interpreter shutdown: grain cleans up its own processes


def _flush_shared_memory_deletions() -> None:
    """Waits for grain's background deletion of the shared-memory batches already dropped (one thread, in order),
    so that a process ending right after ``close()`` leaves no segment behind (and no resource-tracker warning)."""
    from grain._src.python.ipc import shared_memory_array  # pylint: disable=import-outside-toplevel

    pool = getattr(shared_memory_array.SharedMemoryArray, '_del_thread_pool', None)
    if pool is not None:
        pool.apply(int)


def stream_batches(
    source,
    sampler,
    sampler_state: dict,
    global_batch: int,
    views: Sequence,
    seed: int,
    start_step: int,
    process_index: int,
    process_count: int,
    workers: int,
    bad_images: str = 'error',
    num_steps: int | None = None,
    prefetch: int = 2,
) -> StreamLoader:
    """This host's streamed batches (numpy) from ``start_step`` on: see ``BatchMaker`` and ``StreamLoader``."""
    rows = loader.host_slice(global_batch, process_index, process_count)
    maker = BatchMaker(source, sampler, sampler_state, rows, views, seed, bad_images)
    return StreamLoader(maker, start_step, workers, prefetch, num_steps)


def iterate(batches: Iterator[dict]) -> Iterator[dict]:
    """Yields from ``batches`` and closes it when the consumer stops (a dropped generator closes its loader)."""
    try:
        yield from batches
    finally:
        close = getattr(batches, 'close', None)
        if close is not None:
            close()
