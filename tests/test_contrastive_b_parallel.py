"""Contrastive family B on 1 and 8 devices: the same loss and parameters for the same global batch.

Each case runs 2 train steps of a tiny config on a 1-device and an 8-device mesh (simulated CPU devices, one
subprocess for all cases). What must agree, and why it can:
- iSogCLR: NT-Xent-style negatives over the global batch; its per-sample tables s, tau, u are sharded over the 8
  devices (1448 rows, 181 per device) and must end identical to the 1-device tables (1442 rows) on every real row.
- Contrastive Clustering, G-SimCLR: everything global (the G-SimCLR batches come from the host-side sampler, the same
  for any mesh).
- DenseCL: BatchNorm is per group by definition (per-GPU, shuffled keys). The groups are a fixed count (bn_groups 8)
  whatever the devices, so loss, parameters, key encoder and both queues agree; bn_groups 0 (one group per device)
  on 8 devices is the same grouping as 8 groups on 1 device.
"""
import json

import numpy as np
import pytest
from conftest import assert_one_equals_eight, run_on_eight_devices

DENSE = {'model.cifar_stem': True, 'objective.queue_size': 32}  # 4 x 4 feature-map cells at 8 px

CASES = {  # name: (config, settings for both runs, settings of the 8-device run only)
    'isogclr': ('isogclr', {}, {}),
    'contrastive_clustering': ('contrastive_clustering', {}, {}),
    # G-SimCLR's loss is SimCLR's NT-Xent (tests/test_parallel.py) and its batches come from the host-side sampler, the
    # same for any mesh; DenseCL runs its per-device path (8 groups on 1 device vs one per device on 8).
    'densecl_per_device': ('densecl', dict(DENSE, **{'objective.bn_groups': 8}), {'objective.bn_groups': 0}),
}

SCRIPT = r'''
import json, sys
import jax, numpy as np
sys.path.insert(0, 'tests')
from conftest import tiny_config
from ssljax import parallel, train
from ssljax.data import pipeline
assert jax.device_count() == 8, jax.devices()
out = {}
for name, (method, both, eight_only) in json.loads(sys.argv[1]).items():
    out[name] = {}
    for n in (1, 8):
        config = tiny_config(method, **{**both, **(eight_only if n == 8 else {})})
        mesh = parallel.make_mesh(jax.devices()[:n])
        data = pipeline.load_train_data(config, mesh)
        exp = train.build_experiment(config, mesh, data.num_examples, 10)
        state = train.init_state(exp, data.sampler_state)
        step = train.make_train_step(exp, state)
        batches = data.batches(0)
        losses = []
        for _ in range(2):
            state, metrics = step(state, next(batches), data.device_arrays)
            losses.append(float(metrics['loss']))
        objective_state = state.objective_state
        tables = {}
        if method == 'isogclr':
            tau = objective_state['tau']
            tables = dict(rows=int(tau.shape[0]), spec=str(tau.sharding.spec),
                          shard_rows=sorted({int(s.data.shape[0]) for s in tau.addressable_shards}),
                          **{k: np.asarray(v)[:data.num_examples].tolist() for k, v in objective_state.items()})
            objective_state = {}
        leaves = [np.asarray(x, np.float64).ravel().tolist()
                  for x in jax.tree.leaves((state.params, state.batch_stats, objective_state))]
        out[name][n] = dict(losses=losses, leaves=leaves, tables=tables, metrics={k: float(v) for k, v in
                                                                                  metrics.items()})
print('RESULT' + json.dumps(out))
'''


@pytest.fixture(scope='module')
def results():
    return run_on_eight_devices(SCRIPT, [json.dumps(CASES)], timeout=1800)


@pytest.mark.slow  # end-to-end: runs in .ci/run's slow step (pytest -m slow)
@pytest.mark.parametrize('case', sorted(CASES))
def test_one_device_equals_eight(results, case):
    one, eight = results[case]['1'], results[case]['8']
    assert_one_equals_eight(one, eight)
    for key, value in one['metrics'].items():
        np.testing.assert_allclose(value, eight['metrics'][key], rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.slow  # end-to-end: runs in .ci/run's slow step (pytest -m slow)
def test_isogclr_tables_are_sharded_and_end_identical(results):
    one, eight = results['isogclr']['1']['tables'], results['isogclr']['8']['tables']
    assert one['rows'] == 1442 and eight['rows'] == 1448            # per_sample_rows: a multiple of the devices
    assert "'data'" in eight['spec'] and eight['shard_rows'] == [181]  # each device holds 1 / 8 of the rows
    s = np.asarray(one['s'])
    assert 16 < np.sum(s > 0) <= 2 * 16                              # the rows of the 2 batches, and only those
    for key in ('s', 'tau', 'u'):
        np.testing.assert_allclose(one[key], eight[key], rtol=2e-4, atol=1e-6, err_msg=key)
        np.testing.assert_array_equal(np.asarray(one[key])[s == 0], np.asarray(eight[key])[s == 0])
