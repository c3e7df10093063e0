"""Contrastive family B: iSogCLR, Contrastive Clustering, G-SimCLR, DenseCL.

Each loss against a direct, loop-based NumPy implementation of its formula (value and gradient; batch of 2,
duplicated samples, temperatures 0.05 and 1.0); the objectives' state handling (per-sample tables, queues, grouped
BatchNorm, the cluster-assignment hook); the G-SimCLR sampler; configuration errors naming the key; the configs;
and an exact resume through the real loop (iSogCLR's tables and the G-SimCLR sampler's pseudo-labels).
"""
import functools
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import REPO, tiny_config

from ssljax import config_lib, configure
from ssljax.objectives import Context, create_objective, losses
from ssljax.objectives.base import grouped_forward
from ssljax.objectives.gsimclr import PseudoLabelSampler

f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def numeric_grad(f, x, eps=1e-6):
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[idx] = eps
        g[idx] = (f(x + d) - f(x - d)) / (2 * eps)
    return g


def pair(batch, dim, seed, duplicated=False):
    rng = np.random.default_rng(seed)
    za, zb = rng.normal(size=(batch, dim)), rng.normal(size=(batch, dim))
    if duplicated:  # sample 1 is an exact copy of sample 0 (both views)
        za[1], zb[1] = za[0], zb[0]
    return za, zb


# Edge cases shared by the contrastive losses: (batch, duplicated, temperature)
CASES = [(2, False, 0.05), (2, False, 1.0), (5, False, 0.05), (5, True, 1.0), (4, True, 0.05)]


# ============================================================================================== NT-Xent (mean form)

def nt_xent_mean_numpy(za, zb, tau):
    u = unit(np.concatenate([za, zb]))
    n = len(u)
    total = 0.0
    for i in range(n):
        j = (i + n // 2) % n
        denom = sum(np.exp(u[i] @ u[k] / tau) for k in range(n) if k != i)
        total += -(u[i] @ u[j] / tau - np.log(denom))
    return total / n


@pytest.mark.parametrize('batch,duplicated,tau', CASES)
def test_nt_xent_mean_value_and_gradient(batch, duplicated, tau):
    za, zb = pair(batch, 4, 0, duplicated)
    np.testing.assert_allclose(losses.nt_xent_mean(f32(za), f32(zb), tau), nt_xent_mean_numpy(za, zb, tau),
                               rtol=1e-5)
    grad = jax.grad(lambda a: losses.nt_xent_mean(a, f32(zb), tau))(f32(za))
    np.testing.assert_allclose(grad, numeric_grad(lambda a: nt_xent_mean_numpy(a, zb, tau), za), rtol=2e-3,
                               atol=2e-4)


# ====================================================================================================== iSogCLR

HYPER = dict(gamma=0.8, rho=0.4, eta=0.03, beta_u=0.5, tau_min=0.05, tau_max=1.0, grad_clip=3.0)


def isogclr_numpy(za, zb, tau, s_prev, u_prev, variant, weights_from=None, gamma=0.8, rho=0.4, eta=0.03, beta_u=0.5,
                  tau_min=0.05, tau_max=1.0, grad_clip=3.0):
    """The update of the docstring, one anchor and one negative at a time; ``weights_from`` (za, zb) freezes the
    stop-gradient weights at other embeddings (for the numeric gradient of the surrogate)."""
    b = len(za)
    u = unit(np.concatenate([za, zb]))
    uw = u if weights_from is None else unit(np.concatenate(weights_from))
    loss, s_view, d = 0.0, np.zeros(2 * b), np.zeros(2 * b)
    for r in range(2 * b):
        i, partner = r % b, (r + b) % (2 * b)
        pos, pos_w = u[i] @ u[i + b], uw[i] @ uw[i + b]
        negatives = [j for j in range(2 * b) if j not in (r, partner)]
        h_w = [uw[r] @ uw[j] - (pos_w if variant == 'paper' else 0.0) for j in negatives]
        e = [np.exp(h / tau[i]) for h in h_w]
        rate = gamma if s_prev[i] > 0 else 1.0
        s = (1 - rate) * s_prev[i] + rate * np.mean(e)
        w = [x / s for x in e]
        if variant == 'paper':
            loss += np.mean([wj * (u[r] @ u[j] - pos) for wj, j in zip(w, negatives)])
        else:
            loss += np.mean([wj * (u[r] @ u[j]) for wj, j in zip(w, negatives)]) - pos
        d[r] = np.log(s) + rho - np.mean([wj * h / tau[i] for wj, h in zip(w, h_w)])
        s_view[r] = s
    grad_tau = np.clip((d[:b] + d[b:]) / 2, -grad_clip, grad_clip)
    u_new = (1 - beta_u) * u_prev + beta_u * grad_tau
    return loss / b, dict(s=(s_view[:b] + s_view[b:]) / 2, u=u_new, grad_tau=grad_tau,
                          tau=np.clip(tau - eta * u_new, tau_min, tau_max))


@pytest.mark.parametrize('variant', ['paper', 'code'])
@pytest.mark.parametrize('batch,duplicated,tau_value', CASES + [(4, False, None)])
def test_isogclr_loss_value_state_and_gradient(variant, batch, duplicated, tau_value):
    rng = np.random.default_rng(batch)
    za, zb = pair(batch, 4, 1, duplicated)
    tau = np.full(batch, tau_value) if tau_value else rng.uniform(0.05, 1.0, batch)  # None: one tau per sample
    s_prev = np.where(np.arange(batch) % 2 == 0, 0.0, rng.uniform(0.5, 2.0, batch))  # first and later visits
    u_prev = rng.normal(size=batch)
    loss, new = losses.isogclr_loss(f32(za), f32(zb), f32(tau), f32(s_prev), f32(u_prev), variant=variant, **HYPER)
    ref_loss, ref = isogclr_numpy(za, zb, tau, s_prev, u_prev, variant)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-4, atol=1e-5)
    for key in ('s', 'tau', 'u', 'grad_tau'):
        np.testing.assert_allclose(new[key], ref[key], rtol=1e-4, atol=1e-5, err_msg=key)
    for which in (0, 1):  # gradient of the surrogate w.r.t. each view, the weights held at their values
        def numpy_loss(x):
            views = [za, zb]
            views[which] = x
            return isogclr_numpy(*views, tau, s_prev, u_prev, variant, weights_from=(za, zb))[0]

        def jax_loss(x):
            views = [f32(za), f32(zb)]
            views[which] = x
            return losses.isogclr_loss(*views, f32(tau), f32(s_prev), f32(u_prev), variant=variant, **HYPER)[0]
        x0 = (za, zb)[which]
        np.testing.assert_allclose(jax.grad(jax_loss)(f32(x0)), numeric_grad(numpy_loss, x0), rtol=2e-3, atol=2e-4)


def test_isogclr_temperatures_stay_in_range_and_move_against_the_gradient():
    za, zb = pair(6, 4, 3)
    tau, s, u = f32(np.full(6, 0.3)), f32(np.zeros(6)), f32(np.zeros(6))
    _, new = losses.isogclr_loss(f32(za), f32(zb), tau, s, u, **dict(HYPER, eta=10.0))
    assert np.all((np.asarray(new['tau']) >= 0.05) & (np.asarray(new['tau']) <= 1.0))
    moved = np.sign(np.asarray(new['tau']) - 0.3)
    np.testing.assert_array_equal(moved[np.abs(new['grad_tau']) > 1e-3], -np.sign(new['grad_tau'])[
        np.abs(new['grad_tau']) > 1e-3])
    with pytest.raises(ValueError, match='variant'):
        losses.isogclr_loss(f32(za), f32(zb), tau, s, u, variant='nope')


# ========================================================================================== Contrastive Clustering

def cc_numpy(pa, pb, tau, log_k=False):
    k = pa.shape[1]
    cols = unit(np.concatenate([pa.T, pb.T]))
    contrast = 0.0
    for r in range(2 * k):
        partner = (r + k) % (2 * k)
        denom = sum(np.exp(cols[r] @ cols[j] / tau) for j in range(2 * k) if j != r)
        contrast += -(cols[r] @ cols[partner] / tau - np.log(denom))
    contrast /= 2 * k
    entropy = 0.0
    for p in (pa, pb):
        marginal = p.sum(0) / p.sum()
        entropy -= sum(m * np.log(m) for m in marginal)
    return contrast - entropy + (2 * np.log(k) if log_k else 0.0)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize('log_k', [False, True])
@pytest.mark.parametrize('batch,duplicated,tau', CASES)
def test_cc_cluster_loss_value_and_gradient(batch, duplicated, tau, log_k):
    la, lb = pair(batch, 3, 2, duplicated)  # logits of K = 3 clusters
    value, metrics = losses.cc_cluster_loss(jax.nn.softmax(f32(la)), jax.nn.softmax(f32(lb)), tau, log_k)
    np.testing.assert_allclose(value, cc_numpy(softmax(la), softmax(lb), tau, log_k), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(metrics['cluster_contrast'] - metrics['cluster_entropy'],
                               cc_numpy(softmax(la), softmax(lb), tau), rtol=1e-4, atol=1e-5)
    grad = jax.grad(lambda x: losses.cc_cluster_loss(jax.nn.softmax(x), jax.nn.softmax(f32(lb)), tau, log_k)[0])(
        f32(la))
    expected = numeric_grad(lambda x: cc_numpy(softmax(x), softmax(lb), tau, log_k), la)
    np.testing.assert_allclose(grad, expected, rtol=2e-3, atol=2e-4)


def test_cc_entropy_term_prefers_balanced_clusters():
    balanced = jnp.eye(4)[jnp.arange(8) % 4]
    collapsed = jnp.eye(4)[jnp.zeros(8, jnp.int32)] * 0.97 + 0.01
    assert losses.cc_cluster_loss(balanced, balanced, 1.0)[1]['cluster_entropy'] > \
        losses.cc_cluster_loss(collapsed, collapsed, 1.0)[1]['cluster_entropy']
    np.testing.assert_allclose(losses.cc_cluster_loss(balanced, balanced, 1.0)[1]['cluster_entropy'], 2 * np.log(4),
                               rtol=1e-6)


# ========================================================================================================= DenseCL

def infonce_numpy(q, k, queue, tau):
    q, k, queue = unit(q), unit(k), unit(queue)
    total = 0.0
    for i in range(len(q)):
        logits = [q[i] @ k[i] / tau] + [q[i] @ queue[m] / tau for m in range(len(queue))]
        total += -(logits[0] - np.log(sum(np.exp(x) for x in logits)))
    return total / len(q)


def dense_numpy(q_grid, k_grid, q_back, k_back, queue, tau):
    r, t, qb, kb, queue = unit(q_grid), unit(k_grid), unit(q_back), unit(k_back), unit(queue)
    total, count = 0.0, 0
    for n in range(r.shape[0]):
        for s in range(r.shape[1]):
            sims = [qb[n, s] @ kb[n, c] for c in range(kb.shape[1])]
            best = int(np.argmax(sims))  # first maximum on ties
            logits = [r[n, s] @ t[n, best] / tau] + [r[n, s] @ queue[m] / tau for m in range(len(queue))]
            total += -(logits[0] - np.log(sum(np.exp(x) for x in logits)))
            count += 1
    return total / count


@pytest.mark.parametrize('batch,duplicated,tau', CASES)
def test_densecl_global_loss_value_gradient_and_constant_keys(batch, duplicated, tau):
    q, k = pair(batch, 4, 4, duplicated)
    queue = np.random.default_rng(5).normal(size=(6, 4))
    np.testing.assert_allclose(losses.densecl_global_loss(f32(q), f32(k), f32(queue), tau),
                               infonce_numpy(q, k, queue, tau), rtol=1e-5, atol=1e-6)
    grad = jax.grad(lambda x: losses.densecl_global_loss(x, f32(k), f32(queue), tau))(f32(q))
    np.testing.assert_allclose(grad, numeric_grad(lambda x: infonce_numpy(x, k, queue, tau), q), rtol=2e-3, atol=2e-4)
    key_grads = jax.grad(lambda kk, qq: losses.densecl_global_loss(f32(q), kk, qq, tau), argnums=(0, 1))(
        f32(k), f32(queue))
    assert all(float(jnp.abs(g).max()) == 0.0 for g in key_grads)


@pytest.mark.parametrize('batch,duplicated,tau', CASES)
def test_densecl_dense_loss_value_gradient_and_matching(batch, duplicated, tau):
    rng = np.random.default_rng(6)
    cells, dim, channels = 4, 3, 5
    q_grid, k_grid = rng.normal(size=(2, batch, cells, dim))
    q_back, k_back = rng.normal(size=(2, batch, cells, channels))
    if duplicated:  # two identical key cells: the first one of highest similarity is the positive
        k_back[:, 2] = k_back[:, 1]
        q_back[:, 0] = k_back[:, 1]
        q_grid[1], k_grid[1], q_back[1], k_back[1] = q_grid[0], k_grid[0], q_back[0], k_back[0]
    queue = rng.normal(size=(7, dim))
    args = lambda qg: (qg, f32(k_grid), f32(q_back), f32(k_back), f32(queue), tau)  # noqa: E731
    np.testing.assert_allclose(losses.densecl_dense_loss(*args(f32(q_grid))),
                               dense_numpy(q_grid, k_grid, q_back, k_back, queue, tau), rtol=1e-5, atol=1e-6)
    grad = jax.grad(lambda x: losses.densecl_dense_loss(*args(x)))(f32(q_grid))
    expected = numeric_grad(lambda x: dense_numpy(x, k_grid, q_back, k_back, queue, tau), q_grid)
    np.testing.assert_allclose(grad, expected, rtol=2e-3, atol=2e-4)
    match = np.asarray(losses.densecl_match(f32(q_back), f32(k_back)))
    for n in range(batch):
        for s in range(cells):
            assert match[n, s] == int(np.argmax(unit(k_back[n]) @ unit(q_back[n, s])))
    if duplicated:
        assert np.all(match[:, 0] == 1)
    others = jax.grad(lambda *xs: losses.densecl_dense_loss(f32(q_grid), *xs, tau), argnums=(0, 1, 2, 3))(
        f32(k_grid), f32(q_back), f32(k_back), f32(queue))
    assert all(float(jnp.abs(g).max()) == 0.0 for g in others)


# ================================================================================================== the objectives

class TinyEncoder(nn.Module):
    """Conv - BN - ReLU; pooled features and a 4 x 4 feature map of 6 channels."""

    @nn.compact
    def __call__(self, x, train: bool = True, mask=None):
        x = nn.Conv(6, (3, 3), strides=(2, 2))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        return {'pooled': x.mean(axis=(1, 2)), 'feature_map': x}


B = 8
OBJECTIVE_KEYS = {
    'isogclr': dict(temperature=0.1, temperature_min=0.05, temperature_max=1.0, gamma=0.8, dro_rho=0.4, eta=0.03,
                    beta_u=0.5, tau_grad_clip=3.0, variant='paper', projector_hidden=(16,), projector_dim=8,
                    projector_bn=True, bn_per_view=False),
    'contrastive_clustering': dict(instance_temperature=0.5, cluster_temperature=1.0, num_clusters=3,
                                   entropy_log_k=False, instance_hidden=(16,), instance_dim=8, cluster_hidden=(16,),
                                   bn_per_view=True),
    'gsimclr': dict(temperature=0.1, projector_hidden=(16,), projector_dim=8, projector_bn=True, bn_per_view=True),
    'densecl': dict(temperature=0.2, queue_size=16, momentum=0.9, loss_lambda=0.5, bn_groups=2,
                    projector_hidden=(16,), projector_dim=8, projector_bn=False, projector_last_bn=False,
                    dense_projector_hidden=(16,), dense_projector_dim=8, dense_projector_bn=False,
                    dense_projector_last_bn=False),
}


def make(method, num_examples=20, **overrides):
    config = ml_collections.ConfigDict({'method': method, 'model': {'backbone': 'resnet_tiny'}, 'batch_size': B,
                                        'objective': {**OBJECTIVE_KEYS[method], **overrides}})
    ctx = Context(encoder=TinyEncoder(), feature_dim=6, total_steps=10, global_batch=B, num_examples=num_examples)
    return create_objective(config, ctx)


@functools.lru_cache(maxsize=None)
def jitted(objective):
    def step(params, stats, state, views, index, rng):
        def loss_fn(p):
            return objective.loss({'params': p, 'batch_stats': stats}, state, views, {'index': index}, rng)
        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, out, grads, objective.update(params, out.objective_state, jnp.int32(1))
    return jax.jit(step), jax.jit(objective.init)


def setup(objective):
    enc = TinyEncoder().init(jax.random.key(0), jnp.zeros((2, 8, 8, 3)), train=False)
    heads, state = jitted(objective)[1](jax.random.key(1), enc)
    return ({'encoder': enc['params'], **heads['params']}, {'encoder': enc['batch_stats'], **heads['batch_stats']},
            state)


def views(seed=0):
    a, b = jax.random.split(jax.random.key(seed))
    return [jax.random.normal(a, (B, 8, 8, 3)), jax.random.normal(b, (B, 8, 8, 3))]


def run(objective, params, stats, state, index=None, rng=0, seed=0):
    index = jnp.arange(B, dtype=jnp.int32) if index is None else jnp.asarray(index, jnp.int32)
    return jitted(objective)[0](params, stats, state, views(seed), index, jax.random.key(rng))


@pytest.mark.parametrize('method', list(OBJECTIVE_KEYS))
def test_objective_trains_under_jit(method):
    objective = make(method)
    params, stats, state = setup(objective)
    loss, out, grads, (new_params, new_state) = run(objective, params, stats, state)
    assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in out.metrics.values())
    assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads['encoder']))) > 0
    shapes = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)  # noqa: E731
    assert shapes(out.objective_state) == shapes(state) == shapes(new_state)
    assert shapes(out.batch_stats) == shapes(stats) and out.probe_features.shape == (B, 6)


def test_isogclr_tables_update_only_the_batch_rows():
    objective = make('isogclr', num_examples=20)
    rows = jax.sharding.PartitionSpec(('data', 'fsdp'))  # split over every device of the mesh
    assert objective.state_partition(None) == {'s': rows, 'tau': rows, 'u': rows}
    params, stats, state = setup(objective)
    assert state['tau'].shape == (20,) and np.all(np.asarray(state['tau']) == np.float32(0.1))
    index = np.array([3, 17, 0, 9, 4, 12, 19, 7])
    loss, out, _, _ = run(objective, params, stats, state, index)
    new = jax.tree.map(np.asarray, out.objective_state)
    untouched = np.setdiff1d(np.arange(20), index)
    assert np.all(new['s'][untouched] == 0) and np.all(new['tau'][untouched] == np.float32(0.1))
    assert np.all(new['s'][index] > 0) and np.all(new['tau'][index] != np.float32(0.1))
    # the rows are exactly the loss function's update of the batch's rows
    fw_loss, ref = losses.isogclr_loss(*_projections(objective, params, stats), state['tau'][index],
                                       state['s'][index], state['u'][index], **_hyper(objective))
    np.testing.assert_allclose(loss, fw_loss, rtol=1e-5)
    for key in ('s', 'tau', 'u'):
        np.testing.assert_allclose(new[key][index], ref[key], rtol=1e-4)  # jit vs eager float32
    # a second visit blends with the stored estimate (gamma) instead of overwriting it
    _, out2, _, _ = run(objective, params, stats, out.objective_state, index, seed=1)
    assert not np.allclose(np.asarray(out2.objective_state['s'])[index], new['s'][index])
    np.testing.assert_allclose(out.metrics['tau_mean'], 0.1, rtol=1e-6)


def _hyper(o):
    return dict(gamma=o.gamma, rho=o.dro_rho, eta=o.eta, beta_u=o.beta_u, tau_min=o.temperature_min,
                tau_max=o.temperature_max, grad_clip=o.tau_grad_clip, variant=o.variant)


def _projections(objective, params, stats):
    from ssljax.objectives import Forward
    fw = Forward({'params': params, 'batch_stats': stats})
    feats = [o['pooled'] for o in fw.encode(objective.ctx.encoder, views(0))]
    return fw.apply_views('projector', objective.projector, feats)


def test_cc_cluster_assignments_hook():
    objective = make('contrastive_clustering')
    params, stats, _ = setup(objective)
    images = jax.random.normal(jax.random.key(5), (5, 8, 8, 3))
    assign = jax.jit(objective.cluster_assignments)({'params': params, 'batch_stats': stats}, images)
    assert assign.shape == (5,) and assign.dtype == jnp.int32
    assert np.all((np.asarray(assign) >= 0) & (np.asarray(assign) < 3))
    feats = TinyEncoder().apply({'params': params['encoder'], 'batch_stats': stats['encoder']}, images,
                                train=False)['pooled']
    logits = objective.cluster_projector.apply({'params': params['cluster_projector']}, feats, train=False)
    np.testing.assert_array_equal(assign, np.argmax(np.asarray(logits), axis=-1))


def test_densecl_queue_target_and_shuffled_bn():
    objective = make('densecl')
    params, stats, state = setup(objective)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(state['queue']), axis=1), 1.0, rtol=1e-5)
    loss, out, _, (new_params, new_state) = run(objective, params, stats, state)
    q = np.asarray(out.objective_state['queue'])
    assert int(out.objective_state['ptr']) == B
    np.testing.assert_array_equal(q[B:], np.asarray(state['queue'])[B:])  # FIFO: only the first B rows replaced
    assert not np.allclose(q[:B], np.asarray(state['queue'])[:B])
    np.testing.assert_allclose(np.linalg.norm(q[:B], axis=1), 1.0, rtol=1e-5)
    _, out2, _, _ = run(objective, params, stats, out.objective_state)
    assert int(out2.objective_state['ptr']) == 0  # 16 / 8: wrapped around
    # update(): the target moves towards the online network by (1 - m), m = 0.9 here
    moved = jax.tree.map(lambda x: x + 1.0, params)
    _, after = objective.update(moved, out.objective_state, jnp.int32(1))
    t0 = state['target']['params']
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b + 0.1, rtol=1e-5, atol=1e-6),
                 after['target']['params'], t0)
    # shuffled BN: with 2 groups the permutation changes the keys (and so the loss); with 1 group it cannot
    loss_b = run(objective, params, stats, state, rng=1)[0]
    assert abs(float(loss) - float(loss_b)) > 1e-6
    one = make('densecl', bn_groups=1)
    p1, s1, st1 = setup(one)
    np.testing.assert_allclose(run(one, p1, s1, st1, rng=0)[0], run(one, p1, s1, st1, rng=1)[0], rtol=1e-5)


def test_grouped_forward_is_per_group_batchnorm():
    encoder = TinyEncoder()
    x = jax.random.normal(jax.random.key(3), (8, 8, 8, 3))
    variables = encoder.init(jax.random.key(4), x[:2], train=False)
    net = {'params': {'encoder': variables['params']}, 'batch_stats': {'encoder': variables['batch_stats']}}
    out, stats = grouped_forward(net, 4, x, lambda fw, chunk: fw.apply('encoder', encoder, chunk))
    stats = stats['encoder']
    for g in range(4):
        alone, upd = encoder.apply(variables, x[2 * g:2 * g + 2], train=True, mutable=['batch_stats'])
        np.testing.assert_allclose(out['pooled'][2 * g:2 * g + 2], alone['pooled'], rtol=1e-5, atol=1e-6)
    per_group = [encoder.apply(variables, x[2 * g:2 * g + 2], train=True, mutable=['batch_stats'])[1]['batch_stats']
                 for g in range(4)]
    jax.tree.map(lambda a, *bs: np.testing.assert_allclose(a, np.mean(bs, axis=0), rtol=1e-5, atol=1e-7),
                 stats, *per_group)


# ========================================================================================= the G-SimCLR sampler

def sampler(n=100, batch=8, **settings):
    return PseudoLabelSampler(ml_collections.ConfigDict(dict(name='gsimclr', **settings)), n, batch, seed=3)


def test_gsimclr_batches_have_distinct_pseudo_labels_and_cycle_each_cluster():
    s = sampler(num_clusters=0)
    assert s.num_clusters == 8
    labels = np.random.default_rng(0).integers(0, 8, 100).astype(np.int32)
    state = {'pseudo': labels}
    seen = []
    for step in range(40):
        idx = s.indices(step, state)
        assert idx.dtype == np.int64 and len(idx) == 8 and len(set(idx)) == 8
        assert sorted(labels[idx]) == list(range(8))  # k = B: one image of every cluster
        seen.append(idx)
        np.testing.assert_array_equal(idx, s.indices(step, {'pseudo': labels.copy()}))  # pure in (step, state)
    seen = np.concatenate(seen)
    for c in range(8):  # over |c| consecutive steps each member of cluster c is drawn once
        members = np.flatnonzero(labels == c)
        first = [i for i in seen[:8 * len(members)] if labels[i] == c]
        assert sorted(first) == sorted(members)
    # more clusters than the batch: B distinct ones per step
    s = sampler(num_clusters=20)
    labels = np.arange(100, dtype=np.int32) % 20
    for step in range(10):
        idx = s.indices(step, {'pseudo': labels})
        assert len(set(labels[idx])) == 8


def test_gsimclr_reference_batching_and_degenerate_labels():
    s = sampler(n=24, batch=4, batching='reference', num_clusters=4)
    labels = np.array([0, 1, 2, 3] * 6, np.int32)[np.random.default_rng(1).permutation(24)]
    order = np.concatenate([s.indices(step, {'pseudo': labels}) for step in range(6)])
    assert sorted(order) == list(range(24)) and s.steps_per_epoch == 6
    for step in range(6):  # equal cluster sizes: every batch is one rank level, one image per cluster
        assert sorted(labels[order[4 * step:4 * step + 4]]) == [0, 1, 2, 3]
    np.testing.assert_array_equal(s.indices(6, {'pseudo': labels}), s.indices(0, {'pseudo': labels}))
    # fewer non-empty clusters than the batch (a collapsed encoder): still B distinct images
    s = sampler(num_clusters=8)
    idx = s.indices(0, {'pseudo': (np.arange(100) % 3).astype(np.int32)})
    assert len(set(idx)) == 8 and len(set((np.arange(100) % 3)[idx])) == 3


def test_gsimclr_refresh_schedule_and_kmeans():
    s = sampler(n=100, batch=10, refresh_epochs=0.5)
    assert [t for t in range(25) if s.refresh_steps(t)] == [0, 5, 10, 15, 20]
    assert [t for t in range(25) if sampler(refresh_epochs=0.0).refresh_steps(t)] == [0]
    centres = np.random.default_rng(0).normal(size=(10, 5)) * 10
    feats = centres[np.arange(100) % 10] + np.random.default_rng(1).normal(size=(100, 5)) * 0.01

    class Tools:
        def train_features(self, network=''):
            return feats.astype(np.float32)
    new = s.refresh(0, s.init_state(), Tools())
    assert new['pseudo'].dtype == np.int32 and new['pseudo'].shape == (100,)
    # k-means recovers the ten well-separated groups; the same inputs give the same labels (every host)
    for c in range(10):
        assert len(set(new['pseudo'][np.arange(100) % 10 == c])) == 1
    np.testing.assert_array_equal(new['pseudo'], s.refresh(0, s.init_state(), Tools())['pseudo'])


# ====================================================================================== configuration errors

def base_config(method, **objective):
    return tiny_config(method, **objective)


def build(config, num_examples=1442):
    from ssljax.models import registry
    configure.validate(config, num_devices=1, check_data=False)
    encoder, dim = registry.create_encoder(config.model.backbone, image_size=config.augment.size,
                                           **({} if config.model.backbone.startswith('vit') else
                                              {'cifar_stem': config.model.cifar_stem}))
    return create_objective(config, Context(encoder=encoder, feature_dim=dim, total_steps=4,
                                            global_batch=config.batch_size, num_examples=num_examples))


BAD = [
    ('isogclr', {'objective.temperature': 0.0}, 'objective.temperature'),
    ('isogclr', {'objective.temperature_min': -0.1}, 'objective.temperature_min'),
    ('isogclr', {'objective.temperature_min': 0.01}, 'objective.temperature_min'),
    ('isogclr', {'objective.temperature': 2.0}, 'objective.temperature'),
    ('isogclr', {'objective.variant': 'libauc'}, 'objective.variant'),
    ('isogclr', {'objective.gamma': 0.0}, 'objective.gamma'),
    ('contrastive_clustering', {'objective.cluster_temperature': -1.0}, 'objective.cluster_temperature'),
    ('contrastive_clustering', {'objective.num_clusters': 1}, 'objective.num_clusters'),
    ('gsimclr', {'objective.temperature': 0.0}, 'objective.temperature'),
    ('densecl', {'objective.queue_size': 100}, 'objective.queue_size'),
    ('densecl', {'objective.temperature': -0.2}, 'objective.temperature'),
    ('densecl', {'objective.bn_groups': 3}, 'objective.bn_groups'),
    ('densecl', {'objective.loss_lambda': 1.5}, 'objective.loss_lambda'),
    ('densecl', {'model.backbone': 'vit_test'}, 'model.backbone'),
]


@pytest.mark.parametrize('method,changes,key', BAD)
def test_bad_objective_config_names_the_key(method, changes, key):
    with pytest.raises(config_lib.ConfigError, match=key.replace('.', r'\.')):
        build(base_config(method, **changes))


@pytest.mark.parametrize('settings,key', [
    (dict(num_clusters=2000), 'larger than the training set'),
    (dict(num_clusters=8), 'must be >= batch_size'),
    (dict(batching='random'), 'sampler.batching'),
    (dict(network='teacherr'), 'sampler.network'),
    (dict(refresh_epochs=-1.0), 'sampler.refresh_epochs'),
])
def test_bad_sampler_settings_name_the_key(settings, key):
    with pytest.raises(config_lib.ConfigError, match=key):
        sampler(n=1442, batch=16, **settings)


def test_bad_config_stops_the_command_line_before_compiling(tmp_path):
    """Through ``python -m ssljax.main``: exit 2, one line naming the key, before any step or checkpoint."""
    args = ['-m', 'ssljax.main', '--config=configs/densecl.py', f'--workdir={tmp_path}', '--config.dataset=digits',
            '--config.image_size=8', '--config.augment.size=8', '--config.batch_size=16',
            '--config.objective.queue_size=24']
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 2, r.stderr[-2000:]
    assert 'objective.queue_size' in r.stderr and 'multiple' in r.stderr
    assert not os.path.exists(tmp_path / 'checkpoints') or not os.listdir(tmp_path / 'checkpoints')


# ============================================================================================ configs

METHODS = ('isogclr', 'contrastive_clustering', 'gsimclr', 'densecl')


@pytest.mark.parametrize('name', METHODS)
@pytest.mark.parametrize('variant', ['', ':dataset=cifar10'])
def test_configs_validate_and_build(name, variant):
    config = config_lib.load_config(f'configs/{name}.py{variant}')
    objective = build(config, num_examples=50000)
    assert objective.name == config.method == name
    assert config.model.backbone == ('resnet_mini' if not variant else
                                     'resnet34' if name == 'contrastive_clustering' else 'resnet18')


def test_config_reference_defaults():
    iso = config_lib.load_config('configs/isogclr.py:dataset=cifar10')
    assert (iso.objective.temperature, iso.objective.dro_rho, iso.objective.gamma, iso.objective.eta,
            iso.objective.beta_u, iso.batch_size, iso.optimizer.lr) == (0.1, 0.4, 0.8, 0.03, 0.5, 128, 0.8)
    assert iso.objective.variant == 'paper' and iso.evals.isogclr.type == 'isogclr_tau'
    cc = config_lib.load_config('configs/contrastive_clustering.py:dataset=cifar10')
    assert (cc.objective.instance_temperature, cc.objective.cluster_temperature, cc.objective.num_clusters,
            cc.optimizer.name, cc.optimizer.lr, cc.optimizer.weight_decay) == (0.5, 1.0, 10, 'adamw', 3e-4, 0.0)
    assert cc.evals.clustering.type == 'clustering' and cc.evals.feature_kmeans.type == 'feature_kmeans'
    g = config_lib.load_config('configs/gsimclr.py:dataset=cifar10')
    assert (g.sampler.name, g.sampler.num_clusters, g.batch_size, g.objective.temperature) == ('gsimclr', 0, 64, 0.1)
    d = config_lib.load_config('configs/densecl.py:dataset=cifar10')
    assert (d.objective.loss_lambda, d.objective.temperature, d.objective.momentum, d.objective.bn_groups) == \
        (0.5, 0.2, 0.999, 8)
    assert d.objective.queue_size % d.batch_size == 0


# ============================================================================== exact resume through the loop

RESUME = dict(total_steps=5, checkpoint_every=2, log_every=1)


@pytest.mark.slow  # end-to-end: runs in .ci/run's slow step (pytest -m slow)
def test_isogclr_tables_and_gsimclr_sampler_resume_exactly(tmp_path):
    """iSogCLR with the G-SimCLR sampler (re-clustered every 2 steps): 5 steps straight, and stopped right after the
    checkpoint of step 2 then resumed; the final checkpoints (tables, pseudo-labels, everything) are identical."""
    from ssljax import checkpoint as ckpt_lib
    from ssljax import train

    class StopAfterCheckpoint(train.Hook):
        def after_checkpoint(self, step):
            if step == 2:
                raise RuntimeError('stopped right after the checkpoint of step 2')

    def config():
        c = tiny_config('isogclr', **RESUME)
        c.sampler = ml_collections.ConfigDict(dict(name='gsimclr', num_clusters=0, refresh_epochs=2 / 90,
                                                   network='', batching='distinct'))
        c.evals = ml_collections.ConfigDict({
            'knn': dict(type='knn', every=0, network='', k=20, temperature=0.1),
            'isogclr': dict(type='isogclr_tau', every=0, network='', bins=10)})
        c.eval.baseline_evals = ()
        return c

    def train_and_evaluate(workdir, hooks=()):
        return train.train_and_evaluate(config(), workdir, hooks=hooks)

    straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
    summary = train_and_evaluate(straight)
    assert summary['steps'] == 5 and 0 < summary['isogclr_visited'] <= 5 * 16 / 1442 + 1e-9
    assert os.path.exists(os.path.join(straight, 'figures', 'isogclr_tau_0000005.png'))
    with pytest.raises(RuntimeError, match='stopped right after'):
        train_and_evaluate(resumed, hooks=[StopAfterCheckpoint()])
    train_and_evaluate(resumed)
    a, b = ckpt_lib.load_tree(straight, 5), ckpt_lib.load_tree(resumed, 5)
    tau = np.asarray(a['objective_state']['tau'])
    visited = np.sum(np.asarray(a['objective_state']['s']) > 0)
    assert np.sum(tau != np.float32(0.1)) > 0 and 16 < visited <= 5 * 16
    pseudo = np.asarray(a['sampler_state']['pseudo'])
    assert len(np.unique(pseudo)) > 1
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
