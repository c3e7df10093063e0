"""Contrastive family A on 1 and 8 devices: the same loss and parameters for the same global batch.

Every case below runs 2 train steps of a tiny config on a 1-device and an 8-device mesh (simulated CPU devices, one
subprocess for all). What must agree:
- DCL, DCLW, MoCo v3, the triplet loss (negatives over the global batch and over groups of 4, median and
  truncated): everything is global, so the loss and all parameters, BatchNorm statistics and objective state.
- MoCo v2 and MoCHi: BatchNorm is per device by definition (shuffled BN). With objective.bn_groups = 0 (one group
  per device, the reference) on 8 devices and bn_groups = 8 on 1 device, the 8 BatchNorm groups are the same rows
  of the same permuted batch, so loss, parameters, key encoder, queue and MoCHi's mixed negatives must agree; the
  8-device run is the per-device (shard_map) path, the 1-device run its direct per-group emulation.
resnet_tiny keeps the CIFAR stem here (8 px -> 8 px, not 1 px at the last stage): with 1-pixel feature maps some
BatchNorm channels are near-constant over the batch, and their 1 / sqrt(var + eps) turns float32 reduction-order
noise into percent-level gradient differences after a couple of steps, for any loss (SimCLR's included).
"""
import json

import pytest
from conftest import assert_one_equals_eight, run_on_eight_devices

# Kept small for CI's time (each case compiles twice): DCLW runs DCL's code plus its weights; MoCHi (mixing on from
# step 1) runs MoCo v2's queue and shuffled BatchNorm plus the mixed negatives; the truncated triplet differs from the
# median one only in which negatives are averaged (tests/test_contrastive_a.py checks both against NumPy).
CASES = {
    'dclw': ('dclw', {}, {}),
    'mocov3': ('mocov3', {}, {}),
    'triplet_median_group4': ('triplet', {'objective.neg_group': 4}, {}),
    'mochi': ('mochi', {'objective.queue_size': 48, 'objective.n_hard': 16, 'objective.n_mix': 8,
                        'objective.n_mix_query': 4, 'objective.mix_start_steps': 1, 'objective.bn_groups': 8},
              {'objective.bn_groups': 0}),
}

SCRIPT = r'''
import json, sys, jax, numpy as np
sys.path.insert(0, 'tests')
from conftest import tiny_config
from ssljax import parallel, train
from ssljax.data import pipeline
assert jax.device_count() == 8, jax.devices()
cases = json.loads(sys.argv[1])
out = {}
for name, (method, common, eight_only) in cases.items():
    out[name] = {}
    for n in (1, 8):
        config = tiny_config(method, **{'model.cifar_stem': True, **common, **(eight_only if n == 8 else {})})
        mesh = parallel.make_mesh(jax.devices()[:n])
        data = pipeline.load_train_data(config, mesh)
        exp = train.build_experiment(config, mesh, data.num_examples, 10)
        state = train.init_state(exp)
        step = train.make_train_step(exp, state)
        batches = data.batches(0)
        losses, metrics = [], {}
        for _ in range(2):
            state, metrics = step(state, next(batches), data.device_arrays)
            losses.append(float(metrics['loss']))
        leaves = [np.asarray(x, np.float64).ravel().tolist()
                  for x in jax.tree.leaves((state.params, state.batch_stats, state.objective_state))]
        out[name][n] = dict(losses=losses, leaves=leaves, mixing=float(metrics.get('mixing', -1)))
print('RESULT' + json.dumps(out))
'''


@pytest.fixture(scope='module')
def results():
    return run_on_eight_devices(SCRIPT, [json.dumps(CASES)], timeout=1500)


@pytest.mark.slow  # end-to-end: runs in .ci/run's slow step (pytest -m slow)
@pytest.mark.parametrize('case', sorted(CASES))
def test_one_device_equals_eight(results, case):
    one, eight = results[case]['1'], results[case]['8']
    assert_one_equals_eight(one, eight)
    if case == 'mochi':
        assert one['mixing'] == eight['mixing'] == 1.0  # the synthetic negatives were in use
