"""MoCo v2's full objective gradient through the grouped (shuffled) BatchNorm path, against finite differences.

Issue 19 section 1 named the shuffled/grouped BatchNorm path (``per_device`` + ``grouped_forward``) and its gradient as
a suspect for MoCo v2 / MoCHi / DenseCL not learning on the embedded MNIST budget. The loss formula itself is checked
against NumPy in test_contrastive_a.py; this checks the whole ``MoCoV2.loss`` (encoder BatchNorm per group, the key
shuffle, the queue) by central differences of the loss along random parameter directions, for 1 and 4 BatchNorm
groups. It passes on the current code: the gradient is not the cause (experiments/contrastive/README.md).
"""
import jax
import jax.numpy as jnp
import pytest
from conftest import tiny_config


def _setup(groups):
    from ssljax import train
    # the paper's head (no BatchNorm): the check is of the encoder's grouped BatchNorm path
    config = tiny_config('mocov2', **{'objective.bn_groups': groups, 'objective.queue_size': 32,
                                      'objective.projector_last_bn': False})
    exp = train.build_experiment(config, None, 1797, 10)
    obj = exp.objective
    enc_key, head_key = jax.random.split(jax.random.key(0))
    enc = exp.encoder.init(enc_key, jnp.zeros((2, 8, 8, 3)), train=False)
    heads, state = obj.init(head_key, enc)
    variables = {'params': {'encoder': enc['params'], **heads['params']},
                 'batch_stats': {'encoder': enc['batch_stats'], **heads['batch_stats']}}
    # a key encoder that differs from the query encoder, as after some EMA steps
    noise = jax.random.key(3)
    state['target']['params'] = jax.tree.map(
        lambda a: a + 0.05 * jax.random.normal(noise, a.shape, a.dtype), state['target']['params'])
    views = [jax.random.uniform(k, (16, 8, 8, 3)) for k in jax.random.split(jax.random.key(1), 2)]
    rng = jax.random.key(5)

    def loss(params):
        return obj.loss(dict(variables, params=params), state, views, {}, rng)[0]

    return variables['params'], jax.jit(loss), jax.jit(jax.grad(loss))


def _direction(params, sub, seed):
    d = jax.tree.map(jnp.zeros_like, params)
    leaves, tdef = jax.tree.flatten(params[sub])
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    d[sub] = jax.tree.unflatten(tdef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    return d


@pytest.mark.parametrize('groups', [pytest.param(1, marks=pytest.mark.slow), 4])  # 4: the grouped path
def test_mocov2_gradient_matches_finite_differences_through_grouped_batchnorm(groups):
    params, loss, grad = _setup(groups)
    g = grad(params)
    for sub, seed in (('encoder', 100), ('encoder', 101), ('projector', 102)):
        d = _direction(params, sub, seed)
        analytic = sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(d)))
        eps = 1e-4  # float32 loss: rounding ~1e-7 / eps; ReLU kinks bias larger steps
        plus = jax.tree.map(lambda a, b: a + eps * b, params, d)
        minus = jax.tree.map(lambda a, b: a - eps * b, params, d)
        numeric = (float(loss(plus)) - float(loss(minus))) / (2 * eps)
        assert abs(numeric) > 0.05, (sub, numeric)  # the direction moves the loss: the check can fail
        assert abs(analytic - numeric) <= 0.06 * max(1.0, abs(numeric)), (groups, sub, analytic, numeric)
