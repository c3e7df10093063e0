"""Gradient accumulation: grad_accum_steps=4 equals grad_accum_steps=1 at the same global batch (per-sample losses
and the GradCache split), the BatchNorm-encoder case is a ConfigError, per_microbatch is a different method."""
import jax
import numpy as np
import pytest
from conftest import tiny_config

from ssljax import configure, train
from ssljax.config_lib import ConfigError
from ssljax.data import pipeline

VIT = {'model.backbone': 'vit_test', 'model.depth': 1, 'model.patch_size': 4}
EXTRA = {
    'mae': {'objective.decoder_dim': 8, 'objective.decoder_depth': 1, 'objective.decoder_heads': 2},
    # the paper's head: with projector_last_bn (the embedded recipe) the one-batch step normalises the head per
    # shuffled group, so exact accumulation is a ConfigError unless bn_groups is 1 (tests/test_check_config.py)
    'mocov2': {'objective.queue_size': 64, 'objective.projector_last_bn': False},
    # DirectPred's W_p = f(eigen(F)) is written after step 2, not 1: F is what accumulation computes (checked to 1e-6);
    # the closed form amplifies float32 rounding of F near its zero eigenvalues (sqrt), accumulation or not
    'directpred': {'objective.freq': 2},
    # DINO's embedded recipe is AdamW with BN in the head (configs/dino.py): AdamW's normalisation turns float32
    # rounding of near-zero gradients into lr-sized steps (as for MAE, docs/scaling-mesh.md), so the comparison runs
    # DINO's loss and accumulation under LARS without head BN, the setting these tests were measured with
    'dino': {'optimizer.name': 'lars', 'optimizer.lr': 0.3, 'objective.head_bn': False},
}


def config_for(method, k, **overrides):
    name, _, arg = method.partition(':')
    c = tiny_config(name, **VIT, **EXTRA.get(name, {}), **overrides)
    c.grad_accum_steps = k
    return c


def run(config, steps=1):
    configure.check_scale(config, jax.device_count())
    mesh = configure.mesh_from_config(config)
    data = pipeline.load_train_data(config, mesh)
    exp = train.build_experiment(config, mesh, data.num_examples, 10)
    state = train.init_state(exp)
    step = train.make_train_step(exp, state)
    batches = data.batches(0)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, next(batches), data.device_arrays)
        losses.append(float(metrics['loss']))
    return losses, state, metrics


def assert_trees_close(a, b, what, tol=1e-6, empty_ok=False):
    la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)
    assert len(la) == len(lb) and (la or empty_ok), what
    for (path, x), y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=tol, atol=tol,
                                   err_msg=f'{what}{jax.tree_util.keystr(path)}')


FAST = ['mae', 'simclr']
SLOW = ['dino', 'barlow_twins', 'vicreg', 'directpred', 'mocov3', 'mocov2']


def check_equal(method):
    one_losses, one, one_m = run(config_for(method, 1))
    four_losses, four, four_m = run(config_for(method, 4))
    np.testing.assert_allclose(one_losses, four_losses, rtol=1e-6, atol=1e-6)
    assert_trees_close(one.params, four.params, 'params')
    # optimizer state in gradient units (LARS: trust-ratio-scaled, values ~10): float32 reordering of the batch sums
    # shows there at ~2e-6 of the tree's norm (measured: barlow_twins 1.6e-6, mocov2 8e-7), so normwise
    a, b = jax.tree.leaves(one.opt_state), jax.tree.leaves(four.opt_state)
    diff = np.sqrt(sum(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2) for x, y in zip(a, b)))
    norm = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in a))
    assert len(a) == len(b) and diff <= 1e-5 * norm, (diff, norm)
    assert_trees_close(one.objective_state, four.objective_state, 'objective_state', empty_ok=True)
    assert_trees_close(one.probe_params, four.probe_params, 'probe_params')
    assert_trees_close(one.batch_stats, four.batch_stats, 'batch_stats', empty_ok=True)
    assert set(one_m) == set(four_m)
    return one, four


@pytest.mark.parametrize('method', FAST)
def test_four_micro_batches_equal_one_batch(method):
    check_equal(method)


@pytest.mark.slow  # one compile of each way per method
@pytest.mark.parametrize('method', SLOW)
def test_four_micro_batches_equal_one_batch_slow(method):
    one, four = check_equal(method)
    if method == 'mocov2':  # the queue holds the global batch's keys, in the batch's order
        queue = np.asarray(four.objective_state['queue'])
        np.testing.assert_allclose(np.asarray(one.objective_state['queue']), queue, rtol=1e-6, atol=1e-6)
        assert int(four.objective_state['queue_ptr']) == 16
        assert np.abs(np.linalg.norm(queue[0, :16], axis=-1) - 1).max() < 1e-5


def test_batchnorm_encoder_with_exact_accumulation_is_a_config_error():
    c = tiny_config('simclr')  # resnet_tiny: BatchNorm in the encoder
    c.grad_accum_steps = 4
    with pytest.raises(ConfigError, match='config key "grad_accum_mode".*BatchNorm in the encoder.*per_microbatch'):
        configure.validate(c, 1)


def test_a_method_without_a_split_is_a_config_error_naming_it():
    c = config_for('isogclr', 4)
    with pytest.raises(ConfigError, match='"grad_accum_steps" \\(4\\): isogclr has no exact gradient accumulation'):
        configure.validate(c, 1)


def test_per_microbatch_is_a_different_method_for_batchnorm_encoders():
    base = tiny_config('simclr')
    one, _, _ = run(base)
    c = tiny_config('simclr')
    c.grad_accum_steps, c.grad_accum_mode = 4, 'per_microbatch'
    configure.validate(c, 1)
    four, _, _ = run(c)
    assert np.isfinite(four[0]) and abs(four[0] - one[0]) > 1e-3  # BatchNorm over 4 rows, negatives among 4


EIGHT = r'''
import json, sys, jax, numpy as np
sys.path.insert(0, 'tests')
from test_grad_accum import config_for, run
out = {}
for k in (1, 2):
    c = config_for(sys.argv[1], k, batch_size=32)
    c.mesh, c.sharding_min_size_mb = (('data', 2), ('fsdp', 4)), 0.0
    losses, state, _ = run(c, steps=2)
    out[k] = dict(losses=losses, leaves=[np.asarray(x, np.float64).ravel().tolist()
                                         for x in jax.tree.leaves((state.params, state.objective_state))],
                  fsdp=any('fsdp' in str(x.sharding.spec) for x in jax.tree.leaves(state.params)))
print('RESULT' + json.dumps(out))
'''


@pytest.mark.slow  # 8 simulated devices, (2 data x 4 fsdp): micro-batches keep the batch split over every device
@pytest.mark.parametrize('method', ['simclr', 'dino'])
def test_accumulation_on_the_fsdp_mesh_equals_one_batch(method):
    from conftest import run_on_eight_devices
    out = run_on_eight_devices(EIGHT, [method])
    one, two = out['1'], out['2']
    assert one['fsdp'] and two['fsdp']
    np.testing.assert_allclose(one['losses'], two['losses'], rtol=1e-6, atol=1e-6)
    for a, b in zip(one['leaves'], two['leaves']):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
