"""Shared test fixtures: tiny configs that train in seconds on 2 CPU cores."""
import os
import shutil
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# One JAX persistent compilation cache for the whole test session, shared by the xdist workers and by every
# subprocess a test starts (they inherit the environment): most of a tiny run's time is XLA compiling the same tiny
# encoder's init, step and evaluation, which many tests build with identical shapes. The cache is keyed by the
# program, its shapes, the compile options and the XLA flags, so a cached executable is the one XLA would compile;
# it lives for one session only (a directory set in the environment beforehand is used as it is and kept).
_CACHE_ENV = 'JAX_COMPILATION_CACHE_DIR'
_CACHE_OWNED = 'SSLJAX_TEST_JAX_CACHE_OWNED'


def pytest_configure(config):
    if not os.environ.get(_CACHE_ENV):  # the controller (or a run without -n); xdist workers inherit its variables
        os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix='ssljax-test-jax-cache-')
        os.environ[_CACHE_OWNED] = os.environ[_CACHE_ENV]
    os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
    os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
    if 'jax' in sys.modules:  # a plugin imported jax before this hook: its config read the environment already
        import jax
        jax.config.update('jax_compilation_cache_dir', os.environ[_CACHE_ENV])
        jax.config.update('jax_persistent_cache_min_compile_time_secs',
                          float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))
        jax.config.update('jax_persistent_cache_min_entry_size_bytes',
                          int(os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES']))


def pytest_unconfigure(config):
    owned = os.environ.get(_CACHE_OWNED)
    if owned and not hasattr(config, 'workerinput') and os.environ.get(_CACHE_ENV) == owned:
        shutil.rmtree(owned, ignore_errors=True)


def tiny_config(config_name: str = 'simclr', **overrides):
    """scikit-learn digits (8x8), resnet_tiny, batch 16, 4 steps, quick evaluation."""
    from ssljax import config_lib
    c = config_lib.load_config(os.path.join(REPO, 'configs', f'{config_name}.py'))
    c.dataset = 'digits'
    c.image_size = 8
    c.augment.size = 8
    c.augment.blur_prob = 0.0
    c.model.backbone = 'resnet_tiny'
    c.batch_size = 16
    c.total_steps = 4
    c.log_every = 2
    c.checkpoint_every = 2
    c.evals.linear.epochs = 2
    c.evals.diagnostics.max_examples = 256
    c.eval.max_train_examples = 256
    c.eval.batch_size = 128
    c.eval.random_init_baseline = False
    c.optimizer.warmup_steps = 1
    for key, value in overrides.items():
        node = c
        parts = key.split('.')
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    return c


@pytest.fixture
def cifar10_jpeg():
    """Path of ../shared/datasets/cifar10-jpeg (or $SSLJAX_CIFAR10_JPEG); skips the test when absent."""
    path = os.environ.get('SSLJAX_CIFAR10_JPEG', os.path.join(REPO, '..', 'shared', 'datasets', 'cifar10-jpeg'))
    if not os.path.isdir(os.path.join(path, 'train')):
        pytest.skip(f'CIFAR-10 image folders not present at {path}')
    return path


EIGHT_DEVICES = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8', 'JAX_PLATFORMS': 'cpu'}


def run_on_eight_devices(script: str, args, timeout: int = 1800) -> dict:
    """Runs ``python -c script *args`` with 8 simulated CPU devices; returns the JSON it prints after 'RESULT'."""
    import json
    import subprocess
    env = dict(os.environ, **EIGHT_DEVICES)
    r = subprocess.run([sys.executable, '-c', script, *args], capture_output=True, text=True, cwd=REPO, env=env,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.split('RESULT')[-1])


def assert_one_equals_eight(one: dict, eight: dict) -> None:
    """The 1-device and 8-device runs agree: finite, equal losses, and every saved leaf equal."""
    import numpy as np
    assert all(np.isfinite(one['losses']))
    np.testing.assert_allclose(one['losses'], eight['losses'], rtol=1e-5)
    assert len(one['leaves']) == len(eight['leaves'])
    for a, b in zip(one['leaves'], eight['leaves']):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
