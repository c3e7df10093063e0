"""Steps a config file's own objective and optimizer on real MNIST digits: the recipe-collapse tests' runner.

``run_recipe_steps(config, views, steps)`` builds resnet_mini, the objective and ``optim.create_optimizer`` (the
widths, the schedules, the freeze) from ``config`` for a budget of ``EPOCHS`` epochs of ``STEPS_PER_EPOCH`` steps of
``B`` images, and runs ``steps`` jitted steps on ``views(step)``, returning the objective and each step's metrics.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssljax import optim
from ssljax.data.sources.embedded import _load_mnist
from ssljax.models.registry import create_encoder
from ssljax.objectives import Context, create_objective

B = 32  # images per batch
STEPS_PER_EPOCH = 4
EPOCHS = 6  # 24 steps: the 1-epoch warm-up's peak at step 4, 20 steps at (cosine-decaying) full lr after it


@functools.lru_cache(maxsize=1)
def mnist_14():
    """The embedded MNIST training images, 2 x 2 mean-pooled to 14 x 14, standardised: float32 [N, 14, 14, 3]."""
    images = _load_mnist('train').images.astype(np.float32) / 255.0
    images = images.reshape(-1, 14, 2, 14, 2, 3).mean(axis=(2, 4))
    return (images - images.mean()) / images.std()


def with_overrides(config, objective=None, **optimizer):
    """``config`` with ``config.objective[KEY]`` and ``config.optimizer[KEY]`` set from the two dicts."""
    for key, value in optimizer.items():
        config.optimizer[key] = value
    for key, value in (objective or {}).items():
        config.objective[key] = value
    return config


def run_recipe_steps(config, views, steps, rng=lambda step: jax.random.PRNGKey(4), extra=None):
    """-> (objective, one dict of metrics per step); ``rng(step)`` is the loss's key, ``extra(objective, params,
    out)`` adds metrics computed inside the jitted step from the updated params and the loss output."""
    encoder, feature_dim = create_encoder(config.model.backbone)
    total = STEPS_PER_EPOCH * EPOCHS
    ctx = Context(encoder=encoder, feature_dim=feature_dim, total_steps=total, global_batch=B,
                  num_examples=B * STEPS_PER_EPOCH, steps_per_epoch=STEPS_PER_EPOCH)
    objective = create_objective(config, ctx)
    tx, _ = optim.create_optimizer(config, total, STEPS_PER_EPOCH, objective.frozen_heads,
                                   freeze_steps=objective.freeze_steps)
    enc = encoder.init(jax.random.PRNGKey(2), jnp.zeros((2, 12, 12, 3)), train=False)
    heads, obj_state = objective.init(jax.random.PRNGKey(3), enc)
    params = {'encoder': enc['params'], **heads['params']}
    stats = {'encoder': enc['batch_stats'], **heads['batch_stats']}
    opt_state = tx.init(params)

    @jax.jit
    def step_fn(params, stats, opt_state, obj_state, step, vs):
        def loss_fn(p):
            return objective.loss({'params': p, 'batch_stats': stats}, obj_state, vs, {}, rng(step))

        (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        params, obj_state = objective.update(params, out.objective_state, step + 1)
        metrics = dict(out.metrics, **(extra(objective, params, out) if extra else {}))
        return params, out.batch_stats, opt_state, obj_state, metrics

    history = []
    for step in range(steps):
        params, stats, opt_state, obj_state, metrics = step_fn(params, stats, opt_state, obj_state, step, views(step))
        history.append({k: float(v) for k, v in metrics.items()})
    return objective, history
