"""Optimizer construction: LARS against its formula, exclusions, parameter groups, schedule."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from ssljax import optim


def make_config(**opt):
    c = common.base_config('simclr', 'mnist')
    c.batch_size = 512
    for k, v in opt.items():
        c.optimizer[k] = v
    return c


def test_schedule_warmup_then_cosine():
    c = make_config(lr=0.3, warmup_steps=10, warmup_init_lr=0.0)
    _, schedule = optim.create_optimizer(c, total_steps=110, steps_per_epoch=10)
    peak = 0.3 * 512 / 256
    np.testing.assert_allclose(schedule(0), 0.0, atol=1e-8)
    np.testing.assert_allclose(schedule(10), peak, rtol=1e-6)
    np.testing.assert_allclose(schedule(60), peak * 0.5, rtol=1e-5)  # half-way through the cosine
    np.testing.assert_allclose(schedule(110), 0.0, atol=1e-7)


@pytest.mark.parametrize('clip', [False, True])
def test_lars_matches_formula_and_excludes_bias(clip):
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)
    gw, gb = rng.normal(size=(3, 4)).astype(np.float32) * 10, rng.normal(size=(4,)).astype(np.float32)
    lr, wd, eta, mom = 0.5, 1e-2, 0.02, 0.9
    tx = optim.lars(optax.constant_schedule(lr), wd, mom, eta, optim.decay_mask, clip=clip)
    params = {'w': jnp.asarray(w), 'b': jnp.asarray(b)}
    state = tx.init(params)
    updates, state = tx.update({'w': jnp.asarray(gw), 'b': jnp.asarray(gb)}, state, params)
    g = gw + wd * w
    ratio = eta * np.linalg.norm(w) / np.linalg.norm(g)
    if clip:
        ratio = min(ratio, 1.0)
    np.testing.assert_allclose(updates['w'], -lr * ratio * g, rtol=1e-5)
    np.testing.assert_allclose(updates['b'], -lr * gb, rtol=1e-6)  # bias: no decay, no adaptation
    # second step carries momentum
    updates2, _ = tx.update({'w': jnp.asarray(gw), 'b': jnp.asarray(gb)}, state, params)
    np.testing.assert_allclose(updates2['b'], -(mom * lr * gb + lr * gb), rtol=1e-6)


def test_frozen_and_constant_lr_groups():
    c = make_config(name='sgd', lr=0.1, warmup_steps=0, weight_decay=0.0, momentum=0.0, lr_scaling='none',
                    constant_lr_heads=('predictor',))
    params = {'encoder': {'w': jnp.ones((2, 2))}, 'predictor': {'w': jnp.ones((2, 2))},
              'fixed': {'w': jnp.ones((2, 2))}}
    tx, _ = optim.create_optimizer(c, total_steps=10, steps_per_epoch=1, frozen_heads=('fixed',))
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(9):  # late in the cosine schedule
        updates, state = tx.update(grads, state, params)
    np.testing.assert_allclose(updates['predictor']['w'], -0.1)          # constant lr
    assert float(jnp.abs(updates['encoder']['w']).max()) < 0.01          # decayed lr
    np.testing.assert_array_equal(updates['fixed']['w'], 0.0)            # frozen


def test_unknown_group_and_optimizer_are_errors():
    params = {'encoder': {'w': jnp.ones((2, 2))}}
    with pytest.raises(ValueError, match='predictor'):
        optim.check_param_groups(make_config(constant_lr_heads=('predictor',)), params)
    with pytest.raises(ValueError, match='adamx'):
        optim.create_optimizer(make_config(name='adamx'), 10, 1)
