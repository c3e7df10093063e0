"""The one generic train loop: ``train_and_evaluate(config, workdir)``.

It knows nothing about any method: the objective (ssljax/objectives) supplies init / loss / update, and the loop
does the rest: data, on-device augmentation, the optimizer, the online probe, checkpoints, logging, evaluation.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from ssljax import checkpoint as ckpt_lib
from ssljax import config_lib, logging_lib, optim, parallel
from ssljax.data import augment, loader, pipeline, sources
from ssljax.evaluation import features as features_lib
from ssljax.evaluation import knn, linear_probe
from ssljax.models import registry
from ssljax.objectives import Context, Objective, create_objective


# Test-only fault injection: SIGKILL this process right after the checkpoint of this step is on disk.
_KILL_AT_STEP = int(os.environ.get('SSLJAX_TEST_KILL_AT_STEP', '-1'))


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops without saving the bad state."""


# =====================================================================================================================
# Train state
# =====================================================================================================================
@flax.struct.dataclass
class TrainState:
    """Everything that must survive a restart. The data position is ``step``: sampling is a function of it."""
    step: jax.Array               # int32 scalar: optimizer steps taken
    params: Any                   # {'encoder': ..., <head name>: ...}
    batch_stats: Any              # same top-level names, BatchNorm running statistics
    opt_state: Any
    objective_state: Any          # target network, correlation matrix, queue, centre, ...
    probe_params: Any             # online linear probe trained on stop-gradient features
    probe_opt_state: Any
    rng: jax.Array                # uint32 key data; per-step keys are fold_in(key, step)
    nonfinite_step: jax.Array     # int32: first step whose loss was not finite, -1 while all are


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


def augment_views_from_config(config) -> tuple:
    """The view recipe named by ``augment.recipe`` with the config's overrides (negative = the recipe's value)."""
    overrides = {}
    if config.augment.blur_prob >= 0:
        overrides['blur_prob'] = config.augment.blur_prob
    if config.augment.crop_min_scale >= 0:
        overrides['crop_scale'] = (config.augment.crop_min_scale, 1.0)
    if config.augment.recipe == 'multicrop':
        for key in ('n_local', 'local_size'):
            if config.augment[key] > 0:
                overrides[key] = config.augment[key]
    return augment.recipe(config.augment.recipe, config.augment.size, **overrides)


def build_experiment(config, mesh, num_examples: int, num_classes: int) -> Experiment:
    dtype = jnp.bfloat16 if config.dtype == 'bfloat16' else jnp.float32
    encoder, feature_dim = registry.create_encoder(
        config.model.backbone, dtype=dtype, cifar_stem=config.model.cifar_stem,
        patch_size=config.model.patch_size, image_size=config.augment.size)
    total_steps, steps_per_epoch = config_lib.total_steps(config, num_examples)
    ctx = Context(encoder=encoder, feature_dim=feature_dim, total_steps=total_steps, global_batch=config.batch_size,
                  num_examples=num_examples, dtype=dtype)
    objective = create_objective(config, ctx)
    views = augment_views_from_config(config)
    tx, schedule = optim.create_optimizer(config, total_steps, steps_per_epoch, objective.frozen_heads)
    probe_peak = config.eval.online_probe_lr * config.batch_size / 256
    probe_tx = optax.sgd(optax.cosine_decay_schedule(probe_peak, total_steps), momentum=0.9)
    return Experiment(config, mesh, encoder, feature_dim, objective, views, config.augment.size, total_steps,
                      steps_per_epoch, num_classes, tx, schedule, probe_tx)


def init_state(exp: Experiment) -> TrainState:
    """Initialises encoder, heads, objective state, optimizer and online probe from ``config.seed``."""
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

    params, batch_stats, objective_state = jax.jit(init_fn)()
    optim.check_param_groups(config, params, exp.objective.frozen_heads)
    probe_params = linear_probe.online_probe_init(probe_key, exp.feature_dim, exp.num_classes)
    state = TrainState(step=jnp.zeros([], jnp.int32), params=params, batch_stats=batch_stats,
                       opt_state=exp.tx.init(params), objective_state=objective_state, probe_params=probe_params,
                       probe_opt_state=exp.probe_tx.init(probe_params), rng=jax.random.key_data(key),
                       nonfinite_step=jnp.full([], -1, jnp.int32))
    return jax.device_put(state, parallel.replicated(exp.mesh))


# =====================================================================================================================
# The train step
# =====================================================================================================================
def make_train_step(exp: Experiment):
    """-> jitted ``step(state, batch, device_data) -> (state, metrics)``; state buffers are donated."""
    objective, tx, probe_tx, schedule, views_cfg = exp.objective, exp.tx, exp.probe_tx, exp.schedule, exp.views

    def step_fn(state: TrainState, batch: dict, device_data: dict):
        batch = pipeline.gather_batch(batch, device_data)
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        aug_key, loss_key = jax.random.split(step_key)
        views = augment.augment_views(batch['image'], aug_key, views_cfg)

        def loss_fn(params):
            variables = {'params': params, 'batch_stats': state.batch_stats}
            return objective.loss(variables, state.objective_state, views, batch, loss_key)

        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        params, objective_state = objective.update(params, out.objective_state, state.step + 1)

        (probe_loss, probe_acc), probe_grads = jax.value_and_grad(linear_probe.online_probe_loss, has_aux=True)(
            state.probe_params, out.probe_features, batch['label'])
        probe_updates, probe_opt_state = probe_tx.update(probe_grads, state.probe_opt_state, state.probe_params)
        probe_params = optax.apply_updates(state.probe_params, probe_updates)

        finite = jnp.isfinite(loss)
        nonfinite_step = jnp.where((state.nonfinite_step < 0) & ~finite, state.step, state.nonfinite_step)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=out.batch_stats,
                                  opt_state=opt_state, objective_state=objective_state, probe_params=probe_params,
                                  probe_opt_state=probe_opt_state, nonfinite_step=nonfinite_step)
        metrics = {'loss': loss, 'lr': schedule(state.step), 'probe_loss': probe_loss, 'probe_acc': probe_acc,
                   **out.metrics}
        return new_state, metrics

    replicated = parallel.replicated(exp.mesh)
    return jax.jit(step_fn, donate_argnums=(0,), out_shardings=(replicated, replicated))


# =====================================================================================================================
# Evaluation
# =====================================================================================================================
def make_encode_fn(exp: Experiment, batch_size: int):
    """-> encode(state, uint8 numpy batch of ``batch_size``) -> float32 numpy [b, D] pooled features in eval mode.

    Each process feeds its slice of the batch to the mesh and gathers the features of the whole batch.
    """
    mean, std = exp.views[0].mean, exp.views[0].std
    size = exp.eval_size

    @jax.jit
    def encode(params, batch_stats, images):
        x = augment.eval_view(images, size, mean, std)
        out = exp.encoder.apply({'params': params, 'batch_stats': batch_stats}, x, train=False)
        return out['pooled'].astype(jnp.float32)

    sharding = parallel.batch_sharded(exp.mesh)
    local = loader.host_slice(batch_size, jax.process_index(), jax.process_count())

    def encode_numpy(state, images: np.ndarray) -> np.ndarray:
        x = jax.make_array_from_process_local_data(sharding, images[local])
        z = encode(state.params['encoder'], state.batch_stats['encoder'], x)
        return np.asarray(multihost_utils.process_allgather(z, tiled=True))

    return encode_numpy


def eval_batch_size(config, mesh) -> int:
    n = mesh.devices.size
    return max(n, (config.eval.batch_size // n) * n)


class Evaluator:
    """kNN monitor, online-probe test accuracy, and the offline linear probe on frozen features."""

    def __init__(self, exp: Experiment, train_split: sources.Split, test_split: sources.Split):
        self.exp, self.train, self.test = exp, train_split, test_split
        self.batch = eval_batch_size(exp.config, exp.mesh)
        self.encode = make_encode_fn(exp, self.batch)

    def features(self, state, split: sources.Split) -> np.ndarray:
        return features_lib.extract_features(lambda x: self.encode(state, x), split.images, self.batch,
                                             preprocess=lambda x: x)

    def knn(self, state) -> dict:
        cfg = self.exp.config.eval
        train_f, test_f = self.features(state, self.train), self.features(state, self.test)
        top1 = knn.knn_top1(train_f, self.train.labels, test_f, self.test.labels, self.exp.num_classes,
                            k=cfg.knn_k, temperature=cfg.knn_temperature)
        probe_logits = test_f @ np.asarray(state.probe_params['kernel']) + np.asarray(state.probe_params['bias'])
        probe_top1 = float(np.mean(probe_logits.argmax(-1) == self.test.labels))
        return {'knn_top1': float(top1), 'online_probe_top1': probe_top1}, (train_f, test_f)

    def full(self, state) -> dict:
        """kNN, online probe and the offline linear probe."""
        cfg = self.exp.config.eval
        results, (train_f, test_f) = self.knn(state)
        probe = linear_probe.train_linear_probe(train_f, self.train.labels, test_f, self.test.labels,
                                                self.exp.num_classes, epochs=cfg.linear_epochs,
                                                batch_size=cfg.linear_batch_size, lr=cfg.linear_lr,
                                                seed=self.exp.config.seed)
        results['linear_top1'] = float(probe['top1'])
        return results


# =====================================================================================================================
# The loop
# =====================================================================================================================
class Preempted(RuntimeError):
    """The run received SIGTERM; a checkpoint of the current step was written."""


class _PreemptionFlag:
    """True once SIGTERM arrived (handler installed for the training loop only, main thread only)."""

    def __init__(self):
        self.received = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.received = True

    def __bool__(self) -> bool:
        return self.received

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _check_finite(state: TrainState, ckpt: ckpt_lib.Checkpointer) -> None:
    bad = int(jax.device_get(state.nonfinite_step))
    if bad >= 0:
        kept = ckpt.latest_step()
        raise NonFiniteLossError(
            f'the loss became NaN/inf at step {bad}; stopping without saving that state '
            f'({"checkpoints up to step " + str(kept) + " are kept in " + ckpt.directory if kept is not None else "no checkpoint had been written yet"}). '
            'Lower optimizer.lr, use dtype=float32, or check the data.')


def _write_json(path: str, payload: dict) -> None:
    if jax.process_index() == 0:
        tmp = path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(payload, f, indent=2, sort_keys=True)
        os.replace(tmp, path)


def _last_logged_loss(workdir: str) -> float:
    """The last train/loss in metrics.jsonl (a rerun of a finished run trains no step itself)."""
    path = os.path.join(workdir, 'metrics.jsonl')
    rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    losses = [r['train/loss'] for r in rows if 'train/loss' in r]
    return losses[-1] if losses else float('nan')


def train_and_evaluate(config, workdir: str) -> dict:
    """Pretrains ``config.method`` and evaluates the encoder; writes ``workdir/summary.json`` and returns it."""
    wall_start = time.time()
    parallel.initialize_distributed(config)
    mesh = parallel.make_mesh()
    num_devices = mesh.devices.size
    config_lib.validate(config, num_devices)
    os.makedirs(workdir, exist_ok=True)
    _write_json(os.path.join(workdir, 'config.json'), config.to_dict())
    log = logging_lib.info

    # ----- data -----------------------------------------------------------------------------------------------------
    train_data = pipeline.load_train_data(config, mesh)
    if config.eval_train_split == config.train_split and isinstance(train_data.source, sources.Split):
        eval_train = pipeline.subsample(train_data.source, config.eval.max_train_examples, config.seed)
    else:
        eval_train = pipeline.load_split(config, config.eval_train_split, config.eval.max_train_examples)
    eval_test = pipeline.load_split(config, config.eval_split)
    num_classes = config.num_classes or eval_train.num_classes
    log(f'data: {config.dataset} {train_data.num_examples} train images, {len(eval_test.labels)} test '
        f'{eval_test.images.shape[1:]}, {num_classes} classes, '
        f'{"on device" if train_data.on_device else "streamed from host"}')

    # ----- model, objective, state ----------------------------------------------------------------------------------
    exp = build_experiment(config, mesh, train_data.num_examples, num_classes)
    state = init_state(exp)
    n_params = sum(x.size for x in jax.tree.leaves(state.params['encoder']))
    log(f'{config.method} | {config.model.backbone} ({n_params / 1e6:.2f}M encoder params, features {exp.feature_dim}) '
        f'| {num_devices} devices on {jax.process_count()} processes | global batch {config.batch_size} '
        f'| {exp.total_steps} steps ({exp.steps_per_epoch}/epoch) | {len(exp.views)} views')
    evaluator = Evaluator(exp, eval_train, eval_test)
    ckpt = ckpt_lib.Checkpointer(workdir, config.keep_checkpoints)
    random_path = os.path.join(workdir, 'random_init.json')

    start_step = ckpt.latest_step()
    if start_step is not None:
        state = ckpt.restore(state)
        log(f'resumed from {ckpt.directory} at step {start_step}')
    else:
        start_step = 0
        if config.eval.random_init_baseline and not os.path.exists(random_path):
            _write_json(random_path, evaluator.full(state))

    # ----- train ----------------------------------------------------------------------------------------------------
    train_step = make_train_step(exp)
    writer = logging_lib.MetricWriter(workdir)
    progress = logging_lib.Progress(exp.total_steps, config.batch_size, num_devices, start_step)
    pending: list = []
    last_metrics: dict = {}
    train_time, timed_steps, t0 = 0.0, 0, None
    batches = train_data.batches(start_step)
    step = start_step
    preempted = _PreemptionFlag()
    try:
        while step < exp.total_steps:
            if preempted:  # SIGTERM (a scheduler's preemption): save where we are, then stop
                _check_finite(state, ckpt)
                ckpt.save(step, state)
                ckpt.wait()
                raise Preempted(f'stopped by SIGTERM at step {step}; saved a checkpoint there in {ckpt.directory}: '
                                'rerun the same command to resume')
            state, metrics = train_step(state, next(batches), train_data.device_arrays)
            step += 1
            pending.append(metrics)
            if t0 is None:  # the first step compiles: measure speed from its end
                jax.block_until_ready(state.step)
                t0, t0_step = time.time(), step
                progress.start(step)
            if step % config.log_every == 0 or step == exp.total_steps:
                _check_finite(state, ckpt)
                fetched = jax.device_get(pending)
                last_metrics = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
                pending = []
                rate = progress.update(step, last_metrics)
                writer.write(step, {f'train/{k}': v for k, v in last_metrics.items()}
                             | ({'train/samples_per_s': rate} if rate else {}))
            if config.eval_every and step % config.eval_every == 0 and step < exp.total_steps:
                results, _ = evaluator.knn(state)
                writer.write(step, {f'eval/{k}': v for k, v in results.items()})
                log(f'eval @ {step}: ' + ', '.join(f'{k} {v:.4f}' for k, v in results.items()))
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                _check_finite(state, ckpt)
                ckpt.save(step, state)
                if step == _KILL_AT_STEP:  # fault injection for the crash-resume test
                    ckpt.wait()
                    os.kill(os.getpid(), signal.SIGKILL)
        jax.block_until_ready(state.step)
        if t0 is not None:
            train_time, timed_steps = time.time() - t0, step - t0_step
        _check_finite(state, ckpt)
        if ckpt.latest_step() != step:
            ckpt.save(step, state)
    finally:
        preempted.restore()
        ckpt.wait()
        writer.close()

    # ----- evaluate -------------------------------------------------------------------------------------------------
    final = evaluator.full(state)
    writer = logging_lib.MetricWriter(workdir)
    writer.write(step, {f'final/{k}': v for k, v in final.items()})
    writer.close()
    baseline = json.load(open(random_path)) if os.path.exists(random_path) else {}
    samples_per_s = timed_steps * config.batch_size / train_time if train_time > 0 else float('nan')
    summary = {
        'method': config.method, 'dataset': config.dataset, 'backbone': config.model.backbone,
        'steps': int(step), 'epochs': step / exp.steps_per_epoch, 'global_batch': config.batch_size,
        'devices': num_devices, 'processes': jax.process_count(), 'platform': jax.devices()[0].platform,
        'wall_s': round(time.time() - wall_start, 2), 'train_s_this_run': round(train_time, 2),
        'train_samples_per_s': round(samples_per_s, 2),
        'train_samples_per_s_per_device': round(samples_per_s / num_devices, 2),
        'final_loss': last_metrics['loss'] if last_metrics else _last_logged_loss(workdir),
        **final,
        'random_init_knn_top1': baseline.get('knn_top1'), 'random_init_linear_top1': baseline.get('linear_top1'),
    }
    _write_json(os.path.join(workdir, 'summary.json'), summary)
    log('summary: ' + json.dumps(summary))
    ckpt.close()
    return summary
