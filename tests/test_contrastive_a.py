"""Contrastive family A: MoCo v2 / v3, MoCHi, DCL / DCLW and the median triplet loss.

Each loss against a direct loop-based NumPy implementation of its formula (value and gradient; batch of 2,
duplicated samples, temperatures 0.05 and 1.0); MoCo v2's queue and shuffled BatchNorm against a direct per-group
computation; MoCHi's warm-up; configuration errors that must stop a run before compiling, naming the key.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, tiny_config

from ssljax.config_lib import ConfigError
from ssljax.objectives import losses

f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def logsumexp(values):
    values = np.asarray(values, np.float64)
    m = values.max()
    return m + np.log(np.sum(np.exp(values - m)))


def numeric_grad(f, x, eps=1e-5):
    g = np.zeros_like(x, dtype=np.float64)
    for idx in np.ndindex(x.shape):
        d = np.zeros_like(x, dtype=np.float64)
        d[idx] = eps
        g[idx] = (f(x + d) - f(x - d)) / (2 * eps)
    return g


def assert_grad(jax_grad, expected):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(np.asarray(jax_grad, np.float64), expected, rtol=2e-3, atol=2e-4 * scale)


# ----- NumPy references (loops over anchors, written from the papers' formulas) ---------------------------------------
def moco_numpy(q, k, queue, tau, extra=None):
    q, k, queue = unit(q), unit(k), unit(queue)
    total = 0.0
    for i in range(len(q)):
        logits = [q[i] @ k[i]] + [q[i] @ queue[m] for m in range(len(queue))]
        if extra is not None:
            logits += [q[i] @ h for h in unit(extra[i])]
        logits = np.array(logits) / tau
        total += -(logits[0] - logsumexp(logits))
    return total / len(q)


def mocov3_numpy(q, k, tau):
    q, k = unit(q), unit(k)
    total = 0.0
    for i in range(len(q)):
        logits = np.array([q[i] @ k[j] for j in range(len(k))]) / tau
        total += -(logits[i] - logsumexp(logits))
    return 2 * tau * total / len(q)


def dcl_numpy(za, zb, tau, sigma=None, norm='mean'):
    u, v = unit(za), unit(zb)
    b = len(u)

    def one_way(x, y):
        pos = np.array([x[i] @ y[i] for i in range(b)])
        if sigma is None:
            w = np.ones(b)
        else:
            e = np.exp(pos / sigma)
            w = 2 - e / (e.mean() if norm == 'mean' else e.sum())
        total = 0.0
        for i in range(b):
            neg = [x[i] @ x[j] / tau for j in range(b) if j != i] + [x[i] @ y[j] / tau for j in range(b) if j != i]
            total += -w[i] * pos[i] / tau + logsumexp(neg)
        return total / b

    return one_way(u, v) + one_way(v, u)


def triplet_numpy(p, t, gamma=2.0, margin=100.0, negative='median', truncate=(1, 10), group=0):
    p, t = unit(p), unit(t)
    b = len(p)
    group = group or b
    total = 0.0
    for i in range(b):
        g0 = (i // group) * group
        d_ap = -2 * p[i] @ t[i]
        negs = sorted(-2 * p[i] @ t[j] for j in range(g0, g0 + group) if j != i)
        d_an = negs[(len(negs) - 1) // 2] if negative == 'median' else np.mean(negs[truncate[0]:truncate[1]])
        total += max(0.0, gamma * d_ap - d_an + margin)
    return total / b


def sample(rng, batch, dim=5, duplicate=False):
    x = rng.normal(size=(batch, dim))
    if duplicate:
        x[1] = x[0]
    return x


CASES = [(2, False), (6, False), (6, True)]  # (batch, rows 0 and 1 identical)


# ----- MoCo v2 / MoCHi / MoCo v3 -------------------------------------------------------------------------------------
@pytest.mark.parametrize('tau', [0.05, 0.2, 1.0])
@pytest.mark.parametrize('batch,duplicate', CASES)
def test_moco_infonce_value_and_gradient(tau, batch, duplicate):
    rng = np.random.default_rng(batch + 10 * duplicate)
    q, k, queue = sample(rng, batch, duplicate=duplicate), sample(rng, batch, duplicate=duplicate), sample(rng, 7)
    if duplicate:
        queue[0] = k[0]  # a key that is also in the queue: a false negative, counted as in the reference
    value = losses.moco_infonce(f32(q), f32(k), f32(queue), tau)
    np.testing.assert_allclose(value, moco_numpy(q, k, queue, tau), rtol=1e-5)
    grad = jax.grad(lambda x: losses.moco_infonce(x, f32(k), f32(queue), tau))(f32(q))
    assert_grad(grad, numeric_grad(lambda x: moco_numpy(x, k, queue, tau), q))
    # keys and queue carry no gradient
    gk, gq = jax.grad(lambda a, b: losses.moco_infonce(f32(q), a, b, tau), argnums=(0, 1))(f32(k), f32(queue))
    np.testing.assert_array_equal(gk, 0.0)
    np.testing.assert_array_equal(gq, 0.0)


@pytest.mark.parametrize('tau', [0.05, 1.0])
def test_moco_infonce_with_extra_negatives(tau):
    rng = np.random.default_rng(3)
    q, k, queue, extra = sample(rng, 4), sample(rng, 4), sample(rng, 6), rng.normal(size=(4, 3, 5))
    value = losses.moco_infonce(f32(q), f32(k), f32(queue), tau, f32(extra))
    np.testing.assert_allclose(value, moco_numpy(q, k, queue, tau, extra), rtol=1e-5)
    grad = jax.grad(lambda x: losses.moco_infonce(x, f32(k), f32(queue), tau, f32(extra)))(f32(q))
    assert_grad(grad, numeric_grad(lambda x: moco_numpy(x, k, queue, tau, extra), q))
    g_extra = jax.grad(lambda e: losses.moco_infonce(f32(q), f32(k), f32(queue), tau, e))(f32(extra))
    np.testing.assert_array_equal(g_extra, 0.0)


@pytest.mark.parametrize('tau', [0.05, 0.2, 1.0])
@pytest.mark.parametrize('batch,duplicate', CASES)
def test_mocov3_loss_value_and_gradient(tau, batch, duplicate):
    rng = np.random.default_rng(20 + batch)
    q, k = sample(rng, batch, duplicate=duplicate), sample(rng, batch, duplicate=duplicate)
    np.testing.assert_allclose(losses.mocov3_loss(f32(q), f32(k), tau), mocov3_numpy(q, k, tau), rtol=1e-5)
    grad = jax.grad(lambda x: losses.mocov3_loss(x, f32(k), tau))(f32(q))
    assert_grad(grad, numeric_grad(lambda x: mocov3_numpy(x, k, tau), q))
    np.testing.assert_array_equal(jax.grad(lambda x: losses.mocov3_loss(f32(q), x, tau))(f32(k)), 0.0)


def test_mochi_mixing_against_loops():
    rng = np.random.default_rng(4)
    b, n_queue, n_hard, s, s2 = 3, 9, 4, 5, 2
    q, queue = sample(rng, b), sample(rng, n_queue)
    idx_i, idx_j = rng.integers(0, n_hard, (b, s)), rng.integers(0, n_hard, (b, s))
    idx_k = rng.integers(0, n_hard, (b, s2))
    alpha, beta = rng.uniform(size=(b, s)), 0.5 * rng.uniform(size=(b, s2))
    hard = losses.hardest_negatives(f32(q), f32(queue), n_hard)
    out = losses.mix_hard_negatives(f32(q), hard, jnp.asarray(idx_i), jnp.asarray(idx_j), f32(alpha),
                                    jnp.asarray(idx_k), f32(beta))
    qn, Q = unit(q), unit(queue)
    for bi in range(b):
        order = sorted(range(n_queue), key=lambda m: -(qn[bi] @ Q[m]))[:n_hard]  # hardest first
        np.testing.assert_allclose(hard[bi], Q[order], rtol=1e-5, atol=1e-6)
        for m in range(s):
            h = alpha[bi, m] * Q[order[idx_i[bi, m]]] + (1 - alpha[bi, m]) * Q[order[idx_j[bi, m]]]
            np.testing.assert_allclose(out[bi, m], unit(h), rtol=1e-4, atol=1e-5)
        for m in range(s2):
            h = beta[bi, m] * qn[bi] + (1 - beta[bi, m]) * Q[order[idx_k[bi, m]]]
            np.testing.assert_allclose(out[bi, s + m], unit(h), rtol=1e-4, atol=1e-5)


def test_mochi_negatives_properties():
    rng = np.random.default_rng(5)
    q, queue = f32(sample(rng, 4, dim=8)), f32(sample(rng, 32, dim=8))
    neg = losses.mochi_negatives(jax.random.key(0), q, queue, n_hard=1, n_mix=3, n_mix_query=6)
    assert neg.shape == (4, 9, 8)
    np.testing.assert_allclose(np.linalg.norm(neg, axis=-1), 1.0, rtol=1e-5)
    hardest = np.asarray(losses.hardest_negatives(q, queue, 1))[:, 0]
    np.testing.assert_allclose(neg[:, :3], np.repeat(hardest[:, None], 3, 1), rtol=1e-5, atol=1e-6)  # N = 1
    qn = unit(q)
    cos_hard = np.sum(qn * hardest, -1)
    cos_mid = np.sum(qn * unit(qn + hardest), -1)  # beta = 0.5, the bound
    cos_q = np.einsum('bd,bmd->bm', qn, np.asarray(neg[:, 3:]))
    assert np.all(cos_q >= cos_hard[:, None] - 1e-5) and np.all(cos_q <= cos_mid[:, None] + 1e-5)
    grad = jax.grad(lambda x: jnp.sum(losses.mochi_negatives(jax.random.key(0), x, queue, 4, 3, 6)))(q)
    np.testing.assert_array_equal(grad, 0.0)


# ----- DCL / DCLW ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('tau', [0.05, 0.1, 1.0])
@pytest.mark.parametrize('batch,duplicate', CASES)
@pytest.mark.parametrize('sigma,norm', [(None, 'mean'), (0.5, 'mean'), (0.5, 'sum')])
def test_dcl_loss_value_and_gradient(tau, batch, duplicate, sigma, norm):
    rng = np.random.default_rng(30 + batch)
    za, zb = sample(rng, batch, duplicate=duplicate), sample(rng, batch, duplicate=duplicate)
    value = losses.dcl_loss(f32(za), f32(zb), tau, sigma, norm)
    np.testing.assert_allclose(value, dcl_numpy(za, zb, tau, sigma, norm), rtol=1e-5, atol=1e-5)
    for arg in (0, 1):
        grad = jax.grad(lambda a, b: losses.dcl_loss(a, b, tau, sigma, norm), argnums=arg)(f32(za), f32(zb))
        fn = (lambda x: dcl_numpy(x, zb, tau, sigma, norm)) if arg == 0 else (lambda x: dcl_numpy(za, x, tau, sigma,
                                                                                                      norm))
        assert_grad(grad, numeric_grad(fn, za if arg == 0 else zb))


def test_dcl_differs_from_nt_xent_by_the_positive_only():
    rng = np.random.default_rng(6)
    za, zb = f32(rng.normal(size=(5, 4))), f32(rng.normal(size=(5, 4)))
    # NT-Xent's denominator also holds the positive: L_ntx = L_dcl + mean log(1 + exp(pos) / sum_neg exp(neg))
    assert losses.dcl_loss(za, zb, 0.5) < losses.nt_xent(za, zb, 0.5)
    # DCLW's weights average to 1, so with equal positive similarities DCLW equals DCL
    np.testing.assert_allclose(losses.dcl_loss(za, za, 0.5, sigma=0.5), losses.dcl_loss(za, za, 0.5), rtol=1e-5)


# ----- median / truncated triplet ------------------------------------------------------------------------------------
@pytest.mark.parametrize('negative,batch,group,duplicate', [
    ('median', 2, 0, False), ('median', 6, 0, False), ('median', 7, 0, True), ('median', 6, 3, False),
    ('median', 8, 4, True), ('truncated', 12, 0, False), ('truncated', 12, 0, True), ('truncated', 24, 12, False)])
@pytest.mark.parametrize('margin', [100.0, 0.0])
def test_triplet_loss_value_and_gradient(negative, batch, group, duplicate, margin):
    rng = np.random.default_rng(40 + batch)
    p, t = sample(rng, batch, duplicate=duplicate), sample(rng, batch, duplicate=duplicate)
    value = losses.triplet_loss(f32(p), f32(t), 2.0, margin, negative, (1, 10), group)
    np.testing.assert_allclose(value, triplet_numpy(p, t, 2.0, margin, negative, (1, 10), group), rtol=1e-5,
                               atol=1e-4)
    grad = jax.grad(lambda x: losses.triplet_loss(x, f32(t), 2.0, margin, negative, (1, 10), group))(f32(p))
    assert_grad(grad, numeric_grad(lambda x: triplet_numpy(x, t, 2.0, margin, negative, (1, 10), group), p))
    np.testing.assert_array_equal(
        jax.grad(lambda x: losses.triplet_loss(f32(p), x, 2.0, margin, negative, (1, 10), group))(f32(t)), 0.0)


def test_triplet_loss_rejects_too_few_negatives():
    x = f32(np.ones((6, 3)))
    with pytest.raises(ValueError, match='at least 10 negatives'):
        losses.triplet_loss(x, x, negative='truncated')
    with pytest.raises(ValueError, match='median'):
        losses.triplet_loss(x, x, negative='mean')


# ----- objectives: queue, shuffled BatchNorm, warm-up, momentum ------------------------------------------------------
def build(method, **overrides):
    from ssljax import train
    config = tiny_config(method, **overrides)
    exp = train.build_experiment(config, None, 1797, 10)
    return config, exp


def random_views(batch=16, n=2, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    return [jax.random.uniform(k, (batch, 8, 8, 3)) for k in keys]


def init(exp):
    enc_key, head_key = jax.random.split(jax.random.key(0))
    enc = exp.encoder.init(enc_key, jnp.zeros((2, 8, 8, 3)), train=False)
    heads, state = exp.objective.init(head_key, enc)
    variables = {'params': {'encoder': enc['params'], **heads['params']},
                 'batch_stats': {'encoder': enc['batch_stats'], **heads['batch_stats']}}
    return variables, state


def test_mocov2_queue_is_fifo_of_normalised_global_keys():
    _, exp = build('mocov2', **{'objective.queue_size': 32, 'objective.bn_groups': 1})
    obj = exp.objective
    variables, state = init(exp)
    assert state['queue'].shape == (1, 32, 128) and int(state['queue_ptr']) == 0
    np.testing.assert_allclose(np.linalg.norm(state['queue'], axis=-1), 1.0, rtol=1e-5)
    first = state['queue']
    loss_fn = jax.jit(obj.loss)
    for step in range(3):
        views = random_views(seed=step)
        _, out = loss_fn(variables, state, views, {}, jax.random.key(step))
        target = Forward_keys(obj, state['target'], views[1])
        new = out.objective_state
        lo = (16 * step) % 32
        np.testing.assert_allclose(new['queue'][0, lo:lo + 16], target, rtol=1e-4, atol=1e-5)
        if step == 0:  # untouched rows stay
            np.testing.assert_array_equal(new['queue'][0, 16:], first[0, 16:])
        assert int(new['queue_ptr']) == (16 * (step + 1)) % 32 and int(new['step']) == step + 1
        state = new


def Forward_keys(obj, target, x):
    from ssljax.objectives.base import Forward
    fw = Forward(target)
    feats = fw.apply('encoder', obj.ctx.encoder, x)['pooled']
    return np.asarray(losses.l2_normalize(fw.apply('projector', obj.projector, feats)))


def test_mocov2_shuffled_batchnorm_equals_direct_per_group_computation():
    """bn_groups = 4: queries are normalised per group of 4 in batch order, keys per group of a permuted batch."""
    from ssljax.objectives.base import Forward
    _, exp = build('mocov2', **{'objective.bn_groups': 4})
    obj = exp.objective
    variables, state = init(exp)
    views = random_views()
    key = jax.random.key(7)
    q, feats, k, stats, _ = obj.encode(variables, state['target'], [views[0]], [views[1]], key)
    perm = np.asarray(jax.random.permutation(jax.random.split(key, 1)[0], 16))

    def direct(net, x):
        outs = []
        for g in range(4):
            fw = Forward(net)
            f = fw.apply('encoder', obj.ctx.encoder, x[4 * g:4 * g + 4])['pooled']
            outs.append(fw.apply('projector', obj.projector, f))
        return np.concatenate(outs)

    np.testing.assert_allclose(q[0], direct(variables, views[0]), rtol=1e-4, atol=1e-5)
    keys_shuffled = direct(state['target'], np.asarray(views[1])[perm])
    np.testing.assert_allclose(k[0], keys_shuffled[np.argsort(perm)], rtol=1e-4, atol=1e-5)
    # the shuffle matters: without it the keys differ
    assert not np.allclose(k[0], direct(state['target'], views[1]), atol=1e-3)


def test_mochi_is_mocov2_before_the_warm_up():
    over = {'objective.queue_size': 64, 'objective.n_hard': 16, 'objective.n_mix': 8, 'objective.n_mix_query': 4,
            'objective.mix_start_steps': 2}
    _, exp = build('mochi', **over)
    _, base = build('mocov2', **{'objective.queue_size': 64})
    variables, state = init(exp)
    views, key = random_views(), jax.random.key(1)
    mochi = jax.jit(lambda v, s, x, k: exp.objective.loss(v, s, x, {}, k))  # one compile for both steps
    loss_mochi, out = mochi(variables, state, views, key)
    loss_moco, _ = jax.jit(lambda v, s, x, k: base.objective.loss(v, s, x, {}, k))(variables, state, views, key)
    np.testing.assert_allclose(loss_mochi, loss_moco, rtol=1e-6)
    assert float(out.metrics['mixing']) == 0.0
    late = dict(state, step=jnp.asarray(2, jnp.int32))
    loss_mixed, out = mochi(variables, late, views, key)
    assert float(out.metrics['mixing']) == 1.0 and float(loss_mixed) > float(loss_moco)  # harder negatives


def test_mocov3_momentum_follows_the_reference_schedule():
    from ssljax.objectives.base import cosine_ema_momentum
    _, exp = build('mocov3')
    variables, state = init(exp)
    params = jax.tree.map(lambda x: x + 1.0, variables['params'])
    _, new = exp.objective.update(params, state, jnp.asarray(1))
    m = float(cosine_ema_momentum(0.99, 1, exp.total_steps))  # iteration 1's momentum, after optimizer step 1
    leaf = lambda tree: jax.tree.leaves(tree['encoder'])[0]  # noqa: E731
    np.testing.assert_allclose(leaf(new['target']['params']),
                               m * leaf(state['target']['params']) + (1 - m) * leaf(params), rtol=1e-6)


def tiny_variant(arg):
    """tiny_config's settings on ``configs/<arg>`` loaded with its variant arguments."""
    from ssljax import config_lib
    config = config_lib.load_config(os.path.join(REPO, 'configs', arg))
    tiny = tiny_config(arg.split('.py')[0])
    for key in ('dataset', 'image_size', 'batch_size', 'total_steps', 'eval'):
        config[key] = tiny[key]
    config.augment.size, config.augment.blur_prob, config.optimizer.warmup_steps = 8, 0.0, 1
    return config


def test_mocov3_vit_freezes_the_patch_embedding():
    from ssljax import train
    config = tiny_variant('mocov3.py:backbone=vit_test')
    assert config.objective.freeze_patch_embed and config.objective.predictor_last_bn
    assert config.optimizer.name == 'adamw'
    from ssljax import parallel
    from ssljax.data import pipeline
    mesh = parallel.make_mesh(jax.devices()[:1])
    data = pipeline.load_train_data(config, mesh)
    exp = train.build_experiment(config, mesh, data.num_examples, 10)
    assert exp.objective.freeze_steps == {'encoder/patch_embed': exp.total_steps}
    state = train.init_state(exp)
    before = jax.tree.map(np.asarray, state.params['encoder'])
    step, batches = train.make_train_step(exp), data.batches(0)
    for _ in range(2):
        state, metrics = step(state, next(batches), data.device_arrays)
    assert np.isfinite(float(metrics['loss']))
    after = state.params['encoder']
    jax.tree.map(np.testing.assert_array_equal, before['patch_embed'], jax.tree.map(np.asarray, after['patch_embed']))
    assert not np.allclose(before['cls_token'], after['cls_token'])


# ----- configuration errors: before compiling, naming the key --------------------------------------------------------
@pytest.mark.parametrize('method,overrides,message', [
    ('mocov2', {'objective.queue_size': 40}, 'objective.queue_size'),
    ('mochi', {'objective.queue_size': 32, 'objective.n_hard': 33}, 'objective.n_hard'),
    ('mocov2', {'objective.temperature': 0.0}, 'objective.temperature'),
    ('mocov3', {'objective.temperature': -1.0}, 'objective.temperature'),
    ('dcl', {'objective.temperature': 0.0}, 'objective.temperature'),
    ('mocov2', {'objective.bn_groups': 3}, 'bn_groups'),
    ('triplet', {'objective.negative': 'mean'}, 'objective.negative'),
    ('triplet', {'objective.neg_group': 5}, 'objective.neg_group'),
    ('triplet', {'objective.negative': 'truncated', 'objective.neg_group': 4}, 'objective.truncate_hi'),
    ('dclw', {'objective.weight_norm': 'max'}, 'objective.weight_norm'),
    ('dclw', {'objective.sigma': 0.0}, 'objective.sigma'),
    ('mocov3', {'objective.freeze_patch_embed': True}, 'objective.freeze_patch_embed'),
])
def test_bad_objective_config_names_the_key(method, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build(method, **overrides)


def test_temperature_range_is_checked_with_the_config():
    from ssljax import config_lib
    for method in ('mocov2', 'mochi', 'mocov3', 'dcl', 'dclw'):
        config = tiny_config(method, **{'objective.temperature': 0.0})
        with pytest.raises(config_lib.ConfigError, match='objective.temperature'):
            config_lib.check_ranges(config)


def test_unknown_variant_is_an_error():
    from ssljax import config_lib
    with pytest.raises(ValueError, match='negative'):
        config_lib.load_config(os.path.join(REPO, 'configs', 'triplet.py:negative=mean'))
    with pytest.raises(ValueError, match='unknown config argument'):
        config_lib.load_config(os.path.join(REPO, 'configs', 'mocov2.py:variant=v1'))


def test_configs_have_reference_defaults():
    from ssljax import config_lib
    load = lambda name: config_lib.load_config(os.path.join(REPO, 'configs', name))  # noqa: E731
    c = load('mocov2.py:dataset=cifar10')
    assert (c.objective.queue_size, c.objective.temperature, c.objective.projector_dim) == (32768, 0.2, 256)
    assert c.objective.symmetric and c.optimizer.name == 'sgd' and c.optimizer.lr == 0.3
    c = load('mocov2.py')
    assert c.objective.queue_size % c.batch_size == 0 and c.objective.bn_groups == 8 and not c.objective.symmetric
    c = load('mochi.py:dataset=cifar10')
    assert (c.objective.n_hard, c.objective.n_mix, c.objective.n_mix_query) == (1024, 1024, 128)
    c = load('mocov3.py:dataset=cifar10')
    assert (c.objective.temperature, c.objective.ema_base, c.objective.projector_hidden) == (0.2, 0.99, (4096,))
    c = load('mocov3.py:backbone=vit_small')
    assert c.objective.projector_hidden == (512, 512) and c.objective.freeze_patch_embed
    assert (load('dclw.py').objective.sigma, load('dcl.py').objective.temperature) == (0.5, 0.1)
    c = load('triplet.py:negative=truncated')
    assert (c.objective.gamma, c.objective.margin, c.objective.negative) == (2.0, 100.0, 'truncated')


def test_bad_queue_stops_the_run_before_compiling(tmp_path):
    cmd = [sys.executable, '-m', 'ssljax.main', '--config', 'configs/mocov2.py', '--workdir', str(tmp_path / 'w'),
           '--config.dataset=digits', '--config.image_size=8', '--config.augment.size=8', '--config.batch_size=16',
           '--config.model.backbone=resnet_tiny', '--config.objective.queue_size=100',
           '--config.eval.random_init_baseline=false']
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.startswith('ssljax: error')]
    assert len(lines) == 1 and 'objective.queue_size' in lines[0] and 'batch_size = 16' in lines[0], r.stderr[-2000:]
    assert not os.path.exists(tmp_path / 'w' / 'checkpoints')
