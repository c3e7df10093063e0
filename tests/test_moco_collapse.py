"""MoCo v2's queries must not collapse onto one direction under the embedded recipe (issue 19, section 1).

Before the fix, the embedded MNIST recipe (SGD lr 0.3 after a 15-step warm-up, projector Linear - ReLU - Linear without
BatchNorm) sent every query to the same direction within ~20 steps: the raw projector output's norm grew ~10x and was
almost all a component shared by every image (``query_mean_norm`` = ||mean_i q_i|| 0.956 at step 10, 0.999 at 20), the
key encoder followed through the EMA, and the loss rose to ln(K + 1) (experiments/contrastive/README.md, "common-mode
collapse"). These tests run the config file's objective and optimizer (``optim.create_optimizer``, the schedules, the
queue, the shuffled BatchNorm groups) on resnet_mini and real MNIST digits for 24 steps (the 1-epoch warm-up is 4
steps here) and watch the logged metric.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from recipe_steps import B, mnist_14, run_recipe_steps, with_overrides

from configs import mocov2 as mocov2_config


def views(step):
    """B digits (a new batch each step): two 12 x 12 crops at random offsets, each with its own noise."""
    rng = np.random.default_rng(step)
    images = mnist_14()[rng.choice(len(mnist_14()), B, replace=False)]
    out = []
    for _ in range(2):
        y, x = rng.integers(0, 3, 2)
        crop = images[:, y : y + 12, x : x + 12] + 0.2 * rng.standard_normal((B, 12, 12, 3), np.float32)
        out.append(jnp.asarray(crop))
    return out


def run_recipe(config_module, steps=24, objective=None, **optimizer):
    """The embedded config's objective and optimizer (``objective`` / ``optimizer`` keys on top) for ``steps`` steps
    -> one dict of metrics per step."""
    config = with_overrides(config_module.get_config(), objective, **optimizer)
    config.objective.queue_size = 8 * B  # the recipe's 8 batches
    return run_recipe_steps(config, views, steps, rng=lambda step: jax.random.fold_in(jax.random.PRNGKey(4), step))[1]


BEFORE = dict(name='sgd', lr=0.3, weight_decay=1e-4, exclude_bias_and_norm=False)  # the recipe before the fix


def test_mocov2_embedded_recipe_keeps_queries_apart():
    history = run_recipe(mocov2_config)
    worst = max(h['query_mean_norm'] for h in history[4:])
    assert worst < 0.5, f'queries share one direction: ||mean q|| reached {worst:.3f}'


@pytest.mark.slow
def test_mocov2_recipe_before_the_fix_collapses():
    history = run_recipe(mocov2_config, objective=dict(projector_last_bn=False), **BEFORE)
    assert max(h['query_mean_norm'] for h in history) > 0.99
