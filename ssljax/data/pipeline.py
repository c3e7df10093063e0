"""From a config to global batches on the device mesh.

Three ways to feed the jitted step, chosen by size (``data_mode``), all with the same sampling (the run's sampler,
ssljax/data/samplers.py: by default ``loader.global_batch_indices(N, B, seed, step)``; ``TrainData.indices(step)``
is the single source of truth for which examples a step sees):

- ``device``: the decoded dataset fits ``device_data_max_mb`` (a per-device budget: the dataset is replicated). The
  uint8 images and labels sit on every device once, each step sends only the batch's indices and the step gathers
  the images itself (``gather_batch``), so the host never sets the pace. The step receives
  ``{'index': int32 [B]}`` and completes it to ``{'image': uint8 [B, H, W, 3], 'label', 'index'}``.
- ``host``: the decoded dataset fits ``host_data_max_mb`` but not the device budget (STL-10's 2.9 GB unlabeled split
  at the default budgets). It stays in host memory; a host thread gathers each host's rows two batches ahead
  (``loader.HostLoader``) and the transfers to the devices are kept two batches ahead too. The step receives
  ``{'image': uint8 [B, H, W, 3], 'label': int32 [B], 'index': int64 [B]}``, cropped on the device.
- ``stream``: larger datasets (imagenet2012, big image folders) or ``--config.stream=always``. Grain worker
  processes decode each host's rows at reduced DCT scale and take every view's random-resized crop from the whole
  image on the host (ssljax/data/streaming.py, ssljax/data/decode.py). The step receives
  ``{'image': uint8 [B, sum_v size_v^2 * 3] (views packed), 'label', 'index'}``; ``augment.augment_views`` sees the
  packed layout and applies the rest of each view without a second crop.

Every batch is a pure function of (seed, step, sampler state) in every mode, so resume is exact and each host reads
only its own rows (``loader.host_slice``).

Evaluation of a streamed dataset never holds a split in memory: ``load_split`` returns a ``sources.Split`` whose
``images`` is a ``LazyImages`` (decoded block by block as the evaluators read it), over a seeded subsample when
``max_examples`` is given. Datasets in memory are loaded once and may be cached decoded (``cache_dir``: image
folders and tfds datasets).
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any, Iterator, Sequence

import jax
import numpy as np

from ssljax import parallel
from ssljax.data import loader, samplers, sources, streaming
from ssljax.data import views as views_lib

MODES = ('device', 'host', 'stream')
STREAM_CHOICES = ('auto', 'always', 'never')
# Global batches whose transfer to the devices is started ahead of the step that takes them (host and stream modes).
DEVICE_PREFETCH = 2


@dataclasses.dataclass
class TrainData:
    source: Any  # sources.Split in memory, or a random-access source decoding on demand
    global_batch: int
    seed: int
    mesh: jax.sharding.Mesh
    on_device: bool
    device_arrays: dict  # {'images', 'labels'} replicated on every device, or {} otherwise
    sampler: samplers.Sampler = None
    sampler_state: dict = dataclasses.field(default_factory=dict)  # host copy; the loop keeps it in the train state
    mode: str = ''  # 'device' | 'host' | 'stream' ('' = 'device' if on_device else 'host')
    views: tuple = ()  # stream: the views the host crops, in the step's order (views.views_from_config)
    workers: int = 0  # stream: grain worker processes (0: threads of this process)
    bad_images: str = 'error'  # stream: 'error' stops at an unreadable file, 'skip' reads the next one instead

    def __post_init__(self):
        if self.sampler is None:
            self.sampler = samplers.EpochShuffle(None, len(self.source), self.global_batch, self.seed)
        if not self.mode:
            self.mode = 'device' if self.on_device else 'host'
        if self.mode not in MODES:
            raise ValueError(f'unknown data mode {self.mode!r}; known: {", ".join(MODES)}')
        if self.mode == 'stream' and not self.views:
            raise ValueError('streamed training data needs the views to crop (TrainData.views)')

    @property
    def num_examples(self) -> int:
        return len(self.source)

    def indices(self, step: int) -> np.ndarray:
        """Global dataset indices of ``step`` under the current sampler state."""
        return self.sampler.indices(step, self.sampler_state)

    def host_batches(
        self,
        start_step: int,
        num_steps: int | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
    ) -> Iterator[dict]:
        """This host's numpy batches from ``start_step`` on (host and stream modes), as ``batches`` puts them on
        the mesh; ``process_index`` / ``process_count`` default to JAX's. Close it (``.close()``) when done early."""
        i = jax.process_index() if process_index is None else process_index
        p = jax.process_count() if process_count is None else process_count
        if self.mode == 'stream':
            return streaming.stream_batches(
                self.source,
                self.sampler,
                self.sampler_state,
                self.global_batch,
                self.views,
                self.seed,
                start_step,
                i,
                p,
                self.workers,
                self.bad_images,
                num_steps,
            )
        if self.mode == 'host':
            return loader.HostLoader(
                self.source,
                self.global_batch,
                self.seed,
                start_step,
                i,
                p,
                num_steps=num_steps,
                indices_fn=self.indices,
            )
        raise ValueError('device-resident data has no host batches: the step gathers them (gather_batch)')

    def batches(self, start_step: int) -> Iterator[dict]:
        """Global batches from ``start_step`` on (the data position is the step, plus the sampler's state).

        A stateful sampler's refresh changes later batches: take a new iterator after it (the others prefetch); the
        old one stops its threads or worker processes when dropped.
        """
        if self.mode == 'device':
            return self._index_batches(start_step)
        return _to_device(self.host_batches(start_step), self.mesh)

    def _index_batches(self, step: int) -> Iterator[dict]:
        local = loader.host_slice(self.global_batch, jax.process_index(), jax.process_count())
        while True:
            indices = np.asarray(self.indices(step))
            yield parallel.global_batch_from_host({'index': indices[local].astype(np.int32)}, self.mesh)
            step += 1


def _to_device(host: Iterator[dict], mesh, depth: int = DEVICE_PREFETCH) -> Iterator[dict]:
    """Global arrays of ``host``'s batches, with the transfers of the next ``depth`` batches already started (they
    are asynchronous); closes ``host`` when the consumer stops."""
    pending: collections.deque = collections.deque()
    try:
        for batch in host:
            pending.append(parallel.global_batch_from_host(batch, mesh))
            if len(pending) > depth:
                yield pending.popleft()
        while pending:
            yield pending.popleft()
    finally:
        close = getattr(host, 'close', None)
        if close is not None:
            close()


def gather_batch(batch: dict, device_arrays: dict) -> dict:
    """Inside the step: completes an index-only batch from the device-resident dataset (identity otherwise)."""
    if 'image' in batch:
        return batch
    idx = batch['index']
    return {'image': device_arrays['images'][idx], 'label': device_arrays['labels'][idx], 'index': idx}


# Datasets too large to hold in host memory: with stream=auto they stream whatever their size estimate says.
STREAMED = ('imagenet2012',)


class LazyImages:
    """``uint8 [N, S, S, 3]`` images of ``rows`` of a random-access source, decoded when indexed.

    Quacks like the array of a ``sources.Split`` where the evaluators read it: ``shape``, ``dtype``, ``ndim``,
    ``len``, ``images[rows]`` and ``get(indices)`` (block by block in ``evaluation.context``), so a streamed
    dataset's evaluation split is never decoded whole into memory.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, source, rows: np.ndarray, image_shape: tuple[int, int, int]):
        self.source, self.rows, self.image_shape = source, np.asarray(rows, np.int64), tuple(image_shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.image_shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, indices: Sequence[int]) -> dict:
        return self.source.get(self.rows[np.asarray(indices, np.int64)])

    def __getitem__(self, key) -> np.ndarray:
        rows = self.rows[key]
        return (
            self.get(np.arange(len(self.rows))[key])['image']
            if np.ndim(rows)
            else self.source.get(rows[None])['image'][0]
        )

    def __array__(self, dtype=None, copy=None):
        raise TypeError(f'LazyImages of {len(self)} streamed images cannot be read whole into memory; index a block')


def _labels(source, rows: np.ndarray) -> np.ndarray:
    if hasattr(source, 'labels_of'):
        return source.labels_of(rows)
    return np.asarray(source.labels, np.int32)[rows]


def stored_size(config) -> int | None:
    """The side images are stored at on the host (image folders and streamed datasets are resized to it)."""
    if config.dataset in ('image_folder', *STREAMED) or config.get('stream', 'auto') == 'always':
        return config.image_size
    return None


def _check_config(config) -> None:
    stream = config.get('stream', 'auto')
    if stream not in STREAM_CHOICES:
        raise ValueError(f'config key "stream" must be auto, always or never, got {stream!r}')
    if config.get('data_workers', -1) < -1:
        raise ValueError(
            f'config key "data_workers" must be -1 (one per core), 0 (threads) or a number of processes, '
            f'got {config.data_workers}'
        )


def _open(config, split: str):
    """The random-access source of ``split`` (not decoded; an image folder's problems not reported yet)."""
    data_dir, size = config.data_dir or None, stored_size(config)
    if config.dataset == 'image_folder':
        return sources.FolderSource(data_dir, split, image_size=size, bad_images=config.bad_images)
    return sources.open_source(config.dataset, split, data_dir, image_size=size)


def _sized(config) -> bool:
    """Datasets whose source is opened to decide by size or to stream (not the embedded ones, unless streamed)."""
    return config.dataset in ('image_folder', *sources.TFDS_DATASETS, *STREAMED) or config.get('stream') == 'always'


def streams(config, train_source=None) -> bool:
    """Whether the dataset streams: ``stream=always``, or ``auto`` and the dataset is in ``STREAMED`` or its training
    split's decoded size at the stored side (``len x image_size^2 x 3`` bytes) exceeds ``host_data_max_mb``.

    Decided on the training split, for every split: the evaluation splits of a streamed dataset are read lazily even
    when one would fit in memory (ImageNet's 50,000 validation images at 224 px are 7.5 GB on every host otherwise).
    Embedded datasets stream only when asked (``always``). ``train_source``: the training split's source if open.
    """
    _check_config(config)
    stream = config.get('stream', 'auto')
    if stream != 'auto':
        return stream == 'always'
    if config.dataset in STREAMED:
        return True
    if not _sized(config):
        return False
    key = (config.dataset, config.data_dir, config.train_split, config.image_size, config.get('host_data_max_mb'))
    if key not in _DECISIONS:
        source = train_source if train_source is not None else _open(config, config.train_split)
        side = config.image_size
        _DECISIONS[key] = len(source) * side * side * 3 > config.get('host_data_max_mb', 8192) * 2**20
    return _DECISIONS[key]


_DECISIONS: dict = {}  # streams() by dataset, folder, split, size and budget: a folder is scanned once per process


def subsample(source, max_examples: int, seed: int, name: str = '') -> sources.Split:
    """A seeded random subset of ``max_examples`` (all when 0 or larger) of a Split or random-access source."""
    n = len(source)
    if isinstance(source, sources.Split) and (not max_examples or n <= max_examples):
        return source
    keep = _subsample_rows(n, max_examples, seed)
    batch = source.get(keep)
    return sources.Split(
        images=batch['image'],
        labels=np.asarray(batch['label'], np.int32),
        class_names=tuple(getattr(source, 'class_names', ())),
        name=name,
    )


def _subsample_rows(n: int, max_examples: int, seed: int) -> np.ndarray:
    if not max_examples or n <= max_examples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, min(max_examples, n), replace=False))


def bad_images_report(workdir: str, split: str) -> str | None:
    """``workdir/bad_images-<split>.txt`` (``.p<i>`` before ``.txt`` on process i > 0: hosts that stream write their
    own list), or None without a workdir."""
    if not workdir:
        return None
    i = jax.process_index()
    return os.path.join(workdir, f'bad_images-{split}{f".p{i}" if i else ""}.txt')


def load_split(config, split: str, max_examples: int = 0, workdir: str = '') -> sources.Split:
    """A split for evaluation (a seeded subsample of ``max_examples`` when > 0).

    In memory for datasets that are not streamed. A streamed dataset's split is a Split of ``LazyImages``: nothing is
    decoded until an evaluator reads a block. Its training split must be subsampled (``eval.max_train_examples``):
    encoding every ImageNet training image for a kNN bank at each evaluation is refused with a message naming the key.
    """
    source = _open(config, split) if _sized(config) else None
    if source is None or not streams(config, source if split == config.train_split else None):
        kwargs = {}
        if config.dataset == 'image_folder':
            kwargs['bad_images'] = config.bad_images
        if config.cache_dir and config.dataset in ('image_folder', *sources.TFDS_DATASETS):
            kwargs['cache_dir'] = config.cache_dir
        data = sources.load_split(
            config.dataset, split, config.data_dir or None, image_size=stored_size(config), **kwargs
        )
        if getattr(data, 'bad_files', None) and jax.process_index() == 0 and workdir:
            sources.write_bad_images_report(os.path.join(workdir, f'bad_images-{split}.txt'), data.bad_files)
        return subsample(data, max_examples, config.seed, data.name)
    if not max_examples and split == config.eval_train_split:
        raise ValueError(
            f'{config.dataset} is streamed: set config key "eval.max_train_examples" to the number of '
            f'{split} images for the kNN bank and linear probe (it has {len(source)})'
        )
    sources.report_problems(source, bad_images_report(workdir, split))
    rows = _subsample_rows(len(source), max_examples, config.seed)
    if isinstance(source, sources.Split):
        shape = source.images.shape[1:]
    else:
        side = stored_size(config)
        shape = (side, side, 3)
    return sources.Split(
        images=LazyImages(source, rows, shape),
        labels=_labels(source, rows),
        class_names=tuple(getattr(source, 'class_names', ())),
        name=f'{config.dataset}:{split}',
    )


def data_workers(config) -> int:
    """``data_workers`` with -1 resolved to one per CPU core (at most 16)."""
    n = config.get('data_workers', -1)
    return streaming.default_workers() if n == -1 else int(n)


def load_train_data(config, mesh, workdir: str = '') -> TrainData:
    """The training split with ``config.sampler``, in the mode its size calls for (module doc)."""
    _check_config(config)
    source = _open(config, config.train_split) if _sized(config) else None
    if streams(config, source):
        sources.report_problems(source, bad_images_report(workdir, config.train_split))
        sampler = samplers.create_sampler(config, len(source))
        views, _ = views_lib.views_from_config(config)
        return TrainData(
            source,
            config.batch_size,
            config.seed,
            mesh,
            False,
            {},
            sampler,
            sampler.init_state(),
            mode='stream',
            views=tuple(views),
            workers=data_workers(config),
            bad_images=config.bad_images,
        )
    source = load_split(config, config.train_split, workdir=workdir)
    on_device = source.images.nbytes <= config.device_data_max_mb * 2**20
    arrays = {}
    if on_device:
        arrays = parallel.put_replicated({'images': source.images, 'labels': source.labels.astype(np.int32)}, mesh)
    sampler = samplers.create_sampler(config, len(source))
    return TrainData(
        source,
        config.batch_size,
        config.seed,
        mesh,
        on_device,
        arrays,
        sampler,
        sampler.init_state(),
        mode='device' if on_device else 'host',
    )
