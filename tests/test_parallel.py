"""Data parallelism: one device and eight give the same loss and parameters for the same global batch;
two processes on localhost (jax.distributed) match one process."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

EIGHT = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8', 'JAX_PLATFORMS': 'cpu'}

# Runs 3 train steps of a tiny config on a 1-device mesh and on an 8-device mesh in the same process.
ONE_VS_EIGHT = r'''
import json, sys, jax, numpy as np
sys.path.insert(0, 'tests')
from conftest import tiny_config
from ssljax import parallel, train
from ssljax.data import pipeline
assert jax.device_count() == 8, jax.devices()
method = sys.argv[1]
config = tiny_config(method)
out = {}
for n in (1, 8):
    mesh = parallel.make_mesh(jax.devices()[:n])
    data = pipeline.load_train_data(config, mesh)
    exp = train.build_experiment(config, mesh, data.num_examples, 10)
    state = train.init_state(exp)
    step = train.make_train_step(exp)
    batches = data.batches(0)
    losses = []
    for _ in range(3):
        state, metrics = step(state, next(batches), data.device_arrays)
        losses.append(float(metrics['loss']))
    trees = (state.params, state.batch_stats, state.objective_state)
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(trees)]
    out[n] = dict(losses=losses, sharding=str(state.params['encoder'][next(iter(state.params['encoder']))]),
                  leaves=[x.ravel().tolist() for x in leaves])
print('RESULT' + json.dumps(out))
'''


def run_script(code, args, env_extra):
    env = dict(os.environ, **env_extra)
    r = subprocess.run([sys.executable, '-c', code, *args], capture_output=True, text=True, cwd=REPO, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.split('RESULT')[-1])


@pytest.mark.slow  # end-to-end: runs in .ci/run's slow step (pytest -m slow)
@pytest.mark.parametrize('method', ['simclr', 'byol'])
def test_one_device_equals_eight(method):
    out = run_script(ONE_VS_EIGHT, [method], EIGHT)
    one, eight = out['1'], out['8']
    np.testing.assert_allclose(one['losses'], eight['losses'], rtol=1e-5)
    assert len(one['leaves']) == len(eight['leaves'])
    for a, b in zip(one['leaves'], eight['leaves']):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def free_port():
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


@pytest.mark.slow  # end-to-end: runs in .ci/run's slow step (pytest -m slow)
def test_two_processes_match_one(tmp_path):
    from test_train import TINY_ARGS, restore_params
    common = ['-m', 'ssljax.main', '--config=configs/simclr.py', *TINY_ARGS]
    single = subprocess.run([sys.executable, *common, f'--workdir={tmp_path / "one"}'], capture_output=True,
                            text=True, cwd=REPO, timeout=900,
                            env=dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2'))
    assert single.returncode == 0, single.stderr[-3000:]
    port = free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f'localhost:{port}', JAX_NUM_PROCESSES='2',
                   JAX_PROCESS_ID=str(pid), JAX_PLATFORMS='cpu')
        procs.append(subprocess.Popen([sys.executable, *common, f'--workdir={tmp_path / "two"}'], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
    s1 = json.load(open(tmp_path / 'one' / 'summary.json'))
    s2 = json.load(open(tmp_path / 'two' / 'summary.json'))
    assert (s1['devices'], s2['devices'], s2['processes']) == (2, 2, 2)
    np.testing.assert_allclose(s1['final_loss'], s2['final_loss'], rtol=1e-5)
    a, b = restore_params(str(tmp_path / 'one'), 4), restore_params(str(tmp_path / 'two'), 4)
    import jax
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6),
                 a['params'], b['params'])
