"""The device mesh: axes 'data' and 'fsdp' over every accelerator of every host; the batch is split over both.

``config.mesh`` names each axis's size, ``(('data', -1), ('fsdp', 1))`` by default (-1: the devices left over), so a
default run is plain data parallelism with every parameter replicated. Both axes carry the batch (as in big_vision
and MaxText): device (d, f) holds its own slice of the global batch; the 'fsdp' axis additionally splits the
parameters, optimizer moments and EMA copies that ``config.sharding_strategy`` assigns to it (ssljax/train.py:
``state_shardings``), and XLA gathers each weight just in time for the layer that needs it. Losses are written on the
global batch and jit over the mesh inserts the collectives, so contrastive negatives and BatchNorm statistics span
all devices. Multi-slice pods: ``config.mesh_dcn`` gives the sizes across slices (a hybrid ICI/DCN mesh from
``jax.experimental.mesh_utils``). Multi-host start-up goes through ``jax.distributed.initialize``.
"""

from __future__ import annotations

import math
import os
import re

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'
FSDP_AXIS = 'fsdp'
AXES = (DATA_AXIS, FSDP_AXIS)  # every mesh has both, in this order (an axis of size 1 changes nothing)
BATCH_AXES = AXES  # the batch is split over every axis: each device holds 1 / n of it
DEFAULT_MESH = ((DATA_AXIS, -1), (FSDP_AXIS, 1))  # plain data parallelism (a config's default: config_lib)
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


# ----- the mesh -----------------------------------------------------------------------------------------------------


def mesh_sizes(axes, num_devices: int, what: str = 'mesh') -> dict[str, int]:
    """``(('data', -1), ('fsdp', 4))`` on ``num_devices`` -> {'data': n / 4, 'fsdp': 4}; axes not named get 1.

    ValueError (the message starts with the problem; configure.validate names the key) for an unknown or repeated
    axis, a size that is 0 or below -1, more than one -1, or sizes whose product does not divide / equal the count.
    """
    sizes, free = {}, []
    for entry in axes:
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise ValueError(f'entries must be (axis, size) pairs, got {entry!r}')
        name, size = entry
        if name not in AXES:
            raise ValueError(f'has unknown axis {name!r}; known: {", ".join(AXES)}')
        if name in sizes or name in free:
            raise ValueError(f'names axis {name!r} twice')
        if isinstance(size, bool) or not isinstance(size, int) or size == 0 or size < -1:
            raise ValueError(f'axis {name!r} has size {size!r}; sizes are positive integers or -1 (the rest)')
        if size == -1:
            free.append(name)
        else:
            sizes[name] = size
    if len(free) > 1:
        raise ValueError(f'has more than one -1 ({", ".join(free)}); at most one axis takes the rest')
    fixed = math.prod(sizes.values())
    if num_devices % fixed:
        raise ValueError(f'sizes {sizes} (product {fixed}) do not divide the {num_devices} devices of the {what}')
    if free:
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(f'sizes {sizes} (product {fixed}) do not use the {num_devices} devices of the {what}')
    return {name: sizes.get(name, 1) for name in AXES}


def make_mesh(devices=None, axes=DEFAULT_MESH, dcn=()) -> Mesh:
    """A ('data', 'fsdp') mesh over ``devices`` (default: all devices of all processes), sizes from ``axes``.

    ``dcn`` (multi-slice): the sizes of the axes across slices, e.g. ``(('data', 4),)`` for 4 slices; ``axes`` are
    then the sizes within one slice (ICI) and the mesh is ``mesh_utils.create_hybrid_device_mesh``'s. Without it,
    ``mesh_utils.create_device_mesh`` orders the devices for the physical topology (on CPU: in device order).
    """
    devices = list(jax.devices() if devices is None else devices)
    if dcn:
        dcn_sizes = mesh_sizes(dcn, dcn_slices(dcn, len(devices)), 'slices')
        slices = math.prod(dcn_sizes.values())
        ici_sizes = mesh_sizes(axes, len(devices) // slices, 'slice')
        array = mesh_utils.create_hybrid_device_mesh(
            [ici_sizes[a] for a in AXES], [dcn_sizes[a] for a in AXES], devices
        )
    else:
        sizes = mesh_sizes(axes, len(devices))
        shape = [sizes[a] for a in AXES]
        array = mesh_utils.create_device_mesh(shape, devices)
    return Mesh(array, AXES)


def dcn_slices(axes, num_devices: int) -> int:
    """The number of slices a ``mesh_dcn`` names (its sizes' product; a -1 there is not allowed)."""
    sizes = [size for _, size in axes]
    if any(s == -1 for s in sizes):
        raise ValueError('cannot take the rest (-1): give every axis its number of slices')
    n = math.prod(sizes)
    if n <= 0 or num_devices % n:
        raise ValueError(f'sizes (product {n}) do not divide the {num_devices} devices')
    return n


def axis_size(mesh: Mesh, axis: str) -> int:
    return int(mesh.shape.get(axis, 1))


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes the batch is split over (all of them)."""
    return tuple(a for a in mesh.axis_names if a in BATCH_AXES)


def batch_shards(mesh: Mesh) -> int:
    """How many slices the batch is cut into: the number of devices."""
    return math.prod(axis_size(mesh, a) for a in batch_axes(mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The leading axis split over every batch axis (P(('data', 'fsdp')))."""
    return NamedSharding(mesh, P(batch_axes(mesh)))


def check_batch(global_batch: int, mesh: Mesh) -> None:
    """The global batch must split evenly over devices and hosts."""
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(
            f'batch_size {global_batch} is not divisible by the number of devices ({n}); use a multiple of {n}'
        )


def global_batch_from_host(local: dict, mesh: Mesh) -> dict:
    """Assembles each host's slice of the batch (numpy) into global arrays sharded over the batch axes."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def put_replicated(tree, mesh: Mesh):
    """Places a host pytree on every device (identical values on every host)."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def per_device(fn, mesh: Mesh | None, in_specs, out_specs):
    """``jax.shard_map(fn)`` over every batch axis: ``fn`` sees each device's shard of the batch.

    ``in_specs`` / ``out_specs``: pytree prefixes of ``P(('data', 'fsdp'))`` (split the leading axis over all
    devices) and ``P()`` (whole value on every device). Use it inside a jitted loss for per-device semantics
    (per-device negatives, the sharded kNN); everything else should stay global. Collectives inside ``fn`` name
    ``BATCH_AXES``. Values returned with ``P()`` must agree across devices (pmean them first). An input passed with
    ``P()`` that is sharded outside (an fsdp-sharded parameter) is gathered whole onto every device at the boundary.
    ``mesh=None`` uses a one-device mesh, so the same loss runs in a notebook without a run's mesh.
    """
    if mesh is None:
        mesh = make_mesh(jax.devices()[:1])
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


# ----- sharding the train state -------------------------------------------------------------------------------------


def path_string(path) -> str:
    """A pytree key path as 'opt_state/0/mu/encoder/Conv_0/kernel' (attribute names, dict keys, sequence indices)."""
    parts = []
    for k in path:
        for attr in ('name', 'key', 'idx'):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return '/'.join(parts)


def fsdp_spec(shape, mesh: Mesh, min_size_mb: float, itemsize: int = 4) -> P:
    """The 'fsdp' rule: split the largest dimension divisible by the fsdp axis size over 'fsdp' (ties: the last such
    dimension); P() when the axis has size 1, the leaf is under ``min_size_mb``, or no dimension divides."""
    n = axis_size(mesh, FSDP_AXIS)
    size_mb = math.prod(shape) * itemsize / 2**20
    if n == 1 or size_mb < min_size_mb:
        return P()
    candidates = [(d, i) for i, d in enumerate(shape) if d % n == 0 and d >= n]
    if not candidates:
        return P()
    _, axis = max(candidates)
    return P(*([None] * axis), FSDP_AXIS)


def strategy_specs(tree, mesh: Mesh, strategy, min_size_mb: float, follow: dict | None = None) -> dict:
    """{path: (shape, PartitionSpec)} for every leaf of ``tree`` (arrays or ShapeDtypeStructs) by ``strategy``.

    ``strategy``: ordered (regex, rule) pairs; the first regex that matches the whole '/'-joined path decides
    (``re.fullmatch``); rules 'fsdp' (:func:`fsdp_spec`) and 'replicate'; no match: replicated. ``follow``
    ({param path: (shape, spec)}): a leaf whose path ends with a parameter's path and has its shape takes that
    parameter's spec whatever the rules say (optimizer moments, EMA targets and teachers), so element-wise updates
    between them need no communication.
    """
    rules = [(re.compile(pattern), rule) for pattern, rule in strategy]
    specs = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = path_string(path)
        shape = tuple(getattr(leaf, 'shape', ()))
        spec = None
        if follow:
            parts = name.split('/')
            for i in range(1, len(parts)):
                hit = follow.get('/'.join(parts[i:]))
                if hit is not None and hit[0] == shape:
                    spec = hit[1]
                    break
        if spec is None:
            rule = next((r for pattern, r in rules if pattern.fullmatch(name)), 'replicate')
            itemsize = getattr(getattr(leaf, 'dtype', None), 'itemsize', 4)
            spec = fsdp_spec(shape, mesh, min_size_mb, itemsize) if rule == 'fsdp' else P()
        specs[name] = (shape, spec)
    return specs


def tree_shardings(trees: dict, mesh: Mesh, strategy, min_size_mb: float) -> dict:
    """NamedShardings for ``{'params': ..., 'opt_state': ..., ...}`` by ``strategy`` (paths start with the names);
    a leaf whose path ends with a parameter's path, at its shape, follows that parameter (:func:`strategy_specs`).
    """
    params = strategy_specs({'params': trees.get('params', {})}, mesh, strategy, min_size_mb)
    follow = {path.split('/', 1)[1]: value for path, value in params.items()}
    specs = strategy_specs(trees, mesh, strategy, min_size_mb, follow)
    return jax.tree_util.tree_map_with_path(lambda p, _: NamedSharding(mesh, specs[path_string(p)][1]), trees)
