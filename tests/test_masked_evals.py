"""Evaluators of masked image modeling: full fine-tuning (layer-wise lr decay, decay mask, label smoothing,
drop-path), reconstruction grids (PNG and TensorBoard), and MAE's non-affine BatchNorm linear-probe protocol."""
import glob
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import tiny_config

from ssljax import train
from ssljax.evaluation import finetune, linear_probe, reconstruction
from ssljax.models import registry


def _shapes(module, size=8):
    return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))


def test_layer_scales_follow_layer_decay_by_block_for_vit_and_stage_for_resnet():
    vit, _ = registry.create_encoder('vit_test', image_size=8, depth=3, mask_mode='token')
    params = {'encoder': _shapes(vit)['params'], 'head': {'kernel': jnp.zeros((32, 10)), 'bias': jnp.zeros(10)}}
    scales = finetune.layer_scales(params, 0.5)
    num_layers = 4  # 3 blocks + 1
    assert scales['encoder']['patch_embed']['kernel'] == 0.5 ** 4
    assert scales['encoder']['cls_token'] == scales['encoder']['mask_token'] == 0.5 ** 4
    for i in (1, 2, 3):
        assert scales['encoder'][f'block{i}']['fc1']['kernel'] == 0.5 ** (num_layers - i)
    assert scales['encoder']['norm']['scale'] == scales['head']['kernel'] == 1.0
    resnet, _ = registry.create_encoder('resnet_tiny')
    rp = {'encoder': _shapes(resnet)['params'], 'head': {'kernel': jnp.zeros((16, 10))}}
    rs = finetune.layer_scales(rp, 0.5)
    stages = sorted({k.split('_')[0] for k in rp['encoder'] if k.startswith('stage')})
    n = len(stages) + 1
    assert rs['encoder']['stem_conv']['kernel'] == 0.5 ** n
    for s in stages:
        block = next(k for k in rp['encoder'] if k.startswith(s + '_'))
        assert jax.tree.leaves(rs['encoder'][block])[0] == 0.5 ** (n - int(s[5:]))
    # Weight decay: weights only, not biases, norms or the token / position tables.
    mask = finetune.decay_mask(params)
    assert mask['encoder']['block1']['fc1']['kernel'] and not mask['encoder']['block1']['fc1']['bias']
    assert not mask['encoder']['cls_token'] and not mask['encoder']['mask_token'] and mask['head']['kernel']


def test_scale_by_tree_multiplies_each_update():
    tx = finetune.scale_by_tree({'a': 0.5, 'b': 0.25})
    updates, _ = tx.update({'a': jnp.ones(2), 'b': jnp.ones(3)}, tx.init(None))
    np.testing.assert_allclose(updates['a'], 0.5)
    np.testing.assert_allclose(updates['b'], 0.25)


def test_smoothed_cross_entropy_matches_numpy_value_and_gradient():
    rng = np.random.default_rng(0)
    logits, labels, eps = rng.normal(size=(3, 4)), np.array([0, 3, 1]), 0.1

    def np_loss(z):
        total = 0.0
        for i in range(3):
            logp = z[i] - np.log(np.sum(np.exp(z[i])))
            for c in range(4):
                q = (1 - eps) * (c == labels[i]) + eps / 4
                total -= q * logp[c]
        return total / 3
    f = lambda z: finetune.smoothed_cross_entropy(z, jnp.asarray(labels), eps)  # noqa: E731
    np.testing.assert_allclose(f(jnp.asarray(logits, jnp.float32)), np_loss(logits), rtol=1e-5)
    grad = np.asarray(jax.grad(f)(jnp.asarray(logits, jnp.float32)))
    num = np.zeros_like(logits)
    for idx in np.ndindex(*logits.shape):
        up, down = logits.copy(), logits.copy()
        up[idx] += 1e-5
        down[idx] -= 1e-5
        num[idx] = (np_loss(up) - np_loss(down)) / 2e-5
    np.testing.assert_allclose(grad, num, rtol=1e-4, atol=1e-7)


def test_drop_path_on_a_backbone_without_it_names_the_key():
    settings = ml_collections.ConfigDict(dict(finetune.Finetune.defaults, type='finetune', every=0, network=''))
    resnet, _ = registry.create_encoder('resnet_tiny')
    evaluator = finetune.Finetune(settings, types.SimpleNamespace(encoder=resnet), 'finetune')
    with pytest.raises(ValueError, match=r'evals\.finetune\.drop_path'):
        evaluator._encoder()
    vit, _ = registry.create_encoder('vit_test', image_size=8)
    assert finetune.Finetune(settings, types.SimpleNamespace(encoder=vit), 'finetune')._encoder().drop_path_rate == 0.1


def test_linear_probe_standardisation_is_a_batchnorm_without_affine_before_the_head():
    # MAE's probe head is BatchNorm1d(affine=False, eps=1e-6) + Linear: on frozen features its evaluation-mode map
    # uses the train split's mean and (biased) variance, which is what train_linear_probe's 'standardize' computes.
    import flax.linen as nn
    rng = np.random.default_rng(1)
    x_tr, x_te = rng.normal(3.0, 2.0, (64, 5)).astype(np.float32), rng.normal(3.0, 2.0, (32, 5)).astype(np.float32)
    y_tr, y_te = rng.integers(0, 3, 64), rng.integers(0, 3, 32)
    bn = nn.BatchNorm(use_running_average=True, use_bias=False, use_scale=False, epsilon=1e-6)
    stats = {'batch_stats': {'mean': jnp.asarray(x_tr.mean(0)), 'var': jnp.asarray(x_tr.var(0))}}
    bn_tr, bn_te = (np.asarray(bn.apply(stats, jnp.asarray(x))) for x in (x_tr, x_te))
    a = linear_probe.train_linear_probe(x_tr, y_tr, x_te, y_te, 3, epochs=3, batch_size=16, normalize='standardize')
    b = linear_probe.train_linear_probe(bn_tr, y_tr, bn_te, y_te, 3, epochs=3, batch_size=16, normalize=None)
    assert a['top1'] == b['top1'] and a['loss'] == pytest.approx(b['loss'], rel=1e-4)


def test_compose_grid_places_original_masked_and_reconstruction_in_columns():
    imgs = [np.full((2, 8, 8, 3), v, np.float32) for v in (0.0, 0.5, 1.0)]
    grid = reconstruction.compose_grid(*imgs, gap=2)
    cell = 64  # 8 px scaled up 8x
    assert grid.shape == (2 * (cell + 2) + 2, 3 * (cell + 2) + 2, 3)
    for j, value in enumerate((0, 128, 255)):
        assert (grid[2:2 + cell, 2 + j * (cell + 2):2 + j * (cell + 2) + cell] == value).all()


def test_mae_run_writes_reconstruction_grid_and_tensorboard_image_and_fine_tunes(tmp_path):
    c = tiny_config('mae', **{'model.backbone': 'vit_test', 'model.depth': 1, 'model.patch_size': 4,
                              'objective.decoder_dim': 8, 'objective.decoder_depth': 1,
                              'objective.decoder_heads': 2, 'total_steps': 1, 'checkpoint_every': 0})
    c.evals = ml_collections.ConfigDict({
        'reconstruction': dict(type='reconstruction', every=0, network='', num_images=4, seed=0),
        'finetune': dict(type='finetune', every=0, network='', epochs=2, lr=2e-2, batch_size=64, weight_decay=0.05,
                         layer_decay=0.75, drop_path=0.1, warmup_epochs=0.5, label_smoothing=0.1, crop_min_scale=0.5,
                         flip_prob=0.0, max_train_examples=640)})
    c.eval.baseline_evals = ()
    summary = train.train_and_evaluate(c, str(tmp_path))
    assert np.isfinite(summary['reconstruction_error'])
    print('finetune', summary['finetune_top1'], summary['finetune_train_loss'])
    assert summary['finetune_top1'] > 0.15  # 10 classes: chance is 0.1 (a 1-step encoder, 20 steps)
    grids = glob.glob(os.path.join(tmp_path, 'figures', 'reconstruction_grid_*.png'))
    assert len(grids) == 1
    from PIL import Image
    assert Image.open(grids[0]).size == (3 * 66 + 2, 4 * 66 + 2)  # 3 columns, 4 rows of 64 px cells
    assert 'reconstruction/grid' in _tensorboard_image_tags(os.path.join(tmp_path, 'tb'))


def _tensorboard_image_tags(directory: str) -> set:
    """Image tags in the event files of ``directory`` (TFRecord framing: length, crc, Event proto, crc)."""
    import struct

    from tensorboardX.proto import event_pb2
    tags = set()
    for path in glob.glob(os.path.join(directory, 'events.out.tfevents.*')):
        data = open(path, 'rb').read()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack('<Q', data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            tags |= {v.tag for v in event.summary.value if v.HasField('image')}
    return tags
