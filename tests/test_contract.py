"""The Engine v2 contract: a method from outside the package trains on 8 devices and resumes exactly.

tests/contract_plugin.py defines, outside ssljax, an objective with per-device BatchNorm (through
``Context.per_device``) and a sharded per-sample table, a stateful sampler and an evaluator. They are trained
5 steps on 8 simulated CPU devices by the unchanged loop, once straight and once killed (SIGKILL from a hook right
after step 2's checkpoint) then resumed; the final states must be bit-identical.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

EIGHT = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8', 'JAX_PLATFORMS': 'cpu'}

RUN = r'''
import os, sys, signal
sys.path.insert(0, os.path.join(sys.argv[1], 'tests'))
import jax
from conftest import tiny_config
import contract_plugin  # registers the toy objective, sampler and evaluator
from ssljax import train
import ml_collections

assert jax.device_count() == 8
workdir, kill_at = sys.argv[2], int(sys.argv[3])
config = tiny_config('simclr', **{'total_steps': 5, 'checkpoint_every': 2, 'log_every': 1})
config.method = 'toy_per_device_bn'
config.sampler.name = 'toy_balanced'
config.eval.baseline_evals = ('knn',)
config.evals = ml_collections.ConfigDict({
    'knn': dict(type='knn', every=2, network='', k=20, temperature=0.1),
    'norm': dict(type='toy_feature_norm', every=2, network='')})


class KillAfterCheckpoint(train.Hook):
    def after_checkpoint(self, step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


summary = train.train_and_evaluate(config, workdir, hooks=[KillAfterCheckpoint()])
print('SUMMARY' + __import__('json').dumps(summary))
'''

PER_DEVICE_BN = r'''
import jax, jax.numpy as jnp, numpy as np
from ssljax import parallel
from ssljax.models import registry
from ssljax.objectives.base import BATCH, REPLICATED, Context
assert jax.device_count() == 8
encoder, dim = registry.create_encoder('resnet_tiny', cifar_stem=True)
x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 8, 8, 3)), jnp.float32)
# The encoder's own init, compiled once, from an RBG key (a threefry key's bit generator compiles for seconds on CPU).
variables = jax.jit(lambda key: encoder.init(key, x[:2], train=False))(jax.random.key(1, impl='rbg'))
ctx = Context(encoder=encoder, feature_dim=dim, total_steps=1, global_batch=16, num_examples=16,
              mesh=parallel.make_mesh())
def local(v, x):
    out, upd = encoder.apply(v, x, train=True, mutable=['batch_stats'])
    return out['pooled']
pooled = jax.jit(ctx.per_device(local, (REPLICATED, BATCH), BATCH))(variables, x)
alone = jax.jit(local)  # the same function on the images given, outside per_device: compiled once per batch size
for d in range(8):  # each device normalised with the statistics of its own 2 images only
    np.testing.assert_allclose(np.asarray(pooled[2 * d:2 * d + 2]), np.asarray(alone(variables, x[2 * d:2 * d + 2])),
                               rtol=1e-5, atol=1e-5)
joint = alone(variables, x)
assert np.abs(np.asarray(joint) - np.asarray(pooled)).max() > 1e-3  # global statistics differ
print('PER_DEVICE_OK')
'''


def _run(code, args, timeout=900):
    env = dict(os.environ, **EIGHT)
    return subprocess.run([sys.executable, '-c', code, *args], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=timeout)


def test_per_device_helper_normalises_each_shard_alone():
    r = _run(PER_DEVICE_BN, [])
    assert r.returncode == 0 and 'PER_DEVICE_OK' in r.stdout, r.stderr[-3000:]


@pytest.mark.slow  # end-to-end: runs in .ci/run's slow step (pytest -m slow)
def test_plugin_method_trains_on_8_devices_and_resumes_exactly(tmp_path):
    from ssljax import checkpoint as ckpt_lib
    straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
    r = _run(RUN, [REPO, straight, '-1'])
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads(r.stdout.split('SUMMARY')[-1])
    assert summary['devices'] == 8 and summary['steps'] == 5
    assert summary['norm_mean_norm'] > 0 and 0 <= summary['knn_top1'] <= 1
    rows = [json.loads(line) for line in open(os.path.join(straight, 'metrics.jsonl'))]
    assert any('eval/norm_mean_norm' in row for row in rows)

    killed = _run(RUN, [REPO, resumed, '2'])
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert sorted(os.listdir(os.path.join(resumed, 'checkpoints'))) == ['2']
    r = _run(RUN, [REPO, resumed, '-1'])
    assert r.returncode == 0, r.stderr[-4000:]
    assert 'resumed from' in r.stdout

    a, b = ckpt_lib.load_tree(straight, 5), ckpt_lib.load_tree(resumed, 5)
    assert int(a['step']) == 5
    seen = np.asarray(a['objective_state']['seen'])
    assert seen.sum() == 5 * 16  # every drawn image counted once in the sharded per-sample table
    np.testing.assert_array_equal(seen, np.asarray(b['objective_state']['seen']))
    np.testing.assert_array_equal(np.asarray(a['sampler_state']['pseudo']), np.asarray(b['sampler_state']['pseudo']))
    import jax
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
