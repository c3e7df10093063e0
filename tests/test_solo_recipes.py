"""The configs that claim solo-learn's CIFAR recipe reproduce solo-learn's update: its LARS, scheduler and losses.

solo-learn (vturrisi/solo-learn) is written down here as NumPy from its code, so this file needs no torch:
``solo_lars_step`` follows solo/utils/lars.py ``LARS.step``, ``solo_lr_sequence`` the chainable
``LinearWarmupCosineAnnealingLR.get_lr`` of solo/utils/lr_scheduler.py stepped once per optimizer step (its
``interval: step``), and the recipe numbers are those of scripts/pretrain/cifar/*.yaml with the defaults that
solo/args/pretrain.py and solo/methods/base.py fill in. Each recipe's optimizer is built from the real config
(``configs/X.py:dataset=cifar10``) and its first updates are compared on the same gradients, clip_lr on and off.
"""
import importlib
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax import optim
from ssljax.objectives import OBJECTIVES, losses

# scripts/pretrain/cifar/<yaml>: (optimizer.lr, optimizer.weight_decay). Every one of these yamls also has
# batch_size 256, kwargs clip_lr True, eta 0.02, exclude_bias_n_norm True, scheduler warmup_cosine.
SOLO_YAML = {
    'simclr.yaml': (0.4, 1e-4),
    'byol.yaml': (1.0, 1e-5),
    'barlow.yaml': (0.3, 1e-4),
    'vicreg.yaml': (0.3, 1e-4),
    'mocov3.yaml': (0.3, 1e-6),
    'dino.yaml': (0.3, 1e-6),
}
# The configs whose CIFAR variant is solo-learn's LARS recipe, and the yaml each follows (DCL, DCLW: solo-learn has
# none, they take its SimCLR recipe; DirectPred and the triplet loss take its BYOL recipe).
SOLO_LARS_CONFIGS = {
    'simclr': 'simclr.yaml', 'dcl': 'simclr.yaml', 'dclw': 'simclr.yaml',
    'byol': 'byol.yaml', 'directpred': 'byol.yaml', 'triplet': 'byol.yaml',
    'barlow_twins': 'barlow.yaml', 'vicreg': 'vicreg.yaml', 'mocov3': 'mocov3.yaml', 'dino': 'dino.yaml',
}
# CIFAR variants on LARS that follow another reference (not solo-learn), with the reason.
OTHER_LARS_CONFIGS = {
    'isogclr': "iSogCLR's own CIFAR recipe (LARS lr 0.8, warm-up from 0.01, SupContrast's floor)",
    'speedrun_cifar10': "the speedrun's own recipe (BYOL's solo-learn heads and views, batch 512, 5% warm-up): a guess",
}
# solo/args/pretrain.py and solo/methods/base.py defaults the yamls above leave alone.
SOLO_MOMENTUM, SOLO_ETA, SOLO_WARMUP_START, SOLO_WARMUP_EPOCHS, SOLO_MIN_LR = 0.9, 0.02, 3e-5, 10, 0.0
CIFAR_TRAIN, BATCH, EPOCHS = 50_000, 256, 40  # the configs' CIFAR budget (solo-learn's yamls say 1000 epochs)


def solo_lars_step(params, grads, bufs, lr, weight_decay, momentum, eta, clip_lr, exclude_bias_n_norm, eps=1e-8):
    """solo-learn's LARS.step on one parameter group (dampening 0, no Nesterov) -> (new params, momentum buffers)."""
    new_params, new_bufs = {}, {}
    for name, p in params.items():
        d_p = grads[name]
        p_norm, g_norm = np.linalg.norm(p), np.linalg.norm(d_p)
        if p.ndim != 1 or not exclude_bias_n_norm:  # 1-D tensors (biases, norms) skip scaling and weight decay
            if p_norm != 0 and g_norm != 0:
                lars_lr = eta * p_norm / (g_norm + p_norm * weight_decay + eps)
                if clip_lr:
                    lars_lr = min(lars_lr / lr, 1.0)
                d_p = (d_p + weight_decay * p) * lars_lr
        buf = d_p.copy() if bufs is None else momentum * bufs[name] + d_p  # the first step clones d_p
        new_bufs[name] = buf
        new_params[name] = p - lr * buf
    return new_params, new_bufs


def solo_lr_sequence(base_lr, warmup_steps, max_steps, warmup_start_lr, eta_min, n):
    """The learning rates of optimizer steps 0..n-1 from LinearWarmupCosineAnnealingLR's chainable get_lr."""
    lrs, lr = [], None
    span = max_steps - warmup_steps
    for e in range(n):
        if e == 0:
            lr = warmup_start_lr
        elif e < warmup_steps:
            lr = lr + (base_lr - warmup_start_lr) / (warmup_steps - 1)
        elif e == warmup_steps:
            lr = base_lr
        elif (e - 1 - max_steps) % (2 * span) == 0:
            lr = lr + (base_lr - eta_min) * (1 - math.cos(math.pi / span)) / 2
        else:
            lr = ((1 + math.cos(math.pi * (e - warmup_steps) / span))
                  / (1 + math.cos(math.pi * (e - warmup_steps - 1) / span)) * (lr - eta_min) + eta_min)
        lrs.append(lr)
    return lrs


def cifar_config(name, **optimizer):
    config = importlib.import_module(f'configs.{name}').get_config('dataset=cifar10')
    for key, value in optimizer.items():
        config.optimizer[key] = value
    return config


def problem(seed=0):
    """A params tree of two heads: kernels (adapted), a bias and a BN scale (1-D, excluded), a kernel whose gradient
    is huge (its trust ratio stays below lr under clip_lr) and a kernel with a zero gradient."""
    rng = np.random.default_rng(seed)
    shapes = {'encoder': {'conv': (3, 3, 3, 8), 'bn_scale': (8,), 'big_grad': (4, 6), 'zero_grad': (2, 3)},
              'projector': {'kernel': (8, 16), 'bias': (16,)}}
    params = {h: {k: rng.normal(size=s).astype(np.float32) for k, s in sub.items()} for h, sub in shapes.items()}
    grads = []
    for _ in range(2):
        g = {h: {k: (rng.normal(size=s) * 0.1).astype(np.float32) for k, s in sub.items()}
             for h, sub in shapes.items()}
        g['encoder']['big_grad'] *= 1e6
        g['encoder']['zero_grad'][:] = 0.0
        grads.append(g)
    return params, grads


def flat(tree):
    return {f'{h}/{k}': np.asarray(v, np.float64) for h, sub in tree.items() for k, v in sub.items()}


def test_every_lars_cifar_variant_is_listed():
    """A CIFAR variant on LARS is either a solo-learn recipe checked below or follows another named reference."""
    names = sorted(p.stem for p in pathlib.Path(__file__).parent.parent.glob('configs/*.py')
                   if p.stem not in ('__init__', 'common'))
    on_lars = {n for n in names if cifar_config(n).optimizer.name == 'lars'}
    assert on_lars == set(SOLO_LARS_CONFIGS) | set(OTHER_LARS_CONFIGS)


@pytest.mark.parametrize('clip', [True, False])
@pytest.mark.parametrize('name', sorted(SOLO_LARS_CONFIGS))
def test_first_lars_updates_equal_solo_learns(name, clip):
    lr, weight_decay = SOLO_YAML[SOLO_LARS_CONFIGS[name]]
    config = cifar_config(name, lars_clip=clip)
    assert config.batch_size == BATCH
    steps_per_epoch = CIFAR_TRAIN // BATCH
    total = int(EPOCHS * steps_per_epoch)
    tx, schedule = optim.create_optimizer(config, total, steps_per_epoch)
    solo_lrs = solo_lr_sequence(lr * BATCH / 256, SOLO_WARMUP_EPOCHS * steps_per_epoch, total, SOLO_WARMUP_START,
                                SOLO_MIN_LR, 2)

    params, grads = problem()
    state = tx.init(jax.tree.map(jnp.asarray, params))
    ours = jax.tree.map(jnp.asarray, params)
    ref, bufs = flat(params), None
    for step in range(2):  # the updates are compared (at the warm-up's start they are ~1e-5 of the params)
        updates, state = tx.update(jax.tree.map(jnp.asarray, grads[step]), state, ours)
        ours = jax.tree.map(lambda p, u: p + u, ours, updates)
        new_ref, bufs = solo_lars_step(ref, flat(grads[step]), bufs, solo_lrs[step], weight_decay, SOLO_MOMENTUM,
                                       SOLO_ETA, clip, exclude_bias_n_norm=True)
        for key, value in flat(updates).items():
            desired = new_ref[key] - ref[key]  # float32 rounding, relative to the tensor's largest entry
            np.testing.assert_allclose(value, desired, rtol=2e-5, atol=1e-6 * np.abs(desired).max() + 1e-30,
                                       err_msg=f'{name} step {step} {key}')
        ref = new_ref
    # the update actually exercised both clip_lr branches and the exclusions
    if clip:
        p, g = params['encoder']['big_grad'], grads[0]['encoder']['big_grad']
        assert SOLO_ETA * np.linalg.norm(p) / np.linalg.norm(g) < solo_lrs[0]


@pytest.mark.parametrize('name', sorted(SOLO_LARS_CONFIGS) + ['simsiam'])
def test_learning_rate_schedule_equals_solo_learns(name):
    """Every step of the 40-epoch CIFAR schedule, warm-up peak at step W - 1 included."""
    config = cifar_config(name)
    steps_per_epoch = CIFAR_TRAIN // BATCH
    total = int(EPOCHS * steps_per_epoch)
    _, schedule = optim.create_optimizer(config, total, steps_per_epoch)
    base = config.optimizer.lr * BATCH / 256
    expected = np.array(solo_lr_sequence(base, SOLO_WARMUP_EPOCHS * steps_per_epoch, total, SOLO_WARMUP_START,
                                         SOLO_MIN_LR, total))
    actual = np.asarray(jax.vmap(schedule)(jnp.arange(total)))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-7 * base)  # float32 cosine near its end
    warmup = SOLO_WARMUP_EPOCHS * steps_per_epoch
    np.testing.assert_allclose(actual[warmup - 1], base, rtol=1e-6)  # solo-learn's peak is one step early


def test_default_warmup_peaks_at_w():
    c = cifar_config('simclr', warmup_schedule='optax')
    w, peak = 100, c.optimizer.lr  # warm-up 10 epochs of 10 steps; batch 256
    _, schedule = optim.create_optimizer(c, 1000, 10)
    np.testing.assert_allclose(float(schedule(w - 1)), 3e-5 + (peak - 3e-5) * (w - 1) / w, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(w)), peak, rtol=1e-6)


def solo_simclr_loss(z, indexes, temperature):
    """solo/losses/simclr.py simclr_loss_func on one device: the mean over the 2B anchors."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    sim = np.exp(z @ z.T / temperature)
    pos_mask = indexes[:, None] == indexes[None, :]
    np.fill_diagonal(pos_mask, False)
    neg_mask = indexes[:, None] != indexes[None, :]
    pos, neg = np.sum(sim * pos_mask, 1), np.sum(sim * neg_mask, 1)
    return -np.mean(np.log(pos / (pos + neg)))


def solo_vicreg_loss(z1, z2, sim_w, var_w, cov_w):
    """solo/losses/vicreg.py vicreg_loss_func: the variance terms of the two views summed."""
    n, d = z1.shape
    std1, std2 = np.sqrt(z1.var(0, ddof=1) + 1e-4), np.sqrt(z2.var(0, ddof=1) + 1e-4)
    var = np.mean(np.maximum(0, 1 - std1)) + np.mean(np.maximum(0, 1 - std2))
    c1, c2 = z1 - z1.mean(0), z2 - z2.mean(0)
    cov1, cov2 = c1.T @ c1 / (n - 1), c2.T @ c2 / (n - 1)
    off = ~np.eye(d, dtype=bool)
    cov = np.sum(cov1[off] ** 2) / d + np.sum(cov2[off] ** 2) / d
    return sim_w * np.mean((z1 - z2) ** 2) + var_w * var + cov_w * cov


def recipe_objective(name):
    """The objective of ``configs/NAME.py:dataset=cifar10`` (its pair_loss needs no run context)."""
    config = cifar_config(name)
    return OBJECTIVES[name].build(config, None)


def test_simclr_cifar_recipe_loss_equals_solo_learns():
    objective = recipe_objective('simclr')
    assert objective.reduction == 'mean'
    rng = np.random.default_rng(3)
    z_a, z_b = rng.normal(size=(2, 16, 8)).astype(np.float32)
    ours, _ = objective.pair_loss(z_a, z_b)
    ref = solo_simclr_loss(np.concatenate([z_a, z_b]).astype(np.float64), np.tile(np.arange(16), 2), 0.2)  # tau 0.2
    np.testing.assert_allclose(float(ours), ref, rtol=1e-5)
    # the embedded default keeps SimCLR's own reduction: twice solo-learn's value
    default = OBJECTIVES['simclr'].build(importlib.import_module('configs.simclr').get_config(), None)
    np.testing.assert_allclose(float(default.pair_loss(z_a, z_b)[0]), 2 * ref, rtol=1e-5)


def test_vicreg_cifar_recipe_loss_equals_solo_learns():
    objective = recipe_objective('vicreg')
    assert objective.variance_views == 'sum'
    rng = np.random.default_rng(4)
    z_a, z_b = rng.normal(size=(2, 32, 8)).astype(np.float32) * 0.7  # std < 1: the variance hinge is active
    ours, terms = objective.pair_loss(z_a, z_b)
    ref = solo_vicreg_loss(z_a.astype(np.float64), z_b.astype(np.float64), 25.0, 25.0, 1.0)  # vicreg.yaml weights
    np.testing.assert_allclose(float(ours), ref, rtol=1e-5)
    mean_form, mean_terms = losses.vicreg_loss(z_a, z_b)  # the reference's: half the variance term
    np.testing.assert_allclose(float(terms['variance']), 2 * float(mean_terms['variance']), rtol=1e-6)
    assert float(mean_form) < float(ours)


def test_stem_padding_is_solo_learns_in_the_cifar_recipes():
    from ssljax.models import registry
    for name in sorted(SOLO_LARS_CONFIGS) + ['simsiam', 'mocov2', 'mochi', 'densecl']:
        assert cifar_config(name).model.cifar_stem_padding == 2, name
    for name in ('isogclr', 'gsimclr', 'contrastive_clustering'):  # other references: the default stem
        assert cifar_config(name).model.cifar_stem_padding == 1, name
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    for padding, side in ((1, 16), (2, 17)):  # 32 or 34 px after the stem, then one stride-2 stage
        encoder, _ = registry.create_encoder('resnet_tiny', cifar_stem=True, cifar_stem_padding=padding)
        variables = jax.eval_shape(lambda x: encoder.init(jax.random.PRNGKey(0), x, train=False), x)
        out = jax.eval_shape(lambda v, x: encoder.apply(v, x, train=False), variables, x)
        assert out['feature_map'].shape[1:3] == (side, side)
        assert variables['params']['stem_conv']['kernel'].shape == (3, 3, 3, 8)  # the same parameters
