"""DINO's teacher must not collapse under the embedded recipe (issue 19, section 2; experiments/dino/README.md).

Before the fix the embedded MNIST recipe ran DINO's head without BatchNorm under the budget's LARS (lr 0.3 after a
15-step warm-up): within 6 steps every image had the same L2-normalised bottleneck output (mean pairwise cosine 0.79
-> 0.9985), the EMA teacher inherited the single point and centring made its softmax uniform (entropy ln K = 8.318 by
step ~45). These tests run the config file's objective and optimizer (``optim.create_optimizer``, the widths, the
schedules, the freeze) on resnet_mini and real MNIST digits for 24 steps (the 1-epoch warm-up is 4 steps here) and
watch the same two signals as the run's metrics: the teacher's entropy and the student's bottleneck cosine.
"""

import jax.numpy as jnp
import numpy as np
from recipe_steps import EPOCHS, STEPS_PER_EPOCH, B, mnist_14, run_recipe_steps, with_overrides

from configs import dino as dino_config


def views(step):
    """B digits (a new batch each step): 2 global 12 x 12 crops and 2 local 6 x 6 crops, each with its own noise."""
    rng = np.random.default_rng(step)
    images = mnist_14()[rng.choice(len(mnist_14()), B, replace=False)]
    out = []
    for size in (12, 12, 6, 6):
        y, x = rng.integers(0, 14 - size + 1, 2)
        crop = images[:, y : y + size, x : x + size] + 0.2 * rng.standard_normal((B, size, size, 3), np.float32)
        out.append(jnp.asarray(crop))
    return out


def bottleneck_cosine(objective, head_params, head_stats, feats):
    """Mean cosine between different images' L2-normalised bottleneck outputs (1: every image maps to one point)."""
    variables = {'params': head_params, **({'batch_stats': head_stats} if head_stats else {})}
    _, inter = objective.head.apply(
        variables, feats, capture_intermediates=True, mutable=['intermediates', 'batch_stats']
    )
    z = inter['intermediates']['linear_bottleneck']['__call__'][0]
    z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
    return (jnp.sum(z @ z.T) - B) / (B * B - B)


def run_recipe(steps=STEPS_PER_EPOCH * EPOCHS, objective=None, **optimizer):
    """The embedded config's objective and optimizer (``objective`` / ``optimizer`` keys on top) for ``steps`` steps
    -> (objective, one dict of metrics per step)."""
    config = with_overrides(dino_config.get_config(), objective, **optimizer)

    def cosine(objective, params, out):
        return {'student_cosine': bottleneck_cosine(objective, params['head'], out.batch_stats.get('head', {}),
                                                    out.probe_features)}

    return run_recipe_steps(config, views, steps, extra=cosine)


def test_embedded_recipe_keeps_the_dino_teacher_from_collapsing():
    objective, history = run_recipe()
    assert (objective.head_out, objective.head_bottleneck, objective.head_bn) == (2048, 64, True)
    ln_k = np.log(objective.head_out)
    entropy = max(h['teacher_entropy'] for h in history)
    cosine = max(h['student_cosine'] for h in history)
    assert entropy < 0.95 * ln_k, f'teacher entropy reached {entropy:.3f} of ln K = {ln_k:.3f}'
    assert cosine < 0.95, f'the student maps every image to nearly one point (bottleneck cosine {cosine:.4f})'


def test_the_embedded_recipe_before_the_fix_collapses():
    """LARS at lr 0.3 (eta 0.001, clip 3.0, wd 1e-5) and no BN in the head: one point within 12 steps."""
    before = dict(head_bn=False, teacher_temp=0.07, warmup_teacher_temp_epochs=5)
    _, history = run_recipe(
        steps=12, objective=before, name='lars', lr=0.3, weight_decay=1e-5, weight_decay_end=-1.0, final_lr=0.0
    )
    assert max(h['student_cosine'] for h in history) > 0.999
