"""From a config to global batches on the device mesh.

Two ways to feed the jitted step, with the same sampling (``loader.global_batch_indices(N, B, seed, step)``):
- device-resident (datasets up to ``device_data_max_mb``): the uint8 images and labels sit on every device once,
  each step sends only the batch's indices and the step gathers the images itself, so the host never sets the pace;
- streamed: a host thread assembles each host's slice of uint8 images (``loader.HostLoader``).
Either way the step receives ``{'image': uint8 [B,H,W,3], 'label': int32 [B], 'index': int32 [B]}``, sharded along
the mesh's data axis.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import jax
import numpy as np

from ssljax import parallel
from ssljax.data import loader, sources


@dataclasses.dataclass
class TrainData:
    split: sources.Split
    global_batch: int
    seed: int
    mesh: jax.sharding.Mesh
    on_device: bool
    device_arrays: dict            # {'images', 'labels'} replicated on every device, or {} when streamed

    @property
    def num_examples(self) -> int:
        return len(self.split.labels)

    def batches(self, start_step: int) -> Iterator[dict]:
        """Global batches from ``start_step`` on (the data position is the step)."""
        if self.on_device:
            return self._index_batches(start_step)
        host = loader.HostLoader(self.split, self.global_batch, self.seed, start_step,
                                 jax.process_index(), jax.process_count())
        return (parallel.global_batch_from_host(b, self.mesh) for b in host)

    def _index_batches(self, step: int) -> Iterator[dict]:
        local = loader.host_slice(self.global_batch, jax.process_index(), jax.process_count())
        while True:
            indices = loader.global_batch_indices(self.num_examples, self.global_batch, self.seed, step)
            yield parallel.global_batch_from_host({'index': indices[local].astype(np.int32)}, self.mesh)
            step += 1


def gather_batch(batch: dict, device_arrays: dict) -> dict:
    """Inside the step: completes an index-only batch from the device-resident dataset (identity when streamed)."""
    if 'image' in batch:
        return batch
    idx = batch['index']
    return {'image': device_arrays['images'][idx], 'label': device_arrays['labels'][idx], 'index': idx}


def load_split(config, split: str, image_size: int | None = None) -> sources.Split:
    return sources.load_split(config.dataset, split, config.data_dir or None, image_size=image_size or None,
                              cache_dir=config.cache_dir or None)


def load_train_data(config, mesh) -> TrainData:
    split = load_split(config, config.train_split, config.image_size if config.dataset == 'image_folder' else None)
    nbytes = split.images.nbytes
    on_device = nbytes <= config.device_data_max_mb * 2 ** 20
    arrays = {}
    if on_device:
        arrays = parallel.put_replicated({'images': split.images, 'labels': split.labels.astype(np.int32)}, mesh)
    return TrainData(split, config.batch_size, config.seed, mesh, on_device, arrays)
