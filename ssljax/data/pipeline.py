"""From a config to global batches on the device mesh.

Two ways to feed the jitted step, with the same sampling (the run's sampler, ssljax/data/samplers.py: by default
``loader.global_batch_indices(N, B, seed, step)``):
- device-resident (datasets up to ``device_data_max_mb``): the uint8 images and labels sit on every device once,
  each step sends only the batch's indices and the step gathers the images itself, so the host never sets the pace;
- streamed: a host thread assembles each host's slice of uint8 images (``loader.HostLoader``).
Either way the step receives ``{'image': uint8 [B,H,W,3], 'label': int32 [B], 'index': int32 [B]}``, sharded along
the mesh's data axis.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

import jax
import numpy as np

from ssljax import parallel
from ssljax.data import loader, samplers, sources


@dataclasses.dataclass
class TrainData:
    source: Any                    # sources.Split in memory, or a random-access source decoding on demand
    global_batch: int
    seed: int
    mesh: jax.sharding.Mesh
    on_device: bool
    device_arrays: dict            # {'images', 'labels'} replicated on every device, or {} when streamed
    sampler: samplers.Sampler = None
    sampler_state: dict = dataclasses.field(default_factory=dict)  # host copy; the loop keeps it in the train state

    def __post_init__(self):
        if self.sampler is None:
            self.sampler = samplers.EpochShuffle(None, len(self.source), self.global_batch, self.seed)

    @property
    def num_examples(self) -> int:
        return len(self.source)

    def indices(self, step: int) -> np.ndarray:
        """Global dataset indices of ``step`` under the current sampler state."""
        return self.sampler.indices(step, self.sampler_state)

    def batches(self, start_step: int) -> Iterator[dict]:
        """Global batches from ``start_step`` on (the data position is the step, plus the sampler's state).

        A stateful sampler's refresh changes later batches: take a new iterator after it (the streamed one prefetches).
        """
        if self.on_device:
            return self._index_batches(start_step)
        host = loader.HostLoader(self.source, self.global_batch, self.seed, start_step,
                                 jax.process_index(), jax.process_count(), indices_fn=self.indices)
        return (parallel.global_batch_from_host(b, self.mesh) for b in host)

    def _index_batches(self, step: int) -> Iterator[dict]:
        local = loader.host_slice(self.global_batch, jax.process_index(), jax.process_count())
        while True:
            indices = np.asarray(self.indices(step))
            yield parallel.global_batch_from_host({'index': indices[local].astype(np.int32)}, self.mesh)
            step += 1


def gather_batch(batch: dict, device_arrays: dict) -> dict:
    """Inside the step: completes an index-only batch from the device-resident dataset (identity when streamed)."""
    if 'image' in batch:
        return batch
    idx = batch['index']
    return {'image': device_arrays['images'][idx], 'label': device_arrays['labels'][idx], 'index': idx}


# Datasets too large to hold in host memory: training streams them, evaluation reads a subsample.
STREAMED = ('imagenet2012',)


def stored_size(config) -> int | None:
    """The side images are stored at on the host (image folders and streamed datasets are resized to it)."""
    return config.image_size if config.dataset in ('image_folder', *STREAMED) else None


def subsample(source, max_examples: int, seed: int, name: str = '') -> sources.Split:
    """A seeded random subset of ``max_examples`` (all when 0 or larger) of a Split or random-access source."""
    n = len(source)
    if isinstance(source, sources.Split) and (not max_examples or n <= max_examples):
        return source
    keep = np.arange(n) if not max_examples else np.sort(
        np.random.default_rng(seed).choice(n, min(max_examples, n), replace=False))
    batch = source.get(keep)
    return sources.Split(images=batch['image'], labels=np.asarray(batch['label'], np.int32),
                         class_names=tuple(getattr(source, 'class_names', ())), name=name)


def load_split(config, split: str, max_examples: int = 0, workdir: str = '') -> sources.Split:
    """A split in host memory (a seeded subsample of ``max_examples`` when > 0).

    Streamed datasets are read through their random-access source, so only the subsample is decoded; reading a whole
    ImageNet split this way is refused with a message naming the config key.
    """
    if config.dataset not in STREAMED:
        kwargs = {}
        if config.dataset == 'image_folder':
            kwargs['bad_images'] = config.bad_images
        data = sources.load_split(config.dataset, split, config.data_dir or None, image_size=stored_size(config),
                                  cache_dir=config.cache_dir or None, **kwargs)
        if getattr(data, 'bad_files', None) and jax.process_index() == 0 and workdir:
            sources.write_bad_images_report(os.path.join(workdir, f'bad_images-{split}.txt'), data.bad_files)
        return subsample(data, max_examples, config.seed, data.name)
    kwargs = {'bad_images': config.bad_images} if config.dataset == 'image_folder' else {}
    source = sources.open_source(config.dataset, split, config.data_dir or None, image_size=stored_size(config),
                                 **kwargs)
    if not max_examples and split == config.eval_train_split:
        raise ValueError(f'{config.dataset} is streamed: set config key "eval.max_train_examples" to the number of '
                         f'{split} images for the kNN bank and linear probe (it has {len(source)})')
    return subsample(source, max_examples, config.seed, f'{config.dataset}:{split}')


def load_train_data(config, mesh, workdir: str = '') -> TrainData:
    """The training split, on every device when it fits in ``device_data_max_mb``, with ``config.sampler``."""
    if config.dataset in STREAMED:
        source = sources.open_source(config.dataset, config.train_split, config.data_dir or None,
                                     image_size=stored_size(config))
        on_device, arrays = False, {}
    else:
        source = load_split(config, config.train_split, workdir=workdir)
        on_device = source.images.nbytes <= config.device_data_max_mb * 2 ** 20
        arrays = {}
        if on_device:
            arrays = parallel.put_replicated({'images': source.images, 'labels': source.labels.astype(np.int32)},
                                             mesh)
    sampler = samplers.create_sampler(config, len(source))
    return TrainData(source, config.batch_size, config.seed, mesh, on_device, arrays, sampler, sampler.init_state())
