"""The one generic train loop: ``train_and_evaluate(config, workdir)``.

It knows nothing about any method. The objective (ssljax/objectives) supplies init / loss / update and declares what
else it needs (the network evaluation scores, how its state is sharded, parameter prefixes frozen at the start); the
config names the views (``augment.views``, optional patch masks included), the backbone and all its settings
(``model``), the sampler that composes batches (``sampler``) and the evaluators (``evals``). The loop does the rest:
data, on-device augmentation, the optimizer, the online probe, checkpoints, logging, evaluation. Hooks
(``after_step``, ``after_checkpoint``) let a caller watch or interrupt the run without touching this file.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssljax import checkpoint as ckpt_lib
from ssljax import config_lib, configure, logging_lib, optim, parallel, preemption
from ssljax import workdir as workdir_lib
from ssljax.data import pipeline, samplers, sources
from ssljax.data import views as views_lib
from ssljax.evaluation import EvalRunner, linear_probe, make_context
from ssljax.models import registry
from ssljax.objectives import Context, LossOutput, Objective, create_objective


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops without saving the bad state."""


# =====================================================================================================================
# Train state
# =====================================================================================================================
@flax.struct.dataclass
class TrainState:
    """Everything that must survive a restart. The data position is ``step`` (and the sampler's state)."""

    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any  # {'encoder': ..., <head name>: ...}
    batch_stats: Any  # same top-level names, BatchNorm running statistics
    opt_state: Any
    objective_state: Any  # target network, correlation matrix, queue, centre, per-sample tables, ...
    probe_params: Any  # online linear probe trained on stop-gradient features
    probe_opt_state: Any
    rng: jax.Array  # uint32 key data; per-step keys are fold_in(key, step)
    nonfinite_step: jax.Array  # int32: first step whose loss was not finite, -1 while all are
    sampler_state: Any = None  # the batch sampler's state (pseudo-labels, ...); {} for the default sampler


# =====================================================================================================================
# The static pieces of a run
# =====================================================================================================================
@dataclasses.dataclass
class Experiment:
    config: Any
    mesh: Any
    encoder: Any
    feature_dim: int
    objective: Objective
    views: tuple
    eval_size: int
    total_steps: int
    steps_per_epoch: int
    num_classes: int
    tx: optax.GradientTransformation
    schedule: Callable
    probe_tx: optax.GradientTransformation
    masks: tuple = ()


def build_experiment(config, mesh, num_examples: int, num_classes: int) -> Experiment:
    dtype = jnp.bfloat16 if config.dtype == 'bfloat16' else jnp.float32
    encoder, feature_dim = registry.encoder_from_config(config)
    total_steps, steps_per_epoch = config_lib.total_steps(config, num_examples)
    ctx = Context(
        encoder=encoder,
        feature_dim=feature_dim,
        total_steps=total_steps,
        global_batch=config.batch_size,
        num_examples=num_examples,
        dtype=dtype,
        mesh=mesh,
        steps_per_epoch=steps_per_epoch,
    )
    objective = create_objective(config, ctx)
    views, masks = views_lib.views_from_config(config)
    tx, schedule = optim.create_optimizer(
        config, total_steps, steps_per_epoch, objective.frozen_heads, freeze_steps=objective.freeze_steps
    )
    probe_peak = config.eval.online_probe_lr * config.batch_size / 256
    probe_tx = optax.sgd(optax.cosine_decay_schedule(probe_peak, total_steps), momentum=0.9)
    return Experiment(
        config,
        mesh,
        encoder,
        feature_dim,
        objective,
        views,
        config.augment.size,
        total_steps,
        steps_per_epoch,
        num_classes,
        tx,
        schedule,
        probe_tx,
        masks,
    )


def state_shardings(exp: Experiment, state: TrainState) -> TrainState:
    """A NamedSharding for every leaf of ``state`` (arrays or ShapeDtypeStructs), from ``config.sharding_strategy``.

    The rules decide the parameters and anything else they match (first match of the '/'-joined path, e.g.
    'params/encoder/Conv_0/kernel'; 'fsdp' splits a leaf of at least ``sharding_min_size_mb`` along its largest
    dimension divisible by the mesh's fsdp size; no match: replicated). Optimizer moments and EMA targets / teachers
    (leaves whose path ends with a parameter's path, at its shape) take their parameter's sharding. Objective state
    the objective declares sharded (per-sample tables, ``Objective.state_partition``) keeps that declaration. On the
    default mesh (fsdp size 1) everything but those tables is replicated.
    """
    mesh, config = exp.mesh, exp.config
    strategy = tuple(config_lib.scale_setting(config, 'sharding_strategy'))
    min_mb = float(config_lib.scale_setting(config, 'sharding_min_size_mb'))
    params = parallel.strategy_specs({'params': state.params}, mesh, strategy, min_mb)
    follow = {path.split('/', 1)[1]: value for path, value in params.items()}
    specs = {path: spec for path, (_, spec) in parallel.strategy_specs(state, mesh, strategy, min_mb, follow).items()}
    declared = exp.objective.state_partition(state.objective_state)
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
    objective = jax.tree.map(
        lambda spec, sub: jax.tree.map(lambda _: spec, sub), declared, state.objective_state, is_leaf=is_spec
    )
    for path, spec in jax.tree_util.tree_flatten_with_path(objective, is_leaf=is_spec)[0]:
        if spec != parallel.P():
            specs['objective_state/' + parallel.path_string(path)] = spec
    return jax.tree_util.tree_map_with_path(
        lambda path, _: jax.sharding.NamedSharding(mesh, specs[parallel.path_string(path)]), state
    )


def param_shardings_active(shardings: TrainState) -> bool:
    """Whether any parameter is split (fsdp): then gradients are constrained to their parameters' shardings."""
    return any(not s.is_fully_replicated for s in jax.tree.leaves(shardings.params))


def init_state(exp: Experiment, sampler_state: dict | None = None) -> TrainState:
    """Initialises encoder, heads, objective state, optimizer and online probe from ``config.seed``.

    Created sharded: the shapes come first (``jax.eval_shape``), then ``jax.jit(init, out_shardings=...)`` and
    ``jax.jit(tx.init, out_shardings=...)`` write every array straight into its shards, so nothing is materialised
    whole on one device (random draws are identical whatever the sharding: JAX's partitionable threefry).
    """
    config = exp.config
    key = jax.random.key(config.seed)
    enc_key, head_key, probe_key = jax.random.split(jax.random.fold_in(key, 1), 3)
    sample = jnp.zeros((2, exp.eval_size, exp.eval_size, 3), jnp.float32)

    def init_fn():
        enc_vars = exp.encoder.init(enc_key, sample, train=False)
        heads, objective_state = exp.objective.init(head_key, enc_vars)
        params = {'encoder': enc_vars['params'], **heads['params']}
        batch_stats = {'encoder': enc_vars.get('batch_stats', {}), **heads['batch_stats']}
        return params, batch_stats, objective_state

    probe_params = linear_probe.online_probe_init(probe_key, exp.feature_dim, exp.num_classes)

    def make(params, batch_stats, objective_state, opt_state):
        return TrainState(
            step=jnp.zeros([], jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            objective_state=objective_state,
            probe_params=probe_params,
            probe_opt_state=exp.probe_tx.init(probe_params),
            rng=jax.random.key_data(key),
            nonfinite_step=jnp.full([], -1, jnp.int32),
            sampler_state=jax.tree.map(jnp.asarray, dict(sampler_state or {})),
        )

    shapes = jax.eval_shape(init_fn)
    abstract = jax.eval_shape(lambda p, b, o: make(p, b, o, exp.tx.init(p)), *shapes)
    shardings = state_shardings(exp, abstract)
    params, batch_stats, objective_state = jax.jit(
        init_fn, out_shardings=(shardings.params, shardings.batch_stats, shardings.objective_state)
    )()
    optim.check_param_groups(config, params, exp.objective.frozen_heads)
    opt_state = jax.jit(exp.tx.init, out_shardings=shardings.opt_state)(params)
    state = make(params, batch_stats, objective_state, opt_state)
    return jax.device_put(state, shardings)


# =====================================================================================================================
# The train step
# =====================================================================================================================
def make_train_step(exp: Experiment, state: TrainState | None = None):
    """-> jitted ``step(state, batch, device_data) -> (state, metrics)``; state buffers are donated.

    ``state`` (optional, any state of this experiment) fixes the output shardings (:func:`state_shardings`); without
    it every output is replicated, which only the default mesh allows. Gradients are constrained to their parameters'
    shardings when any parameter is split.
    """
    objective, tx, probe_tx, schedule = exp.objective, exp.tx, exp.probe_tx, exp.schedule
    replicated = parallel.replicated(exp.mesh)
    if state is None and parallel.axis_size(exp.mesh, parallel.FSDP_AXIS) > 1:
        raise ValueError('make_train_step on an fsdp mesh needs the state (its shardings fix the outputs)')
    shardings = None if state is None else state_shardings(exp, state)
    out_state = replicated if shardings is None else shardings
    constrain_grads = shardings is not None and param_shardings_active(shardings)
    accum, accum_kind = accumulation(exp.config, objective)
    if accum > 1:  # a step built without configure.validate (a notebook) refuses what cannot be exact, too
        configure.check_scale(exp.config, exp.mesh.devices.size)
    views_cfg, masks_cfg = exp.views, exp.masks or (None,) * len(exp.views)

    def step_fn(state: TrainState, batch: dict, device_data: dict):
        batch = pipeline.gather_batch(batch, device_data)
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        aug_key, loss_key = jax.random.split(step_key)
        views, masks = views_lib.make_views(batch['image'], aug_key, views_cfg, masks_cfg)
        if any(m is not None for m in masks):
            batch = dict(batch, masks=masks)

        def loss_fn(params):
            variables = {'params': params, 'batch_stats': state.batch_stats}
            return objective.loss(variables, state.objective_state, views, batch, loss_key)

        if accum == 1:
            (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        elif accum_kind == 'split':
            loss, out, grads = _split_step(objective, state, views, batch, loss_key, accum, exp.mesh)
        else:
            loss, out, grads = _micro_batch_step(objective, state, views, batch, loss_key, accum, exp.mesh)
        if constrain_grads:  # fsdp: each gradient reduce-scattered onto its parameter's shards
            grads = jax.lax.with_sharding_constraint(grads, shardings.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        params, objective_state = objective.update(params, out.objective_state, state.step + 1)

        (probe_loss, probe_acc), probe_grads = jax.value_and_grad(linear_probe.online_probe_loss, has_aux=True)(
            state.probe_params, out.probe_features, batch['label']
        )
        probe_updates, probe_opt_state = probe_tx.update(probe_grads, state.probe_opt_state, state.probe_params)
        probe_params = optax.apply_updates(state.probe_params, probe_updates)

        finite = jnp.isfinite(loss)
        nonfinite_step = jnp.where((state.nonfinite_step < 0) & ~finite, state.step, state.nonfinite_step)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=out.batch_stats,
            opt_state=opt_state,
            objective_state=objective_state,
            probe_params=probe_params,
            probe_opt_state=probe_opt_state,
            nonfinite_step=nonfinite_step,
        )
        metrics = {
            'loss': loss,
            'lr': schedule(state.step),
            'probe_loss': probe_loss,
            'probe_acc': probe_acc,
            **out.metrics,
        }
        return new_state, metrics

    return jax.jit(_traced_once(step_fn), donate_argnums=(0,), out_shardings=(out_state, replicated))


# ----- gradient accumulation: the global batch in k micro-batches inside one step ------------------------------------


def accumulation(config, objective: Objective) -> tuple[int, str]:
    """-> (k, how): k = config.grad_accum_steps; how is 'split' (GradCache), 'per_sample' or 'per_microbatch'."""
    k = int(config_lib.scale_setting(config, 'grad_accum_steps'))
    if k == 1:
        return 1, ''
    if config_lib.scale_setting(config, 'grad_accum_mode') == 'per_microbatch':
        return k, 'per_microbatch'
    return k, objective.accumulation


def _to_micro(tree, k: int, mesh):
    """[B, ...] leaves -> [k, B / k, ...]: micro-batch j holds rows j, j + k, j + 2k, ... so that each keeps the
    batch's split over the devices (every device gives each micro-batch B / (n k) of its rows)."""
    spec = jax.sharding.PartitionSpec(None, parallel.batch_axes(mesh))

    def split(x):
        b = x.shape[0]
        y = jnp.swapaxes(x.reshape(b // k, k, *x.shape[1:]), 0, 1)
        return jax.lax.with_sharding_constraint(y, jax.sharding.NamedSharding(mesh, spec))

    return jax.tree.map(split, tree)


def _from_micro(tree):
    """Inverse of :func:`_to_micro`: [k, B / k, ...] -> [B, ...] in the batch's row order."""
    return jax.tree.map(lambda y: jnp.swapaxes(y, 0, 1).reshape(-1, *y.shape[2:]), tree)


def _tree_add(a, b):
    return jax.tree.map(jnp.add, a, b)


def _micro_batch_step(objective, state, views, batch, rng, k: int, mesh):
    """``objective.loss`` on each micro-batch in turn (``lax.scan``), gradients and metrics averaged; batch
    statistics and objective state carried from one micro-batch to the next.

    Equal to the one-batch step for per-sample losses without batch-coupled state ('per_sample': MAE, SimMIM); for
    anything else (``grad_accum_mode='per_microbatch'``) it is a different method: BatchNorm statistics, negatives,
    cross-correlations and queue updates come from B / k rows at a time.
    """
    xs = _to_micro((list(views), batch), k, mesh)

    def body(carry, x):
        grads, batch_stats, objective_state = carry
        mviews, mbatch = x

        def loss_fn(params):
            return objective.loss({'params': params, 'batch_stats': batch_stats}, objective_state, mviews, mbatch, rng)

        (loss, out), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return (_tree_add(grads, g), out.batch_stats, out.objective_state), (loss, out.metrics, out.probe_features)

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grads, batch_stats, objective_state), (losses, metrics, probe) = jax.lax.scan(
        body, (zeros, state.batch_stats, state.objective_state), xs
    )
    grads = jax.tree.map(lambda g: g / k, grads)
    out = LossOutput(
        jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics), batch_stats, objective_state, _from_micro(probe)
    )
    return jnp.mean(losses), out, grads


def _split_step(objective, state, views, batch, rng, k: int, mesh):
    """GradCache: the one-batch loss and gradients, the encoders run one micro-batch at a time.

    Pass 1 (``lax.map``, nothing differentiated, so no activations kept): ``objective.features`` of each micro-batch,
    re-assembled into the whole batch's features. Then ``objective.head_loss`` on them, differentiated with respect
    to the parameters (heads) and to the online features. Pass 2 (``lax.scan``): each micro-batch's encoder forward
    again, and its vector-Jacobian product with that micro-batch's slice of the feature gradients, summed into the
    encoder's gradient. Equal to the one-batch step when row i of the features depends on row i of the input only.
    """
    params, batch_stats, objective_state = state.params, state.batch_stats, state.objective_state
    xs = _to_micro((list(views), batch), k, mesh)

    def encode(encoder_params, mviews, mbatch):
        variables = {'params': dict(params, encoder=encoder_params), 'batch_stats': batch_stats}
        return objective.features(variables, objective_state, mviews, mbatch, rng)

    online, fixed = _from_micro(jax.lax.map(lambda x: encode(params['encoder'], *x), xs))

    def head(p, feats):
        return objective.head_loss(
            {'params': p, 'batch_stats': batch_stats}, objective_state, feats, fixed, views, batch, rng
        )

    (loss, out), (grads, feature_grads) = jax.value_and_grad(head, argnums=(0, 1), has_aux=True)(params, online)

    def body(acc, x):
        mviews, mbatch, g = x
        _, vjp = jax.vjp(lambda e: encode(e, mviews, mbatch)[0], params['encoder'])
        return _tree_add(acc, vjp(g)[0]), None

    encoder_grads, _ = jax.lax.scan(body, grads['encoder'], (*xs, _to_micro(feature_grads, k, mesh)))
    return loss, out, dict(grads, encoder=encoder_grads)


def _traced_once(fn):
    """``fn`` that refuses a second trace: a recompile of the step means a shape or dtype changed between steps.

    (chex.assert_max_traces counts per source location across the whole process, so a notebook or a test running
    two experiments would trip it; this counter belongs to one step function.)
    """
    traces = 0

    @functools.wraps(fn)
    def wrapped(*args):
        nonlocal traces
        traces += 1
        if traces > 1:
            raise AssertionError(
                'the train step is being compiled a second time: an input changed shape, dtype or '
                'structure between steps (silent recompiles are refused)'
            )
        return fn(*args)

    return wrapped


@jax.jit
def _accumulate(sums: dict, metrics: dict) -> dict:
    """Train metrics summed on the device between log intervals (one transfer per interval, not per step)."""
    return jax.tree.map(lambda a, b: a + b.astype(jnp.float32), sums, metrics)


# =====================================================================================================================
# Hooks, signals, checks
# =====================================================================================================================
class Hook:
    """Watches the loop: subclass and pass ``hooks=[...]`` to ``train_and_evaluate``. Methods run on every process."""

    def after_step(self, step: int, state: TrainState) -> None:
        """After optimizer step ``step`` (1-based count of steps taken) was dispatched."""

    def after_checkpoint(self, step: int) -> None:
        """After the checkpoint of ``step`` is complete on disk."""


class Preempted(RuntimeError):
    """The run received SIGTERM or SIGINT; a checkpoint of the current step was written."""


def _check_finite(state: TrainState, ckpt: ckpt_lib.Checkpointer) -> None:
    bad = int(jax.device_get(state.nonfinite_step))
    if bad >= 0:
        kept = ckpt.latest_step()
        where = (
            f'checkpoints up to step {kept} are kept in {ckpt.directory}'
            if kept is not None
            else 'no checkpoint had been written yet'
        )
        raise NonFiniteLossError(
            f'the loss became NaN/inf at step {bad}; stopping without saving that state '
            f'({where}). Lower optimizer.lr, use dtype=float32, or check the data.'
        )


def _last_logged_loss(workdir: str) -> float:
    """The last train/loss in metrics.jsonl (a rerun of a finished run trains no step itself)."""
    path = os.path.join(workdir, 'metrics.jsonl')
    rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    losses = [r['train/loss'] for r in rows if 'train/loss' in r]
    return losses[-1] if losses else float('nan')


class _Timer:
    """Wall time spent in evaluation, checkpoints and sampler refreshes, kept out of the training rate."""

    def __init__(self):
        self.totals: collections.defaultdict[str, float] = collections.defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.time()
        try:
            yield
        finally:
            self.totals[name] += time.time() - start

    def get(self, name: str) -> float:
        return self.totals[name]

    def total(self) -> float:
        return sum(self.totals.values())


# =====================================================================================================================
# Setting a run up (shared with ssljax.evaluate)
# =====================================================================================================================
@dataclasses.dataclass
class Run:
    """A run's data, experiment and initial state: what the loop and ``python -m ssljax.evaluate`` both need."""

    exp: Experiment
    state: TrainState
    train_data: pipeline.TrainData
    eval_train: sources.Split
    eval_test: sources.Split
    runner: EvalRunner


def setup(config, workdir: str, before_data: Callable[[], None] | None = None) -> Run:
    """Mesh, validation, data, experiment, initial state and evaluators for ``config`` writing into ``workdir``.

    ``before_data`` runs after the config is validated and before any data is read (the loop's workdir checks).
    """
    parallel.initialize_distributed(config)
    configure.validate(config, jax.device_count())
    mesh = configure.mesh_from_config(config)
    if before_data is not None:
        before_data()
    train_data = pipeline.load_train_data(config, mesh, workdir)
    if config.eval_train_split == config.train_split and isinstance(train_data.source, sources.Split):
        eval_train = pipeline.subsample(train_data.source, config.eval.max_train_examples, config.seed)
    else:
        eval_train = pipeline.load_split(config, config.eval_train_split, config.eval.max_train_examples, workdir)
    eval_test = pipeline.load_split(config, config.eval_split, workdir=workdir)
    num_classes = config.num_classes or eval_train.num_classes
    exp = build_experiment(config, mesh, train_data.num_examples, num_classes)
    state = init_state(exp, train_data.sampler_state)
    # config.evals passed configure.validate above: the runner only fills in the defaults, checking nothing again
    runner = EvalRunner(make_context(config, exp, eval_train, eval_test, workdir), validated=True)
    runner.log = logging_lib.info  # one line per evaluator: ~40 s of final evaluation is not silent
    return Run(exp, state, train_data, eval_train, eval_test, runner)


def summary_text(summary: dict, path: str) -> str:
    """A short human summary of a finished run: kNN and linear top-1 (against random init), loss, wall time, and
    where the whole summary is."""

    def pct(key: str) -> str | None:
        value = summary.get(key)
        return None if value is None or value != value else f'{100 * value:.1f}%'

    parts = []
    for label, key in (('kNN top-1', 'knn_top1'), ('linear top-1', 'linear_top1')):
        value, baseline = pct(key), pct(f'random_init_{key}')
        if value is not None:
            parts.append(f'{label} {value}' + (f' (random init {baseline})' if baseline else ''))
    loss = summary.get('final_loss')
    parts.append(f'final loss {loss:.4f}' if isinstance(loss, float) and loss == loss else 'final loss n/a')
    parts.append(f'{summary["steps"]} steps in {summary["wall_s"]:.0f} s wall (evaluation {summary["eval_s"]:.0f} s)')
    return f'done: {summary["method"]} on {summary["dataset"]}: ' + '; '.join(parts) + f'\nsummary: {path}'


# =====================================================================================================================
# The loop
# =====================================================================================================================
def train_and_evaluate(config, workdir: str, hooks: Sequence[Hook] = (), allow_config_changes: bool = False) -> dict:
    """Pretrains ``config.method`` and evaluates the encoder; writes ``workdir/summary.json`` and returns it.

    The workdir is locked for the run (a second run on it is refused); resuming with a config that changes the run
    (method, model, batch, data, schedule, seed, ...) is refused unless ``allow_config_changes`` (recorded in
    ``config_history.jsonl``).
    """
    wall_start = time.time()
    log = logging_lib.info
    parallel.initialize_distributed(config)  # before anything asks JAX about processes or devices
    workdir_lib.check_workdir(workdir)
    lock = workdir_lib.WorkdirLock(workdir, enabled=jax.process_index() == 0)
    try:
        return _train_and_evaluate(config, workdir, hooks, allow_config_changes, lock, wall_start, log)
    finally:
        lock.release()


def _train_and_evaluate(config, workdir, hooks, allow_config_changes, lock, wall_start, log) -> dict:
    def claim_workdir():
        lock.acquire()
        workdir_lib.check_resume_config(workdir, config.to_dict(), allow_config_changes)

    run = setup(config, workdir, before_data=claim_workdir)
    exp, state, train_data, runner = run.exp, run.state, run.train_data, run.runner
    num_devices = exp.mesh.devices.size
    log(
        f'data: {config.dataset} {train_data.num_examples} train images, {len(run.eval_test.labels)} test '
        f'{run.eval_test.images.shape[1:]}, {exp.num_classes} classes, '
        f'{"on device" if train_data.on_device else "streamed from host"}, sampler {config.sampler.name}'
    )
    n_params = sum(x.size for x in jax.tree.leaves(state.params['encoder']))
    log(
        f'{config.method} | {config.model.backbone} ({n_params / 1e6:.2f}M encoder params, features {exp.feature_dim}) '
        f'| {num_devices} devices on {jax.process_count()} processes | global batch {config.batch_size} '
        f'| {exp.total_steps} steps ({exp.steps_per_epoch}/epoch) | {len(exp.views)} views | '
        f'evals {", ".join(runner.names) or "none"}'
    )
    ckpt = ckpt_lib.Checkpointer(workdir, config.keep_checkpoints)
    random_path = os.path.join(workdir, 'random_init.json')
    timer = _Timer()

    # ----- resume or start ------------------------------------------------------------------------------------------
    start_step, restored = ckpt.restore_latest(state, log=log)  # falls back past damaged checkpoints, one line each
    if start_step is not None:
        state = restored
        log(f'resumed from {ckpt.directory} at step {start_step}')
    else:
        start_step = 0
        if config.eval.random_init_baseline and not os.path.exists(random_path):
            with timer('eval'):
                baseline = runner.run(state, 0, final=True, names=tuple(config.eval.baseline_evals))
            logging_lib.write_json(random_path, baseline)
    train_data.sampler_state = jax.tree.map(np.asarray, jax.device_get(state.sampler_state))

    # ----- train ----------------------------------------------------------------------------------------------------
    train_step = make_train_step(exp, state)
    writer = logging_lib.MetricWriter(workdir, start_step=start_step)  # drops rows past the restored step
    progress = logging_lib.Progress(exp.total_steps, config.batch_size, num_devices, start_step)
    sums, count = None, 0
    last_metrics: dict = {}
    t0, paused_at_t0 = None, 0.0
    batches = train_data.batches(start_step)
    step = start_step
    stop = preemption.StopFlag(sync_every=10).install()  # SIGTERM / SIGINT, agreed across hosts

    def save(at: int) -> None:
        _check_finite(state, ckpt)
        with timer('checkpoint'):
            ckpt.save(at, state)  # asynchronous: training goes on while it is written
            if hooks:
                ckpt.wait()
        for hook in hooks:
            hook.after_checkpoint(at)

    try:
        while step < exp.total_steps:
            if stop.should_stop(step):  # every process, every step: all hosts stop at the same step
                save(step)
                ckpt.wait()
                raise Preempted(
                    f'stopped by {stop.stopped_by} at step {step}; saved a checkpoint there in '
                    f'{ckpt.directory}: rerun the same command to resume'
                )
            if train_data.sampler.refresh_steps(step):
                with timer('sampler'):
                    tools = samplers.SamplerTools(
                        lambda network='': runner.train_features(state, network, train_data.source)
                    )
                    new = train_data.sampler.refresh(step, train_data.sampler_state, tools)
                    train_data.sampler_state = jax.tree.map(np.asarray, new)
                    state = state.replace(sampler_state=parallel.put_replicated(train_data.sampler_state, exp.mesh))
                    batches = train_data.batches(step)
            state, metrics = train_step(state, next(batches), train_data.device_arrays)
            step += 1
            sums, count = (metrics if sums is None else _accumulate(sums, metrics)), count + 1
            for hook in hooks:
                hook.after_step(step, state)
            if t0 is None:  # the first step compiles: measure speed from its end
                jax.block_until_ready(state.step)
                t0, t0_step, paused_at_t0 = time.time(), step, timer.total()
                progress.start(step)
            if step % config.log_every == 0 or step == exp.total_steps:
                _check_finite(state, ckpt)
                last_metrics = {k: float(v) / count for k, v in jax.device_get(sums).items()}
                sums, count = None, 0
                rate = progress.update(step, last_metrics)
                writer.write(
                    step,
                    {f'train/{k}': v for k, v in last_metrics.items()}
                    | ({'train/samples_per_s': rate} if rate else {}),
                )
            paused = timer.total()
            if step < exp.total_steps and runner.due(step):
                with timer('eval'):
                    results = runner.run(state, step)
                writer.write(step, {f'eval/{k}': v for k, v in results.items()})
                log(f'eval @ {step}: ' + ', '.join(f'{k} {v:.4f}' for k, v in results.items()))
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                save(step)
            if timer.total() > paused:
                progress.start(step)  # the next interval's rate counts training only
        jax.block_until_ready(state.step)
        train_time, timed_steps = 0.0, 0
        if t0 is not None:
            train_time, timed_steps = time.time() - t0 - (timer.total() - paused_at_t0), step - t0_step
        if ckpt.latest_step() != step:
            save(step)
    finally:
        stop.restore()
        with timer('checkpoint'):
            ckpt.wait()
        writer.close()

    # ----- evaluate -------------------------------------------------------------------------------------------------
    with timer('eval'):
        final = runner.run(state, step, final=True)
    writer = logging_lib.MetricWriter(workdir)
    writer.write(step, {f'final/{k}': v for k, v in final.items()})
    writer.close()
    baseline = json.load(open(random_path)) if os.path.exists(random_path) else {}
    samples_per_s = timed_steps * config.batch_size / train_time if train_time > 0 else float('nan')
    summary = {
        'method': config.method,
        'dataset': config.dataset,
        'backbone': config.model.backbone,
        'steps': int(step),
        'epochs': step / exp.steps_per_epoch,
        'global_batch': config.batch_size,
        'devices': num_devices,
        'processes': jax.process_count(),
        'platform': jax.devices()[0].platform,
        'wall_s': round(time.time() - wall_start, 2),
        'train_s_this_run': round(train_time, 2),
        'eval_s': round(timer.get('eval'), 2),
        'checkpoint_s': round(timer.get('checkpoint'), 2),
        'train_samples_per_s': round(samples_per_s, 2),
        'train_samples_per_s_per_device': round(samples_per_s / num_devices, 2),
        'final_loss': last_metrics['loss'] if last_metrics else _last_logged_loss(workdir),
        **final,
        **{f'random_init_{k}': v for k, v in baseline.items()},
    }
    summary.setdefault('random_init_knn_top1', None)
    summary.setdefault('random_init_linear_top1', None)
    summary_path = os.path.join(workdir, 'summary.json')
    logging_lib.write_json(summary_path, summary)
    log(summary_text(summary, summary_path))
    ckpt.close()
    return summary
