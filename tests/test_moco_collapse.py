"""MoCo v2's queries must not collapse onto one direction under the embedded recipe (issue 19, section 1).

Before the fix, the embedded MNIST recipe (SGD lr 0.3 after a 15-step warm-up, projector Linear - ReLU - Linear without
BatchNorm) sent every query to the same direction within ~20 steps: the raw projector output's norm grew ~10x and was
almost all a component shared by every image (``query_mean_norm`` = ||mean_i q_i|| 0.956 at step 10, 0.999 at 20), the
key encoder followed through the EMA, and the loss rose to ln(K + 1) (experiments/contrastive/README.md, "common-mode
collapse"). These tests run the config file's objective and optimizer (``optim.create_optimizer``, the schedules, the
queue, the shuffled BatchNorm groups) on resnet_mini and real MNIST digits for 24 steps (the 1-epoch warm-up is 4
steps here) and watch the logged metric.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import mocov2 as mocov2_config
from ssljax import optim
from ssljax.data.sources.embedded import _load_mnist
from ssljax.models.registry import create_encoder
from ssljax.objectives import Context, create_objective

B = 32  # images per batch
STEPS_PER_EPOCH = 4
EPOCHS = 6  # 24 steps


@functools.lru_cache(maxsize=1)
def mnist_14():
    """The embedded MNIST training images, 2 x 2 mean-pooled to 14 x 14, standardised: float32 [N, 14, 14, 3]."""
    images = _load_mnist('train').images.astype(np.float32) / 255.0
    images = images.reshape(-1, 14, 2, 14, 2, 3).mean(axis=(2, 4))
    return (images - images.mean()) / images.std()


def views(step):
    """B digits (a new batch each step): two 12 x 12 crops at random offsets, each with its own noise."""
    rng = np.random.default_rng(step)
    images = mnist_14()[rng.choice(len(mnist_14()), B, replace=False)]
    out = []
    for _ in range(2):
        y, x = rng.integers(0, 3, 2)
        crop = images[:, y : y + 12, x : x + 12] + 0.2 * rng.standard_normal((B, 12, 12, 3), np.float32)
        out.append(jnp.asarray(crop))
    return out


def run_recipe(config_module, steps=STEPS_PER_EPOCH * EPOCHS, objective=None, **optimizer):
    """The embedded config's objective and optimizer (``objective`` / ``optimizer`` keys on top) for ``steps`` steps
    -> one dict of metrics per step."""
    config = config_module.get_config()
    config.objective.queue_size = 8 * B  # the recipe's 8 batches
    for key, value in optimizer.items():
        config.optimizer[key] = value
    for key, value in (objective or {}).items():
        config.objective[key] = value
    encoder, feature_dim = create_encoder(config.model.backbone)
    total = STEPS_PER_EPOCH * EPOCHS
    ctx = Context(
        encoder=encoder,
        feature_dim=feature_dim,
        total_steps=total,
        global_batch=B,
        num_examples=B * STEPS_PER_EPOCH,
        steps_per_epoch=STEPS_PER_EPOCH,
    )
    obj = create_objective(config, ctx)
    tx, _ = optim.create_optimizer(config, total, STEPS_PER_EPOCH, obj.frozen_heads, freeze_steps=obj.freeze_steps)
    enc = encoder.init(jax.random.PRNGKey(2), jnp.zeros((2, 12, 12, 3)), train=False)
    heads, obj_state = obj.init(jax.random.PRNGKey(3), enc)
    params = {'encoder': enc['params'], **heads['params']}
    stats = {'encoder': enc['batch_stats'], **heads['batch_stats']}
    opt_state = tx.init(params)

    @jax.jit
    def step_fn(params, stats, opt_state, obj_state, step, vs):
        def loss_fn(p):
            return obj.loss(
                {'params': p, 'batch_stats': stats}, obj_state, vs, {}, jax.random.fold_in(jax.random.PRNGKey(4), step)
            )

        (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        params, obj_state = obj.update(params, out.objective_state, step + 1)
        return params, out.batch_stats, opt_state, obj_state, out.metrics

    history = []
    for step in range(steps):
        params, stats, opt_state, obj_state, metrics = step_fn(params, stats, opt_state, obj_state, step, views(step))
        history.append({k: float(v) for k, v in metrics.items()})
    return history


BEFORE = dict(name='sgd', lr=0.3, weight_decay=1e-4, exclude_bias_and_norm=False)  # the recipe before the fix


def test_mocov2_embedded_recipe_keeps_queries_apart():
    history = run_recipe(mocov2_config)
    worst = max(h['query_mean_norm'] for h in history[4:])
    assert worst < 0.5, f'queries share one direction: ||mean q|| reached {worst:.3f}'


@pytest.mark.slow
def test_mocov2_recipe_before_the_fix_collapses():
    history = run_recipe(mocov2_config, objective=dict(projector_last_bn=False), **BEFORE)
    assert max(h['query_mean_norm'] for h in history) > 0.99
