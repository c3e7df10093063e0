"""One device mesh over every accelerator of every host; batches sharded along 'data', params replicated.

Losses are written on the global batch and jit over the mesh inserts the collectives, so contrastive negatives
and BatchNorm statistics span all devices. Multi-host start-up goes through ``jax.distributed.initialize``.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'
_INITIALIZED = False  # initialize_distributed ran (it must run once, before anything touches a device)


def initialize_distributed(config) -> None:
    """Starts jax.distributed for multi-host runs, from config keys or from the environment.

    ``distributed.coordinator_address`` / ``num_processes`` / ``process_id`` when set; otherwise JAX's own detection
    of the cluster (SLURM, TPU pods, or JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID). A single
    process with none of these set runs without it.
    """
    global _INITIALIZED
    if _INITIALIZED:
        return
    _INITIALIZED = True
    d = config.distributed
    address = d.coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS', '')
    if address:
        num = d.num_processes or int(os.environ.get('JAX_NUM_PROCESSES', '0'))
        pid = d.process_id if d.process_id >= 0 else int(os.environ.get('JAX_PROCESS_ID', '-1'))
        if num <= 0 or pid < 0:
            raise ValueError(
                'a coordinator address needs distributed.num_processes and distributed.process_id '
                '(or JAX_NUM_PROCESSES and JAX_PROCESS_ID)'
            )
        jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)
    elif 'SLURM_NTASKS' in os.environ and int(os.environ['SLURM_NTASKS']) > 1:
        jax.distributed.initialize()


def make_mesh(devices=None) -> Mesh:
    """A one-axis mesh named 'data' over ``devices`` (default: all devices of all processes)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch(global_batch: int, mesh: Mesh) -> None:
    """The global batch must split evenly over devices and hosts."""
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(
            f'batch_size {global_batch} is not divisible by the number of devices ({n}); use a multiple of {n}'
        )


def global_batch_from_host(local: dict, mesh: Mesh) -> dict:
    """Assembles each host's slice of the batch (numpy) into global arrays sharded along 'data'."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def put_replicated(tree, mesh: Mesh):
    """Places a host pytree on every device (identical values on every host)."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def per_device(fn, mesh: Mesh | None, in_specs, out_specs):
    """``jax.shard_map(fn)`` over the ``'data'`` axis: ``fn`` sees each device's shard of the batch.

    ``in_specs`` / ``out_specs``: pytree prefixes of ``P('data')`` (split the leading axis) and ``P()`` (whole value
    on every device). Use it inside a jitted loss for per-device semantics (MoCo's shuffled BatchNorm, per-device
    negatives); everything else should stay global. Values returned with ``P()`` must agree across devices (pmean
    them first). ``mesh=None`` uses a one-device mesh, so the same loss runs in a notebook without a run's mesh.
    """
    if mesh is None:
        mesh = Mesh(np.asarray(jax.devices()[:1]), (DATA_AXIS,))
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
