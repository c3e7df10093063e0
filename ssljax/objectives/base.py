"""The objective contract: an objective is static settings plus pure functions.

The train loop (ssljax/train.py) knows nothing about any method. It augments the views, then calls

    head_variables, objective_state = objective.init(rng, encoder_variables)
    loss, out = objective.loss(variables, objective_state, views, batch, rng)     # differentiated w.r.t. params
    params, objective_state = objective.update(params, objective_state, step)     # after the optimizer step

where ``variables = {'params': {'encoder': ..., <head>: ...}, 'batch_stats': {...same keys...}}`` and ``out`` is a
:class:`LossOutput` carrying metrics, the new batch statistics, the new objective state and the features that the
online linear probe trains on. ``objective_state`` is any pytree the method carries: a target network, DirectPred's EMA
correlation matrix, a MoCo queue, per-sample temperatures indexed by ``batch['index']``, DINO's centre. It is part of
the train state, so it is checkpointed and restored with everything else.

Each method is a frozen dataclass registered by name with :func:`register`. Its fields ARE its config keys
(``config.objective.KEY``) with their published defaults: ``configs/common.py`` fills a config's objective block from
them (:meth:`Objective.config_defaults`), ``from_config`` reads every one back as ``config.objective[KEY]``, and a
field that is not a config key (a fact of the run, the view size) is declared with :func:`derived`. Modules (projector,
predictor, heads) are properties built from those fields. ``check_config(config, num_devices)`` validates the keys
before anything is built or any data read (``ssljax.configure.validate`` calls it; so does :func:`create_objective`).
:class:`Forward` is the helper a loss uses to run the encoder and heads while collecting the updated BatchNorm
statistics.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, Callable, ClassVar, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax.config_lib import ConfigError
from ssljax.models.heads import MLP

PyTree = Any

# Partition specs for Context.per_device and Objective.state_partition. AXIS names every batch axis of the mesh
# (ssljax.parallel.BATCH_AXES: 'data' and 'fsdp'): collectives over it reach every device.
AXIS = ('data', 'fsdp')
BATCH = jax.sharding.PartitionSpec(AXIS)
REPLICATED = jax.sharding.PartitionSpec()


@flax.struct.dataclass
class LossOutput:
    """What ``Objective.loss`` returns next to the scalar loss."""

    metrics: dict  # scalar arrays, logged as train/<name>
    batch_stats: PyTree  # updated BatchNorm statistics of the online networks (same tree as the input)
    objective_state: PyTree  # the method's state after this step (target network, F, queue, ...)
    probe_features: jax.Array  # float32 [B, D] encoder features the online probe trains on (gradient stopped there)


@dataclasses.dataclass(frozen=True)
class Context:
    """Facts about the run an objective may need when it is built.

    ``mesh`` is the run's device mesh (axes ``'data'`` and ``'fsdp'``, the batch split over both; None outside a run,
    e.g. in a notebook): losses see the global batch and XLA inserts the collectives, and :meth:`per_device` runs part
    of a loss on each device's shard of the batch instead (MoCo's shuffled BatchNorm, per-device negatives). Its
    inputs given as :data:`REPLICATED` are gathered whole onto every device: pass no fsdp-sharded parameters there.
    """

    encoder: nn.Module
    feature_dim: int
    total_steps: int
    global_batch: int
    num_examples: int
    dtype: Any = jnp.float32
    mesh: Any = None
    steps_per_epoch: int = 0

    @property
    def num_devices(self) -> int:
        return 1 if self.mesh is None else int(self.mesh.devices.size)

    @property
    def per_sample_rows(self) -> int:
        """Rows of a per-sample state table: num_examples rounded up to a multiple of the device count."""
        n = self.num_devices
        return -(-self.num_examples // n) * n

    def per_device(self, fn, in_specs, out_specs):
        """``fn`` run once per device on its shard, through ``jax.shard_map`` over every batch axis (:data:`AXIS`).

        ``in_specs`` / ``out_specs`` are pytrees (prefixes) of :data:`BATCH` (split along the leading axis, each
        device sees its B / n rows) and :data:`REPLICATED` (every device sees the whole value). Inside ``fn``,
        ``jax.lax.psum(x, AXIS)`` / ``pmean`` / ``all_gather`` reach the other devices. Anything returned with
        :data:`REPLICATED` must be equal on every device (average it with ``pmean`` first, e.g. BatchNorm running
        statistics computed per device). Without a mesh (a notebook), a one-device mesh is used, so ``fn`` runs
        once on the whole batch and the collectives are identities. See :func:`ssljax.parallel.per_device`.
        """
        from ssljax import parallel

        return parallel.per_device(fn, self.mesh, in_specs, out_specs)


class Forward:
    """Runs modules on one set of variables and collects their new BatchNorm statistics (trace-time helper).

    ``fw = Forward(variables); feats = fw.encode(encoder, views); z = fw.apply('projector', projector, x)`` then
    ``fw.batch_stats`` is the updated statistics tree to return in :class:`LossOutput`.

    ``bn_per_view`` picks how several views share BatchNorm (in :meth:`encode` and :meth:`apply_views`):

    - False (the default; SimCLR's and DINO's references): views of equal shape are concatenated and go through the
      module once, so every BatchNorm layer normalises with the mean and variance over all of them, and its running
      statistics take one update from that joint batch.
    - True (BYOL's, SimSiam's, Barlow Twins', VICReg's and DirectPred's references, and solo-learn for every method):
      the module runs once per view, in the views' order, so view v is normalised with statistics of view v's batch
      alone (mu_v, sigma_v^2) and the running statistics take one update per view, each from the previous one's
      result, as PyTorch modules called once per view do: with momentum m (Flax's convention, PyTorch's 1 - m),
          r <- m r + (1 - m) mu_1,  then  r <- m r + (1 - m) mu_2,  ...

    Either way, under ``jax.jit`` on a mesh the batch axis is the global batch, so the statistics span every device
    (SyncBatchNorm in the references).
    """

    def __init__(self, variables: dict, train: bool = True, bn_per_view: bool = False):
        self.params = variables['params']
        self.batch_stats = dict(variables.get('batch_stats', {}))
        self.train = train
        self.bn_per_view = bool(bn_per_view)

    def apply(self, name: str, module: nn.Module, *args, **kwargs):
        """module.apply on the subtree ``name``; updates the subtree's batch statistics in train mode."""
        module_vars = {'params': self.params[name]}
        if self.batch_stats.get(name):  # an empty subtree (a ViT, a head without BN) has nothing to update
            module_vars['batch_stats'] = self.batch_stats[name]
        if self.train and 'batch_stats' in module_vars:
            out, updates = module.apply(module_vars, *args, train=True, mutable=['batch_stats'], **kwargs)
            self.batch_stats[name] = updates['batch_stats']
            return out
        return module.apply(module_vars, *args, train=self.train, **kwargs)

    def encode(self, encoder: nn.Module, views: Sequence[jax.Array], name: str = 'encoder') -> list[dict]:
        """Encodes each view: once per view (``bn_per_view``) or once per group of views of equal shape.

        Joint mode runs one forward per resolution (not per view), which is faster, and BatchNorm then normalises
        with statistics over all views of that resolution (SimCLR's reference; DINO's MultiCropWrapper). Per-view
        mode runs the views one after the other (see the class docstring). Returns one output dict per view
        (``'pooled'`` float32 [B, D], plus ``'feature_map'`` or ``'tokens'``).
        """
        if self.bn_per_view:
            return [self.apply(name, encoder, v) for v in views]
        groups: dict[tuple, list[int]] = {}
        for i, v in enumerate(views):
            groups.setdefault(tuple(v.shape), []).append(i)
        outputs: list = [None] * len(views)
        for indices in groups.values():
            out = self.apply(name, encoder, jnp.concatenate([views[i] for i in indices], axis=0))
            for j, i in enumerate(indices):
                outputs[i] = jax.tree.map(lambda a: jnp.split(a, len(indices), axis=0)[j], out)
        return outputs

    def apply_views(self, name: str, module: nn.Module, xs: Sequence[jax.Array]) -> list[jax.Array]:
        """Applies a head to several views: once per view (``bn_per_view``), else as one concatenated batch."""
        if self.bn_per_view:
            return [self.apply(name, module, x) for x in xs]
        y = self.apply(name, module, jnp.concatenate(list(xs), axis=0))
        return list(jnp.split(y, len(xs), axis=0))


def grouped_forward(variables: dict, n_groups: int, x: jax.Array, fn: Callable) -> tuple:
    """``fn(Forward, chunk)`` on ``n_groups`` consecutive equal chunks of ``x``, BatchNorm statistics per chunk.

    -> (fn's outputs re-assembled to x's row order, batch statistics: the mean over chunks of each chunk's update,
    i.e. r <- m r + (1 - m) mean_g mu_g, as averaging per-GPU running statistics gives). One vmapped forward
    (MoCo v2's and DenseCL's per-GPU BatchNorm).
    """
    b = x.shape[0]
    chunks = x.reshape(n_groups, b // n_groups, *x.shape[1:])

    def one(chunk):
        fw = Forward(variables)
        return fn(fw, chunk), fw.batch_stats

    outs, stats = jax.vmap(one)(chunks)
    outs = jax.tree.map(lambda a: a.reshape(b, *a.shape[2:]), outs)
    return outs, jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)


def mlp_from_config(
    cfg, prefix: str, dtype, *, last_bn: bool = False, last_bn_affine: bool = True, use_bias: bool = True
) -> MLP:
    """The MLP of ``cfg.<prefix>_hidden``, ``_dim``, ``_bn``; the method fixes the rest (architecture, not a knob)."""
    return MLP(
        hidden_dims=tuple(cfg[f'{prefix}_hidden']),
        out_dim=cfg[f'{prefix}_dim'],
        use_bn=cfg[f'{prefix}_bn'],
        last_bn=last_bn,
        last_bn_affine=last_bn_affine,
        use_bias=use_bias,
        dtype=dtype,
    )


def init_heads(rng: jax.Array, heads: dict[str, tuple[nn.Module, tuple]]) -> dict:
    """Initialises named head modules on example inputs: ``{name: (module, example_args)}`` -> variables dict."""
    params, stats = {}, {}
    for i, (name, (module, example_args)) in enumerate(heads.items()):
        variables = module.init(jax.random.fold_in(rng, i), *example_args, train=False)
        params[name] = variables['params']
        if 'batch_stats' in variables:
            stats[name] = variables['batch_stats']
    return {'params': params, 'batch_stats': stats}


def cosine_ema_momentum(base: float, step: jax.Array, total_steps: int, final: float = 1.0) -> jax.Array:
    """BYOL's target momentum tau_t = final - (final - base) (cos(pi t / T) + 1) / 2, rising from base to final."""
    progress = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
    return final - (final - base) * (jnp.cos(math.pi * progress) + 1.0) / 2.0


def ema_update(target: PyTree, online: PyTree, momentum: jax.Array) -> PyTree:
    """target <- m target + (1 - m) online, leaf by leaf."""
    return jax.tree.map(lambda t, o: momentum * t + (1.0 - momentum) * o, target, online)


def ema_network(network: dict, params: dict, momentum: jax.Array) -> dict:
    """Moves a target/teacher network ``{'params': {name: ...}, 'batch_stats': ...}`` towards ``params[name]``."""
    online = {name: params[name] for name in network['params']}
    return dict(network, params=ema_update(network['params'], online, momentum))


def steps_per_epoch(ctx: Context) -> int:
    """Optimizer steps per epoch: the run's value, or num_examples // global_batch outside a run (at least 1)."""
    if ctx.steps_per_epoch > 0:
        return int(ctx.steps_per_epoch)
    return max(1, ctx.num_examples // max(1, ctx.global_batch))


# ----- config checks (Objective.check_config): one ConfigError line naming the key ---------------------------------


def require(ok: bool, key: str, message: str) -> None:
    """Raises ``ConfigError('config key "objective.KEY" MESSAGE')`` unless ``ok``."""
    if not ok:
        raise ConfigError(f'config key "objective.{key}" {message}')


def require_predictor_dim(values: dict, why: str) -> None:
    """The predictor's output must have the projector's width (it is compared with a projection): ConfigError."""
    require(
        values['predictor_dim'] == values['projector_dim'],
        'predictor_dim',
        f'({values["predictor_dim"]}) must equal objective.projector_dim ({values["projector_dim"]}){why}',
    )


def check_temperature(cfg, key: str = 'temperature') -> float:
    """``cfg[key]`` as a float, which must be > 0 (a softmax temperature)."""
    value = float(cfg[key])
    require(value > 0, key, f'must be > 0, got {cfg[key]!r}')
    return value


def check_choice(cfg, key: str, known: Sequence[str]) -> None:
    """``cfg[key]`` must be one of ``known``."""
    require(cfg[key] in known, key, f'must be one of {", ".join(known)}, got {cfg[key]!r}')


def count_views(config) -> int:
    """How many views ``config.augment`` makes per image (each entry of ``augment.order`` times its ``count``)."""
    views = config.augment.views
    return sum(int(views[name].get('count', 1)) for name in config.augment.order)


# ----- the method's config keys: its dataclass fields ---------------------------------------------------------------

_DERIVED = 'ssljax_derived'
_KEY = 'ssljax_config_key'


def derived(default: Any = None) -> Any:
    """A field that is not a config key: ``from_config`` computes it from the run or from other config sections
    (the view size, the model's patch), so it takes no place in ``config.objective``."""
    return dataclasses.field(default=default, metadata={_DERIVED: True})


def setting(default: Any, *, key: str) -> Any:
    """A config key held by a field of another name (``PredictorBYOL.kind`` is ``objective.predictor``)."""
    return dataclasses.field(default=default, metadata={_KEY: key})


def _cast(default: Any, value: Any) -> Any:
    """``value`` as the type of the field's default (a config may hold 2.0 for an int, 1 for a float)."""
    if isinstance(default, bool):
        return bool(value)
    if isinstance(default, int):
        return int(round(value)) if isinstance(value, float) else int(value)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, tuple):
        return tuple(value)
    if isinstance(default, str):
        return str(value)
    return value


@dataclasses.dataclass(frozen=True)
class Objective(abc.ABC):
    """Base of every method. Subclasses are frozen dataclasses: hashable, static under jit.

    Every field but ``ctx`` and the :func:`derived` ones is a config key of ``config.objective`` whose default is the
    method's published value (the class docstring names the source); the method's config file declares where its
    recipe differs (``configs/common.py``: ``recipe``).
    """

    ctx: Context
    name: ClassVar[str] = 'objective'
    # Heads the method sets itself (e.g. DirectPred's predictor): the optimizer leaves them alone.
    frozen_heads: ClassVar[tuple[str, ...]] = ()

    # ----- config keys ---------------------------------------------------------------------------------------------
    @classmethod
    def config_fields(cls) -> dict[str, dataclasses.Field]:
        """{config key: field} of every ``config.objective`` key the method reads."""
        return {
            f.metadata.get(_KEY, f.name): f
            for f in dataclasses.fields(cls)
            if f.name != 'ctx' and not f.metadata.get(_DERIVED)
        }

    @classmethod
    def config_defaults(cls) -> dict[str, Any]:
        """{config key: published default}: what ``configs/common.py`` writes into ``config.objective``."""
        return {key: f.default for key, f in cls.config_fields().items()}

    @classmethod
    def config_values(cls, config) -> dict[str, Any]:
        """{config key: value} read as ``config.objective[KEY]``, each cast to its default's type."""
        cfg = config.objective
        values = {}
        for key, f in cls.config_fields().items():
            if key not in cfg:
                raise ConfigError(
                    f'config key "objective.{key}" is missing: {cls.name} reads it (default {f.default!r})'
                )
            values[key] = _cast(f.default, cfg[key])
        return values

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        """Validates the method's ``config.objective`` keys (and what it needs of ``config.model`` / ``augment``)
        without building anything or reading data: a :class:`ConfigError` whose one line names the key, as
        ``config key "objective.KEY" ...``. ``ssljax.configure.validate`` and :func:`create_objective` call it
        (after ``config_lib.check_ranges`` in a run). Default: no check."""
        return None

    @classmethod
    def from_config(cls, config, ctx: Context) -> 'Objective':
        """Builds the method from the whole run config (its own keys live in ``config.objective``); methods with
        :func:`derived` fields compute them here and pass them to :meth:`build`."""
        return cls.build(config, ctx)

    @classmethod
    def build(cls, config, ctx: Context, **derived_values) -> 'Objective':
        """The method with every config key from ``config.objective`` (``config_values``) and ``derived_values``."""
        fields = cls.config_fields()
        return cls(
            ctx=ctx, **{fields[key].name: value for key, value in cls.config_values(config).items()}, **derived_values
        )

    def mlp(self, prefix: str, *, last_bn: bool = False, last_bn_affine: bool = True, use_bias: bool = True) -> MLP:
        """The MLP of the fields ``<prefix>_hidden``, ``_dim``, ``_bn``; the keywords are the method's architecture."""
        keys = {f'{prefix}_{part}': getattr(self, f'{prefix}_{part}') for part in ('hidden', 'dim', 'bn')}
        return mlp_from_config(
            keys, prefix, self.ctx.dtype, last_bn=last_bn, last_bn_affine=last_bn_affine, use_bias=use_bias
        )

    # ----- the contract ---------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def init(self, rng: jax.Array, encoder_variables: dict) -> tuple[dict, PyTree]:
        """-> (head variables {'params': {...}, 'batch_stats': {...}}, objective_state)."""

    @abc.abstractmethod
    def loss(
        self, variables: dict, objective_state: PyTree, views: Sequence[jax.Array], batch: dict, rng: jax.Array
    ) -> tuple[jax.Array, LossOutput]:
        """Pure and jit-able; ``variables`` hold the online params (differentiated) and batch statistics."""

    def update(self, params: dict, objective_state: PyTree, step: jax.Array) -> tuple[dict, PyTree]:
        """After the optimizer step: EMA targets, closed-form predictors, queues. Identity by default."""
        return params, objective_state

    # ----- gradient accumulation (config.grad_accum_steps > 1; ssljax/train.py, docs/scaling-mesh.md) ---------------
    # How the method's step splits into micro-batches so that it still equals the one-batch step:
    # 'per_sample': the loss is a mean of per-sample terms and the state is not batch-coupled (MAE, SimMIM): the loop
    #     runs ``loss`` on each micro-batch and averages the gradients.
    # 'split': GradCache (Gao et al. 2021): :meth:`features` runs the encoders on one micro-batch, :meth:`head_loss`
    #     the heads and the loss on the whole batch's features; the loop differentiates head_loss on the global
    #     batch, then recomputes each micro-batch's encoder forward and accumulates its vector-Jacobian product with
    #     the cached feature gradients (batch-coupled losses: negatives, cross-correlations, queues, centres).
    # '': no exact accumulation (a ConfigError names the method unless grad_accum_mode='per_microbatch').
    accumulation: ClassVar[str] = ''

    def features(
        self, variables: dict, objective_state: PyTree, views: Sequence[jax.Array], batch: dict, rng: jax.Array
    ) -> tuple[PyTree, PyTree]:
        """('split') -> (online, fixed) for the rows given (a micro-batch): pytrees of arrays with those rows first.

        ``online`` depends on ``variables['params']['encoder']`` and is differentiated (the online encoder's
        features); ``fixed`` is not (a target / teacher encoder's features, stop-gradient). Per-sample: row i of the
        outputs depends on row i of the inputs only (a BatchNorm-free encoder).
        """
        raise NotImplementedError(f'{self.name} has no split for gradient accumulation')

    def head_loss(
        self,
        variables: dict,
        objective_state: PyTree,
        online: PyTree,
        fixed: PyTree,
        views: Sequence[jax.Array],
        batch: dict,
        rng: jax.Array,
    ) -> tuple[jax.Array, LossOutput]:
        """('split') the rest of :meth:`loss` from the whole batch's features: same value, same LossOutput."""
        raise NotImplementedError(f'{self.name} has no split for gradient accumulation')

    # ----- optional declarations the loop reads (defaults suit most methods) -----------------------------------------
    # The network evaluators score by default: 'online' (params['encoder']) or the name of an entry of the objective
    # state holding {'params': {'encoder': ...}, 'batch_stats': {'encoder': ...}} ('target', 'teacher').
    eval_network: ClassVar[str] = 'online'

    @property
    def freeze_steps(self) -> dict[str, int]:
        """Param-path prefixes ('head/last_layer') frozen for their first N optimizer steps (DINO). None by default."""
        return {}

    def state_partition(self, objective_state: PyTree) -> PyTree:
        """PartitionSpecs for ``objective_state`` (a prefix tree is enough): :data:`REPLICATED` by default.

        Per-sample state (one row per dataset image, indexed by ``batch['index']``) may return :data:`BATCH` for
        those leaves, so each device holds ``1 / n`` of the rows; their leading size must then be a multiple of the
        number of devices (``Context.per_sample_rows`` gives it). Checkpointed and restored like replicated state.
        """
        return REPLICATED

    def encoder_variables(self, params: dict, batch_stats: dict, objective_state: PyTree, network: str = '') -> dict:
        """{'params', 'batch_stats'} of the encoder that evaluation scores: ``network`` or :attr:`eval_network`."""
        network = network or self.eval_network
        if network == 'online':
            return {'params': params['encoder'], 'batch_stats': batch_stats.get('encoder', {})}
        if not isinstance(objective_state, dict) or network not in objective_state:
            have = ['online'] + [
                k
                for k, v in (objective_state or {}).items()
                if isinstance(v, dict) and 'params' in v and 'encoder' in v['params']
            ]
            raise ConfigError(
                f'{self.name} has no network {network!r} to evaluate (an evaluator\'s "network" '
                f'setting); it has: {", ".join(have)}'
            )
        net = objective_state[network]
        return {'params': net['params']['encoder'], 'batch_stats': net.get('batch_stats', {}).get('encoder', {})}


OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: makes the method available as ``config.method = cls.name``."""
    OBJECTIVES[cls.name] = cls
    return cls


def create_objective(config, ctx: Context) -> Objective:
    """Builds ``config.method`` from its config block ``config.objective``, after its ``check_config``."""
    if config.method not in OBJECTIVES:
        raise ConfigError(
            f'unknown method {config.method!r} (config key "method"); known: {", ".join(sorted(OBJECTIVES))}'
        )
    cls = OBJECTIVES[config.method]
    cls.check_config(config, ctx.num_devices)
    return cls.from_config(config, ctx)


@dataclasses.dataclass(frozen=True)
class TwoViewObjective(Objective):
    """Two views through one encoder and projector, then a loss of (z_a, z_b); no state.

    Subclasses (SimCLR, Barlow Twins, VICReg, ...) define ``pair_loss`` and redeclare the fields whose published
    default differs from these (SimCLR's: a 2048-128 projector with BN). ``bn_per_view`` is passed to
    :class:`Forward`: False concatenates the two views (one BatchNorm statistic over 2B rows), True runs encoder and
    projector once per view (statistics of each view's B rows, running statistics updated view a then view b).
    ``projector_arch`` fixes the projector's architecture (``Objective.mlp`` keywords: last_bn, use_bias, ...).
    """

    projector_hidden: tuple = (2048,)
    projector_dim: int = 128
    projector_bn: bool = True
    bn_per_view: bool = False
    projector_arch: ClassVar[dict] = {}

    @property
    def projector(self) -> MLP:
        return self.mlp('projector', **self.projector_arch)

    def init(self, rng, encoder_variables):
        feats = jnp.zeros((2, self.ctx.feature_dim), jnp.float32)
        return init_heads(rng, {'projector': (self.projector, (feats,))}), {}

    @abc.abstractmethod
    def pair_loss(self, z_a: jax.Array, z_b: jax.Array) -> tuple[jax.Array, dict]:
        """-> (loss, metrics) from the two views' projections."""

    def loss(self, variables, objective_state, views, batch, rng):
        fw = Forward(variables, bn_per_view=self.bn_per_view)
        feats = [o['pooled'] for o in fw.encode(self.ctx.encoder, views[:2])]
        return self._loss_from(fw, feats, objective_state)

    def _loss_from(self, fw: Forward, feats: list, objective_state):
        z_a, z_b = fw.apply_views('projector', self.projector, feats)
        loss, metrics = self.pair_loss(z_a, z_b)
        return loss, LossOutput(metrics, fw.batch_stats, objective_state, feats[0])

    accumulation: ClassVar[str] = 'split'

    def features(self, variables, objective_state, views, batch, rng):
        fw = Forward(variables, bn_per_view=self.bn_per_view)
        return [o['pooled'] for o in fw.encode(self.ctx.encoder, views[:2])], ()

    def head_loss(self, variables, objective_state, online, fixed, views, batch, rng):
        return self._loss_from(Forward(variables, bn_per_view=self.bn_per_view), list(online), objective_state)
