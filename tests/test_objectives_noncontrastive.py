"""SimSiam, the BYOL predictor family (DirectPred, DirectCopy, linear, MLP, none), Barlow Twins, VICReg and DINO:
init + loss + update under jax.jit with a tiny encoder, state shapes, and the closed-form predictor writes."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssljax.config_lib import ConfigError
from ssljax.models.heads import MLP
from ssljax.objectives import OBJECTIVES, Context, Forward, create_objective, losses, predictors

B = 4  # images per batch


class TinyEncoder(nn.Module):
    """Conv - BN - ReLU - global mean: enough to exercise batch statistics; feature_dim 6."""

    @nn.compact
    def __call__(self, x, train: bool = True, mask=None):
        x = nn.Conv(6, (3, 3))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        return {'pooled': x.mean(axis=(1, 2)), 'feature_map': x}


def objective_config(method, **objective):
    """The method's config keys at their defaults, with ``objective`` on top (what a config file's block holds)."""
    return ml_collections.ConfigDict({'method': method,
                                      'objective': {**OBJECTIVES[method].config_defaults(), **objective}})


PROJ = dict(projector_hidden=(16,), projector_dim=8, projector_bn=True)
FAMILY = dict(PROJ, predictor='directpred', predictor_hidden=(16,), predictor_dim=8, predictor_bn=True,
              ema_base=0.99, ema_final=1.0, rho=0.3, eps=0.01, freq=2, center=False, transform='sqrt', solver='eigh',
              directcopy_norm='frobenius', predictor_write='after_freq', bn_per_view=True)
CONFIGS = {
    'simclr': dict(PROJ, temperature=0.2, bn_per_view=False),
    'byol': dict(PROJ, predictor_hidden=(16,), predictor_dim=8, predictor_bn=True, ema_base=0.99, ema_final=1.0,
                 bn_per_view=True),
    'simsiam': dict(projector_hidden=(16, 16), projector_dim=8, projector_bn=True, predictor_hidden=(4,),
                    predictor_dim=8, predictor_bn=True),
    'directpred': FAMILY,
    'barlow_twins': dict(projector_hidden=(16, 16), projector_dim=16, projector_bn=True, lambd=0.0051, scale_loss=1.0),
    'vicreg': dict(projector_hidden=(16, 16), projector_dim=16, projector_bn=True, sim_coeff=25.0, std_coeff=25.0,
                   cov_coeff=1.0),
    'dino': dict(head_out=32, head_hidden=16, head_bottleneck=8, head_layers=3, head_bn=False, norm_last_layer=True,
                 student_temp=0.1, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=2.0,
                 center_momentum=0.9, ema_base=0.996, ema_final=1.0, freeze_last_layer_epochs=1, bn_per_view=False),
}


def make(method, encoder=None, feature_dim=6, steps_per_epoch=0, **overrides):
    encoder = encoder or TinyEncoder()
    ctx = Context(encoder=encoder, feature_dim=feature_dim, total_steps=20, global_batch=B, num_examples=10 * B,
                  steps_per_epoch=steps_per_epoch)
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
    """The online projections of the views, as the loss computes them (BatchNorm per view or joint, as configured)."""
    fw = Forward({'params': params, 'batch_stats': stats}, bn_per_view=objective.bn_per_view)
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
    expected = predictors.predictor_from_correlation(s1['corr'], 0.01)
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
    expected = predictors.predictor_from_correlation(F, 0.01, 'eigh' if solver == 'newton_schulz' else solver,
                                                     transform)
    tol = 3e-3 if solver == 'newton_schulz' else 1e-6
    np.testing.assert_allclose(p1['predictor']['kernel'], expected, atol=tol)
    assert int(s1['ns_fallbacks']) == 0


@pytest.mark.parametrize('norm', ['frobenius', 'spectral', 'none'])
def test_directcopy_write(norm):
    objective = make('directpred', predictor='directcopy', directcopy_norm=norm)
    params, stats, state = setup(objective)
    _, _, _, p1, s1 = run_step(objective, params, stats, state, views_for('directpred'), step=2)
    F = np.asarray(s1['corr'], np.float64)
    scale = {'frobenius': np.linalg.norm(F), 'spectral': np.linalg.eigvalsh(F).max(), 'none': 1.0}[norm]
    np.testing.assert_allclose(p1['predictor']['kernel'], F / scale + 0.01 * np.eye(8), atol=1e-5)


def test_directcopy_default_normalisation_is_frobenius():
    """DirectCopy's paper normalises F by its Frobenius norm: the default of the function, the objective and config."""
    import inspect

    from configs import directpred as directpred_config
    assert inspect.signature(predictors.directcopy_predictor).parameters['normalize'].default == 'frobenius'
    assert OBJECTIVES['directpred'].directcopy_norm == 'frobenius'
    assert directpred_config.get_config('predictor=directcopy').objective.directcopy_norm == 'frobenius'
    F = jnp.asarray(np.diag([4.0, 3.0, 0.0]), jnp.float32)
    np.testing.assert_allclose(predictors.directcopy_predictor(F, 0.01), np.diag([0.81, 0.61, 0.01]), atol=1e-6)


def test_directpred_reference_write_schedule():
    """predictor_write='reference' (the paper's code): writes after steps 1, freq + 1, ..., trained in between."""
    objective = make('directpred', predictor_write='reference')  # freq 2
    assert objective.frozen_heads == ()
    params, stats, state = setup(objective)
    assert not np.allclose(params['predictor']['kernel'], np.eye(8))  # the code's random Linear init
    views = views_for('directpred')
    _, out, grads, p1, s1 = run_step(objective, params, stats, state, views, step=1)
    assert float(jnp.abs(grads['predictor']['kernel']).sum()) > 0  # trained by the optimizer between writes
    np.testing.assert_allclose(p1['predictor']['kernel'], predictors.predictor_from_correlation(s1['corr'], 0.01),
                               atol=1e-6)  # written after the first optimizer step (niter 0 in the code)
    update = jax.jit(objective.update)
    trained = dict(p1, predictor={'kernel': p1['predictor']['kernel'] + 0.5})  # as if the optimizer moved it
    p2, _ = update(trained, s1, jnp.asarray(2, jnp.int32))
    np.testing.assert_array_equal(p2['predictor']['kernel'], trained['predictor']['kernel'])  # kept between writes
    p3, _ = update(trained, s1, jnp.asarray(3, jnp.int32))
    np.testing.assert_allclose(p3['predictor']['kernel'], predictors.predictor_from_correlation(s1['corr'], 0.01),
                               atol=1e-6)
    # The default schedule writes after steps freq, 2 freq, ... and keeps the predictor out of the optimizer.
    default = make('directpred')
    assert default.predictor_write == 'after_freq' and default.frozen_heads == ('predictor',)


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
                              ('directcopy_norm', 'max', 'directcopy_norm'),
                              ('predictor_write', 'sometimes', 'predictor_write')]:
        with pytest.raises(ConfigError, match=match):
            make('directpred', **{key: value})
    with pytest.raises(ConfigError, match='predictor_dim'):
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


def dino_temperature_table(warmup, final, warmup_epochs, epochs):
    """DINO's DINOLoss.teacher_temp_schedule (main_dino.py), indexed by epoch."""
    return np.concatenate((np.linspace(warmup, final, warmup_epochs), np.ones(epochs - warmup_epochs) * final))


@pytest.mark.parametrize('warmup_epochs', [0, 1, 2, 5])
def test_dino_teacher_temperature_is_the_reference_per_epoch_table(warmup_epochs):
    objective = make('dino', warmup_teacher_temp_epochs=warmup_epochs)
    spe, epochs = 10, 8  # steps per epoch: num_examples / global_batch outside a run
    assert objective.steps_per_epoch == spe
    table = dino_temperature_table(0.04, 0.07, warmup_epochs, epochs)
    steps = np.arange(epochs * spe)
    temps = jax.jit(jax.vmap(objective.teacher_temperature))(jnp.asarray(steps))
    np.testing.assert_allclose(temps, table[steps // spe], rtol=1e-6)
    # The run's steps_per_epoch wins over num_examples // global_batch.
    assert make('dino', steps_per_epoch=7).steps_per_epoch == 7


def test_dino_center_temperature_and_teacher_ema():
    objective = make('dino')  # warm-up over 2 epochs of 10 steps
    np.testing.assert_allclose(objective.teacher_temperature(jnp.asarray(0)), 0.04)
    np.testing.assert_allclose(objective.teacher_temperature(jnp.asarray(9)), 0.04)  # constant within epoch 0
    np.testing.assert_allclose(objective.teacher_temperature(jnp.asarray(10)), 0.07, rtol=1e-6)
    np.testing.assert_allclose(objective.teacher_temperature(jnp.asarray(50)), 0.07, rtol=1e-6)
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
    # The teacher's running statistics come from its own forward pass (the reference's EMA covers parameters only).
    assert_trees_close(out.objective_state['teacher']['batch_stats'], teacher.batch_stats)
    assert not trees_equal(out.objective_state['teacher']['batch_stats'], state['teacher']['batch_stats'])
    # The EMA moves the teacher towards the student: with student = teacher + 1, teacher <- teacher + (1 - m).
    # update(step=5): five optimizer steps done; the reference's momentum_schedule[it] uses it = 4.
    shifted = jax.tree.map(lambda x: x + 1.0, params)
    _, new_state = jax.jit(objective.update)(shifted, out.objective_state, jnp.asarray(5, jnp.int32))
    m = 1.0 + 0.5 * (0.996 - 1.0) * (1.0 + np.cos(np.pi * 4 / 20))  # utils.cosine_scheduler(0.996, 1, ...)[4]
    for old, new in zip(jax.tree.leaves(state['teacher']['params']), jax.tree.leaves(new_state['teacher']['params'])):
        np.testing.assert_allclose(new, np.asarray(old) + (1.0 - m), rtol=1e-5, atol=1e-6)


def test_dino_evaluates_the_teacher_and_freezes_the_last_layer():
    objective = make('dino', steps_per_epoch=7)
    assert objective.eval_network == 'teacher'
    params, stats, state = setup(objective)
    state = dict(state, teacher=jax.tree.map(lambda x: x + 1.0, state['teacher']))
    scored = objective.encoder_variables(params, stats, state)
    assert_trees_close(scored['params'], state['teacher']['params']['encoder'])
    assert_trees_close(scored['batch_stats'], state['teacher']['batch_stats']['encoder'])
    assert_trees_close(objective.encoder_variables(params, stats, state, 'online')['params'], params['encoder'])
    # freeze_last_layer_epochs x steps per epoch; the prefix names the head's weight-normalised prototypes.
    assert objective.freeze_steps == {'head/last_layer': 7}
    assert set(params['head']['last_layer']) == {'kernel'}
    assert make('dino', steps_per_epoch=7, freeze_last_layer_epochs=3).freeze_steps == {'head/last_layer': 21}
    assert make('dino', freeze_last_layer_epochs=0).freeze_steps == {}
    unnormed = make('dino', norm_last_layer=False)
    assert set(setup(unnormed)[0]['head']['last_layer']) == {'kernel', 'g'}  # both frozen by the same prefix


# ---------------------------------------------------------------------------------------------- EMA momentum

@pytest.mark.parametrize('method', ['byol', 'directpred'])
def test_target_momentum_uses_the_step_before_the_update(method):
    """BYOL's reference computes tau from the step count before the optimizer step: tau = base after step 1."""
    objective = make(method)
    params, stats, state = setup(objective)
    shifted = jax.tree.map(lambda x: x + 1.0, params)
    update = jax.jit(objective.update)
    for done in (1, 2):  # update(step) receives the optimizer steps completed, this one included
        t = done - 1
        tau = 1.0 - (1.0 - 0.99) * (np.cos(np.pi * t / 20) + 1.0) / 2.0  # byol/utils/schedules.py target_ema(t)
        _, new_state = update(shifted, state, jnp.asarray(done, jnp.int32))
        for old, new in zip(jax.tree.leaves(state['target']['params']),
                            jax.tree.leaves(new_state['target']['params'])):
            np.testing.assert_allclose(new, np.asarray(old) + (1.0 - tau), rtol=1e-6, atol=1e-7)
        if done == 1:
            assert tau == 0.99  # the first update uses tau_base exactly


# ---------------------------------------------------------------------------------------------- BatchNorm per view

def trees_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def assert_trees_close(a, b, **kw):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, **dict(dict(rtol=1e-5, atol=1e-6), **kw))


def test_forward_bn_per_view_normalises_each_view_with_its_own_batch():
    """Per view: view a's activations do not depend on view b's images; joint: they do."""
    objective = make('simsiam')
    params, stats, _ = setup(objective)
    a, b = views_for('simsiam')
    b2 = b * 3.0 + 1.0
    variables = {'params': params, 'batch_stats': stats}

    @functools.partial(jax.jit, static_argnums=0)
    def run(per_view, views):
        fw = Forward(variables, bn_per_view=per_view)
        feats = [o['pooled'] for o in fw.encode(objective.ctx.encoder, views)]
        return feats, fw.apply_views('projector', objective.projector, feats), fw.batch_stats

    (f, z, _), (f2, z2, _) = run(True, [a, b]), run(True, [a, b2])
    np.testing.assert_array_equal(f[0], f2[0])
    np.testing.assert_array_equal(z[0], z2[0])
    assert not np.allclose(z[1], z2[1])
    # Per view equals running view a alone.
    fa, za, _ = run(True, [a])
    np.testing.assert_array_equal(z[0], za[0])
    (f, z, _), (f2, z2, _) = run(False, [a, b]), run(False, [a, b2])
    assert not np.allclose(f[0], f2[0], atol=1e-4) and not np.allclose(z[0], z2[0], atol=1e-4)


def test_forward_bn_per_view_running_statistics_are_sequential_updates():
    """Running mean / var after views a, b: r <- m (m r0 + (1 - m) s_a) + (1 - m) s_b, m = 0.9 (biased var)."""
    mlp = MLP(hidden_dims=(5,), out_dim=3)
    variables = mlp.init(jax.random.PRNGKey(0), jnp.zeros((2, 4)), train=False)
    r_mean = np.full(5, 0.3)
    r_var = np.full(5, 2.0)
    variables = {'params': {'mlp': variables['params']},
                 'batch_stats': {'mlp': {'bn_0': {'mean': jnp.asarray(r_mean, jnp.float32),
                                                  'var': jnp.asarray(r_var, jnp.float32)}}}}
    rng = np.random.default_rng(0)
    xa, xb = rng.normal(size=(6, 4)), rng.normal(size=(6, 4)) * 2 + 1
    W = np.asarray(variables['params']['mlp']['linear_0']['kernel'], np.float64)
    bias = np.asarray(variables['params']['mlp']['linear_0']['bias'], np.float64)
    ha, hb = xa @ W + bias, xb @ W + bias
    m = 0.9
    for per_view in (True, False):
        fw = Forward(variables, bn_per_view=per_view)
        fw.apply_views('mlp', mlp, [jnp.asarray(xa, jnp.float32), jnp.asarray(xb, jnp.float32)])
        got = fw.batch_stats['mlp']['bn_0']
        if per_view:
            mean = m * (m * r_mean + (1 - m) * ha.mean(0)) + (1 - m) * hb.mean(0)
            var = m * (m * r_var + (1 - m) * ha.var(0)) + (1 - m) * hb.var(0)
        else:
            h = np.concatenate([ha, hb])
            mean, var = m * r_mean + (1 - m) * h.mean(0), m * r_var + (1 - m) * h.var(0)
        np.testing.assert_allclose(got['mean'], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got['var'], var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('method', ['simclr', 'byol', 'simsiam', 'directpred', 'barlow_twins', 'vicreg', 'dino'])
def test_every_objective_follows_bn_per_view(method):
    """Each method reads objective.bn_per_view: per view, view a's features (and its target/teacher projection) do
    not depend on view b's images; jointly, they do. The switch reaches the target/teacher network too."""
    for per_view in (True, False):
        objective = make(method, bn_per_view=per_view)
        assert objective.bn_per_view is per_view
        params, stats, state = setup(objective)
        views = views_for(method)
        other = [views[0], views[1] * 3.0 + 1.0] + views[2:]
        _, out, _, _, _ = run_step(objective, params, stats, state, views)
        _, out2, _, _, _ = run_step(objective, params, stats, state, other)
        same = np.allclose(out.probe_features, out2.probe_features, rtol=0, atol=1e-6)
        assert same is per_view, (method, per_view)
        network = {'byol': 'target', 'directpred': 'target', 'dino': 'teacher'}.get(method)
        if network:
            net = Forward(state[network], bn_per_view=per_view)
            t = [o['pooled'] for o in net.encode(objective.ctx.encoder, views[:2])]
            t2 = [o['pooled'] for o in Forward(state[network], bn_per_view=per_view).encode(
                objective.ctx.encoder, other[:2])]
            assert np.allclose(t[0], t2[0], rtol=0, atol=1e-6) is per_view
            # and the state carries the target's statistics of exactly that forward pass
            head = 'head' if method == 'dino' else 'projector'
            net.apply_views(head, objective.head if method == 'dino' else objective.projector, t)
            assert_trees_close(out.objective_state[network]['batch_stats'], net.batch_stats)
