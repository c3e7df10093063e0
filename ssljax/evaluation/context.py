"""What every evaluator shares: the run's pieces (`EvalContext`) and the features of a split, encoded on the mesh.

Layout on the device mesh. With n devices and B = the eval batch (a multiple of n, b = B / n per device), a split
of N images is cut into nb = ceil(N / B) blocks of B rows (the last one zero-padded): block j holds rows
jB .. jB + B - 1 and is sharded over the batch axes, so device d holds rows jB + db .. jB + (d + 1)b - 1 of every block.
The images of a split that fits (``config.device_data_max_mb``) are put on the mesh once and kept there; larger
splits are put block by block at each encoding. Sharded, not replicated: encoding is independent per image, so each
device encodes exactly the rows it holds (no communication) and holds 1 / n of the split; the training set is
replicated only because each train step gathers a random batch from it.

Encoding runs one jitted function per block (the same compiled function for every split: all blocks have one
shape), dispatched back to back without reading anything back to the host; the per-block features are stacked on
the device into [nb, B, D] with the same sharding, which the sharded kNN uses as its bank without moving it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssljax import parallel
from ssljax.data import augment, sources

SPLITS = ('train', 'test')


def to_host(x: jax.Array) -> np.ndarray:
    """A (possibly multi-host) array as one numpy array on every process."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def read_rows(images, rows: np.ndarray) -> np.ndarray:
    """uint8 [len(rows), H, W, C] of a split's images: a numpy array, or a random-access source read on demand
    (``get(indices)['image']``)."""
    if isinstance(images, np.ndarray):
        return images[rows]
    return np.asarray(images.get(rows)['image'])


def eval_batch_size(config, mesh) -> int:
    """Images per encoder call: ``config.eval.batch_size`` rounded down to a multiple of the device count."""
    n = mesh.devices.size
    return max(n, (config.eval.batch_size // n) * n)


@dataclasses.dataclass
class Features:
    """Features of one split under one network.

    values: float32 [nb, B, D] on the mesh, sharded P(None, ('data', 'fsdp')); flat row r = jB + i is image r, rows from
      ``count`` on are padding (features of zero images). labels: int32 [count] on the host.
    """

    values: jax.Array
    labels: np.ndarray
    count: int
    _host: np.ndarray | None = dataclasses.field(default=None, repr=False)
    _device_labels: jax.Array | None = dataclasses.field(default=None, repr=False)

    @property
    def dim(self) -> int:
        return int(self.values.shape[-1])

    def host(self) -> np.ndarray:
        """float32 [count, D] numpy, in split order (fetched once)."""
        if self._host is None:
            self._host = to_host(self.values).reshape(-1, self.dim)[: self.count]
        return self._host

    def flat(self) -> jax.Array:
        """float32 [nb * B, D] on the device, padding rows included (at the end)."""
        return self.values.reshape(-1, self.dim)

    def device_labels(self) -> jax.Array:
        """int32 [nb, B] in the layout and sharding of ``values``; padding rows are labelled 0 (never neighbours)."""
        if self._device_labels is None:
            nb, b = self.values.shape[:2]
            padded = np.zeros(nb * b, np.int32)
            padded[: self.count] = self.labels
            self._device_labels = _put(padded.reshape(nb, b), self.values.sharding)
        return self._device_labels


def _put(array: np.ndarray, sharding) -> jax.Array:
    """A host array that every process holds in full, laid out on the mesh with ``sharding``."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


@dataclasses.dataclass
class EvalContext:
    """The pieces of a run evaluators need; built once per run by `make_context`.

    The feature cache lives here: ``features(state, network, split)`` encodes a (network, split) once until
    ``clear_cache()``, which `EvalRunner.run` calls around every run, so evaluators of one run share the features.
    """

    config: Any  # the run's ConfigDict
    mesh: jax.sharding.Mesh
    encoder: Any  # flax module: apply(variables, x, train=False)['pooled'] -> [B, D]
    objective: Any  # ssljax.objectives.Objective (encoder_variables, eval_network)
    eval_size: int  # side of the evaluation view
    mean: tuple  # normalisation of the evaluation view (the first train view's)
    std: tuple
    views: tuple  # the run's train views (ViewConfig), for alignment
    train: sources.Split  # kNN bank / linear-probe training set
    test: sources.Split
    num_classes: int
    workdir: str = ''  # figures go to workdir/figures ('' = no figures)
    seed: int = 0
    batch_size: int = 0  # images per encoder call (0: from config.eval.batch_size and the mesh)
    encode_count: int = 0  # (network, split) encodings so far, for tests and logs

    def __post_init__(self):
        n = self.mesh.devices.size
        self.batch_size = eval_batch_size(self.config, self.mesh) if not self.batch_size else self.batch_size
        if self.batch_size % n:
            raise ValueError(f'eval batch size {self.batch_size} is not a multiple of the {n} devices')
        self.block_sharding = parallel.batch_sharded(self.mesh)
        self.stacked_sharding = NamedSharding(self.mesh, P(None, parallel.batch_axes(self.mesh)))
        self._cache: dict = {}
        self._cache_state = None
        self._resident: dict = {}
        self._jitted: dict = {}
        size, mean, std, encoder = self.eval_size, self.mean, self.std, self.encoder

        def encode(variables, images):
            x = augment.eval_view(images, size, mean, std)
            return encoder.apply(variables, x, train=False)['pooled'].astype(jnp.float32)

        self._encode = jax.jit(encode, out_shardings=self.block_sharding)
        self._stack = jax.jit(lambda xs: jnp.stack(xs), out_shardings=self.stacked_sharding)

    # ----- splits and networks --------------------------------------------------------------------------------------
    def split(self, name: str) -> sources.Split:
        if name not in SPLITS:
            raise ValueError(f'unknown evaluation split {name!r}; known: {", ".join(SPLITS)}')
        return self.train if name == 'train' else self.test

    def resolve_network(self, network: str) -> str:
        """'' -> the objective's ``eval_network`` ('online' unless the method says otherwise)."""
        return network or getattr(self.objective, 'eval_network', 'online')

    def encoder_variables(self, state, network: str = '') -> dict:
        """{'params', 'batch_stats'} of the encoder ``network`` in ``state`` (a TrainState)."""
        return self.objective.encoder_variables(
            state.params, state.batch_stats, state.objective_state, self.resolve_network(network)
        )

    # ----- encoding -------------------------------------------------------------------------------------------------
    def num_blocks(self, count: int) -> int:
        return -(-count // self.batch_size)

    def blocks(self, data, key=None) -> list[jax.Array]:
        """Images as blocks of ``batch_size`` on the mesh, sharded over the batch axes (the last one zero-padded).

        ``data``: uint8 [N, H, W, 3] numpy, a Split, or any random-access source (``len`` and ``get(indices)``, read
        block by block, each process reading only the rows of its own devices). With ``key`` the blocks stay on the
        device for later calls with the same ``data`` when the images fit in ``config.device_data_max_mb``;
        otherwise they are put anew each time.
        """
        if key is not None and key in self._resident and self._resident[key][0] is data:
            return self._resident[key][1]
        images = data.images if isinstance(data, sources.Split) else data
        count, bsz = len(images), self.batch_size
        out, nbytes = [], 0
        local = None if isinstance(images, np.ndarray) else self.local_rows(bsz)
        template = None
        for start in range(0, count, bsz):
            if local is None:
                block = images[start : start + bsz]
            else:  # read on demand: this process decodes only the rows its devices hold, the rest stays zero
                rows = local[start + local < count]
                if len(rows) or template is None:  # (a process with no row in a block still needs the shape)
                    wanted = start + rows if len(rows) else np.array([start])
                    read = read_rows(images, wanted)[: len(rows)]
                    template = read[:0]
                block = np.zeros((bsz, *template.shape[1:]), template.dtype)
                block[rows] = read if len(rows) else template
            if block.shape[0] < bsz:
                block = np.concatenate([block, np.zeros((bsz - block.shape[0],) + block.shape[1:], block.dtype)])
            nbytes += block.nbytes
            out.append(_put(block, self.block_sharding))
        if key is not None and nbytes <= self.config.device_data_max_mb * 2**20:
            self._resident[key] = (data, out)
        return out

    def local_rows(self, block_rows: int) -> np.ndarray:
        """Rows of a block this process's devices hold (all of them on one host; 1 / hosts of them on several)."""
        rows = set()
        for index in self.block_sharding.addressable_devices_indices_map((block_rows,)).values():
            rows.update(range(*index[0].indices(block_rows)))
        return np.asarray(sorted(rows), np.int64)

    def encode(self, variables: dict, data, key=None) -> jax.Array:
        """Eval-view features of ``data`` (as in ``blocks``) -> float32 [nb, B, D] on the mesh (see module doc)."""
        if len(data) == 0:
            raise ValueError('no images to encode')
        return self._stack([self._encode(variables, block) for block in self.blocks(data, key)])

    def features(self, state, network: str, split: str) -> Features:
        """Features of ``split`` ('train' / 'test') under ``network`` of ``state``, encoded once until
        ``clear_cache()`` or until another state is asked for."""
        if state is not self._cache_state:
            self.clear_cache()
            self._cache_state = state
        key = (self.resolve_network(network), split)
        if key not in self._cache:
            data = self.split(split)
            values = self.encode(self.encoder_variables(state, network), data.images, key=split)
            self._cache[key] = Features(values, np.asarray(data.labels, np.int32), len(data.labels))
            self.encode_count += 1
        return self._cache[key]

    def clear_cache(self) -> None:
        """Forgets the features (device memory is released); the resident images stay."""
        self._cache.clear()
        self._cache_state = None

    def map_blocks(
        self, fn: Callable, args, images: np.ndarray, key: str | None = None, extra: Callable[[int], Any] | None = None
    ) -> list:
        """``jit(fn)(args, block[, extra(j)])`` for every block j of ``images``; returns the per-block outputs.

        ``fn`` must return arrays with a leading axis of ``batch_size`` (they are given the block sharding); the
        jitted function is cached by ``fn``, so pass a function defined once, not a new lambda per call.
        """
        if fn not in self._jitted:
            self._jitted[fn] = jax.jit(fn, out_shardings=self.block_sharding)
        jitted = self._jitted[fn]
        blocks = self.blocks(images, key)
        return [jitted(args, b) if extra is None else jitted(args, b, extra(j)) for j, b in enumerate(blocks)]

    def gather_rows(self, outputs: list, count: int) -> np.ndarray:
        """Per-block device outputs [B, ...] -> numpy [count, ...] on the host (padding dropped)."""
        return np.concatenate([to_host(o) for o in outputs], axis=0)[:count]


def make_context(config, exp, train_split: sources.Split, test_split: sources.Split, workdir: str = '') -> EvalContext:
    """The evaluation context of a run from its `train.Experiment` (fields config, mesh, encoder, objective, views,
    eval_size, num_classes) and its evaluation splits."""
    view = exp.views[0]
    return EvalContext(
        config=config,
        mesh=exp.mesh,
        encoder=exp.encoder,
        objective=exp.objective,
        eval_size=exp.eval_size,
        mean=tuple(view.mean),
        std=tuple(view.std),
        views=tuple(exp.views),
        train=train_split,
        test=test_split,
        num_classes=exp.num_classes,
        workdir=workdir or '',
        seed=int(config.seed),
    )
