"""Shared test fixtures: tiny configs that train in seconds on 2 CPU cores."""
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


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
