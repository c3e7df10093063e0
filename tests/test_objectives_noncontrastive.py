"""SimSiam, the BYOL predictor family (DirectPred, DirectCopy, linear, MLP, none), Barlow Twins, VICReg and DINO:
init + loss + update under jax.jit with a tiny encoder, state shapes, and the closed-form predictor writes."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssljax.objectives import OBJECTIVES, Context, Forward, create_objective, directpred, losses
from ssljax.objectives.base import cosine_ema_momentum

B = 4  # images per batch


class TinyEncoder(nn.Module):
    """Conv - BN - ReLU - global mean: enough to exercise batch statistics; feature_dim 6."""

    @nn.compact
    def __call__(self, x, train: bool = True, mask=None):
        x = nn.Conv(6, (3, 3))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        return {'pooled': x.mean(axis=(1, 2)), 'feature_map': x}


def objective_config(method, **objective):
    return ml_collections.ConfigDict({'method': method, 'objective': objective})


PROJ = dict(projector_hidden=(16,), projector_dim=8, projector_bn=True)
FAMILY = dict(PROJ, predictor='directpred', predictor_hidden=(16,), predictor_bn=True, ema_base=0.99, ema_final=1.0,
              rho=0.3, eps=0.01, freq=2, center=False, transform='sqrt', solver='eigh', directcopy_norm='spectral')
CONFIGS = {
    'simsiam': dict(projector_hidden=(16, 16), projector_dim=8, projector_bn=True, predictor_hidden=(4,),
                    predictor_dim=8, predictor_bn=True),
    'directpred': FAMILY,
    'barlow_twins': dict(projector_hidden=(16, 16), projector_dim=16, projector_bn=True, lambd=0.0051, scale_loss=1.0),
    'vicreg': dict(projector_hidden=(16, 16), projector_dim=16, projector_bn=True, sim_coeff=25.0, std_coeff=25.0,
                   cov_coeff=1.0),
    'dino': dict(head_out=32, head_hidden=16, head_bottleneck=8, head_layers=3, head_bn=False, norm_last_layer=True,
                 student_temp=0.1, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=2.0,
                 center_momentum=0.9, ema_base=0.996, ema_final=1.0),
}


def make(method, encoder=None, feature_dim=6, **overrides):
    encoder = encoder or TinyEncoder()
    ctx = Context(encoder=encoder, feature_dim=feature_dim, total_steps=20, global_batch=B, num_examples=10 * B)
    return create_objective(objective_config(method, **{**CONFIGS[method], **overrides}), ctx)


def views_for(method, size=8, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    if method == 'dino':  # multi-crop: 2 global views, 2 smaller local views
        return [jax.random.normal(keys[i], (B, size, size, 3)) for i in range(2)] + \
               [jax.random.normal(keys[2 + i], (B, size // 2, size // 2, 3)) for i in range(2)]
    return [jax.random.normal(keys[i], (B, size, size, 3)) for i in range(2)]


@functools.lru_cache(maxsize=None)
def encoder_variables(encoder, size):
    return jax.jit(lambda: encoder.init(jax.random.PRNGKey(1), jnp.zeros((2, size, size, 3)), train=False))()


@functools.lru_cache(maxsize=None)
def init_function(objective):
    return jax.jit(objective.init)


def setup(objective, size=8):
    enc_vars = encoder_variables(objective.ctx.encoder, size)
    heads, state = init_function(objective)(jax.random.PRNGKey(2), enc_vars)
    params = {'encoder': enc_vars['params'], **heads['params']}
    stats = {'encoder': enc_vars.get('batch_stats', {}), **heads['batch_stats']}
    return params, stats, state


@functools.lru_cache(maxsize=None)
def step_function(objective):
    """One jitted function per objective (objectives are hashable): loss + gradient, then update at ``step``."""
    def step(params, stats, state, views, step):
        def loss_fn(p):
            return objective.loss({'params': p, 'batch_stats': stats}, state, views, {}, jax.random.PRNGKey(3))
        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        new_params, new_state = objective.update(params, out.objective_state, step)
        return loss, out, grads, new_params, new_state
    return jax.jit(step)


def run_step(objective, params, stats, state, views, step=1):
    return step_function(objective)(params, stats, state, views, jnp.asarray(step, jnp.int32))


def shapes(tree):
    return jax.tree.map(lambda x: (x.shape, x.dtype), tree)


@pytest.mark.parametrize('method,predictor', [('simsiam', None), ('directpred', 'directpred'),
                                              ('directpred', 'directcopy'), ('directpred', 'linear'),
                                              ('directpred', 'mlp'), ('directpred', 'none'),
                                              ('barlow_twins', None), ('vicreg', None), ('dino', None)])
def test_objective_runs_under_jit(method, predictor):
    objective = make(method, **({'predictor': predictor} if predictor else {}))
    params, stats, state = setup(objective)
    loss, out, grads, new_params, new_state = run_step(objective, params, stats, state, views_for(method))
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads['encoder']))) > 0  # the encoder learns
    assert out.probe_features.shape == (B, 6) and out.probe_features.dtype == jnp.float32
    assert shapes(out.batch_stats) == shapes(stats)
    # The state keeps its structure and shapes through loss and update (what the checkpoint and the jit need).
    assert shapes(out.objective_state) == shapes(state) == shapes(new_state)
    assert shapes(new_params) == shapes(params)
    assert all(np.isfinite(float(v)) for v in out.metrics.values())
    assert set(objective.frozen_heads) <= set(params)


def test_registered_names():
    assert {'simsiam', 'directpred', 'barlow_twins', 'vicreg', 'dino'} <= set(OBJECTIVES)
    assert OBJECTIVES['byol'].name == 'byol'  # the subclass did not rename BYOL


# ---------------------------------------------------------------------------------------------- the predictor family

@functools.partial(jax.jit, static_argnums=0)
def projections(objective, params, stats, views):
    """The online projections of the views, as the loss computes them (BatchNorm over both views)."""
    fw = Forward({'params': params, 'batch_stats': stats})
    feats = [o['pooled'] for o in fw.encode(objective.ctx.encoder, views)]
    return fw.apply_views('projector', objective.projector, feats)


def test_directpred_correlation_state_and_write_only_every_freq_steps():
    objective = make('directpred')  # freq 2
    assert objective.frozen_heads == ('predictor',)
    params, stats, state = setup(objective)
    d = 8
    assert state['corr'].shape == (d, d) and state['mean'].shape == (d,) and int(state['count']) == 0
    np.testing.assert_array_equal(params['predictor']['kernel'], np.eye(d))  # identity until the first write
    views = views_for('directpred')
    _, out, grads, p1, s1 = run_step(objective, params, stats, state, views, step=1)
    # F holds the first batch's E[f f^T] of the online projections of both views.
    z_a, z_b = projections(objective, params, stats, views)
    f = np.concatenate([np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)])
    np.testing.assert_allclose(s1['corr'], f.T @ f / (2 * B), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s1['mean'], f.mean(0), rtol=1e-4, atol=1e-5)
    assert int(s1['count']) == 1
    # step 1 % 2 != 0: the predictor is untouched.
    np.testing.assert_array_equal(p1['predictor']['kernel'], params['predictor']['kernel'])
    # step 2: W_p from F is written.
    p2, s2 = jax.jit(objective.update)(params, out.objective_state, jnp.asarray(2, jnp.int32))  # step 2
    expected = directpred.predictor_from_correlation(s1['corr'], 0.01)
    np.testing.assert_allclose(p2['predictor']['kernel'], expected, atol=1e-6)
    np.testing.assert_allclose(p2['predictor']['kernel'], p2['predictor']['kernel'].T)
    # Everything else in params is untouched by the write.
    for name in ('encoder', 'projector'):
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p2[name]), jax.tree.leaves(params[name])))
    # A second loss continues the EMA from the first batch.
    _, out2, _, _, _ = run_step(objective, p2, stats, s2, views_for('directpred', seed=5), step=3)
    z_a, z_b = projections(objective, p2, stats, views_for('directpred', seed=5))
    g = np.concatenate([np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)])
    np.testing.assert_allclose(out2.objective_state['corr'], 0.3 * np.asarray(s1['corr']) + 0.7 * g.T @ g / (2 * B),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('solver,center,transform', [('newton_schulz', True, 'sqrt'), ('eigh', False, 'linear'),
                                                     ('diagonal', False, 'sqrt')])
def test_directpred_options(solver, center, transform):
    objective = make('directpred', solver=solver, center=center, transform=transform)
    params, stats, state = setup(objective)
    _, out, _, p1, s1 = run_step(objective, params, stats, state, views_for('directpred'), step=2)
    F = s1['corr']
    if center:
        F = F - jnp.outer(s1['mean'], s1['mean'])
    expected = directpred.predictor_from_correlation(F, 0.01, 'eigh' if solver == 'newton_schulz' else solver,
                                                     transform)
    tol = 3e-3 if solver == 'newton_schulz' else 1e-6
    np.testing.assert_allclose(p1['predictor']['kernel'], expected, atol=tol)
    assert int(s1['ns_fallbacks']) == 0


def test_directcopy_write():
    objective = make('directpred', predictor='directcopy')
    params, stats, state = setup(objective)
    _, _, _, p1, s1 = run_step(objective, params, stats, state, views_for('directpred'), step=2)
    F = np.asarray(s1['corr'], np.float64)
    np.testing.assert_allclose(p1['predictor']['kernel'], F / np.linalg.eigvalsh(F).max() + 0.01 * np.eye(8),
                               atol=1e-5)


def test_trained_predictors_are_not_frozen():
    for kind in ('linear', 'mlp', 'none'):
        objective = make('directpred', predictor=kind)
        assert objective.frozen_heads == ()
        params, stats, state = setup(objective)
        # the trained linear predictor keeps F too, for the eigen-alignment analysis (never written to W)
        assert set(state) == ({'target', 'corr', 'mean', 'count', 'ns_fallbacks'} if kind == 'linear' else {'target'})
        if kind == 'none':
            assert 'predictor' not in params
        else:
            _, _, grads, p1, _ = run_step(objective, params, stats, state, views_for('directpred'))
            assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads['predictor']))) > 0
            assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p1['predictor']),
                                                             jax.tree.leaves(params['predictor'])))
    linear = setup(make('directpred', predictor='linear'))[0]['predictor']['kernel']
    assert not np.allclose(linear, np.eye(8))  # PyTorch-style random init for the trained baseline


def test_no_predictor_loss_is_byol_on_projections():
    objective = make('directpred', predictor='none')
    params, stats, state = setup(objective)
    views = views_for('directpred')
    loss, _, _, _, _ = run_step(objective, params, stats, state, views)
    z_a, z_b = projections(objective, params, stats, views)
    t_a, t_b = objective.target_projections(state, views)
    np.testing.assert_allclose(loss, losses.byol_loss(z_a, z_b, t_a, t_b), rtol=1e-5)


def test_family_config_errors():
    for key, value, match in [('predictor', 'deep', 'objective.predictor'), ('freq', 0, 'freq'),
                              ('rho', 1.0, 'rho'), ('solver', 'svd', 'solver'), ('transform', 'cube', 'transform'),
                              ('directcopy_norm', 'max', 'directcopy_norm')]:
        with pytest.raises(ValueError, match=match):
            make('directpred', **{key: value})
    with pytest.raises(ValueError, match='predictor_dim'):
        make('simsiam', predictor_dim=4)


# ---------------------------------------------------------------------------------------------- SimSiam, DINO

def test_simsiam_loss_range_and_structure():
    objective = make('simsiam')
    assert objective.projector.last_bn and not objective.projector.last_bn_affine
    params, stats, state = setup(objective)
    assert state == {}
    assert 'bn_out' not in params['projector'] and 'bn_out' in stats['projector']  # last BN: no affine parameters
    loss, out, grads, _, _ = run_step(objective, params, stats, state, views_for('simsiam'))
    assert -1.0 <= float(loss) <= 1.0
    np.testing.assert_allclose(out.metrics['pred_cosine'], -loss)


def test_dino_center_temperature_and_teacher_ema():
    objective = make('dino')
    steps_per_epoch = 10  # num_examples / global_batch
    assert objective.warmup_teacher_temp_steps == 2 * steps_per_epoch
    np.testing.assert_allclose(objective.teacher_temperature(jnp.asarray(0)), 0.04)
    np.testing.assert_allclose(objective.teacher_temperature(jnp.asarray(10)), 0.055, rtol=1e-6)
    np.testing.assert_allclose(objective.teacher_temperature(jnp.asarray(50)), 0.07)
    params, stats, state = setup(objective)
    assert state['center'].shape == (32,) and int(state['step']) == 0
    views = views_for('dino')
    loss, out, _, _, _ = run_step(objective, params, stats, state, views)
    # Teacher == student at init: the centre moves to 0.1 x the batch mean of the teacher outputs on the global views.
    teacher = Forward(state['teacher'])
    feats = [o['pooled'] for o in teacher.encode(objective.ctx.encoder, views[:2])]
    t = jnp.concatenate(teacher.apply_views('head', objective.head, feats))
    np.testing.assert_allclose(out.objective_state['center'], 0.1 * np.asarray(t).mean(0), rtol=1e-4, atol=1e-7)
    assert int(out.objective_state['step']) == 1
    np.testing.assert_allclose(out.metrics['teacher_temp'], 0.04)
    # The EMA moves the teacher towards the student: with student = teacher + 1, teacher <- teacher + (1 - m_t).
    shifted = jax.tree.map(lambda x: x + 1.0, params)
    _, new_state = jax.jit(objective.update)(shifted, out.objective_state, jnp.asarray(5, jnp.int32))
    m = float(cosine_ema_momentum(0.996, jnp.asarray(5), 20, 1.0))
    for old, new in zip(jax.tree.leaves(state['teacher']['params']), jax.tree.leaves(new_state['teacher']['params'])):
        np.testing.assert_allclose(new, np.asarray(old) + (1.0 - m), rtol=1e-5, atol=1e-6)
