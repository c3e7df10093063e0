"""Masked image modeling (MAE, SimMIM, contrastive + masked): losses against loop-based NumPy implementations of their
formulas (value and gradient), masking counts and reproducibility, the decoder's positions, and the objectives'
config errors. Tiny models (vit_test, one block) on 8-16 px images."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from ssljax import config_lib
from ssljax.data import augment
from ssljax.data import views as views_lib
from ssljax.models import registry, vit
from ssljax.models.mae_decoder import MAEDecoder, PixelShuffleHead, scatter_visible, unpatchify
from ssljax.objectives import Context, create_objective, losses
from ssljax.objectives.mae import mae_loss, normalized_patch_targets
from ssljax.objectives.simmim import simmim_loss, upsample_mask

# ============================================================================================== NumPy references

def np_norm_targets(patches, eps=1e-6):
    out = np.zeros_like(patches, dtype=np.float64)
    for b in range(patches.shape[0]):
        for i in range(patches.shape[1]):
            x = patches[b, i].astype(np.float64)
            k = x.size
            mean = sum(x) / k
            var = sum((v - mean) ** 2 for v in x) / (k - 1)   # unbiased, as torch's Tensor.var
            out[b, i] = (x - mean) / np.sqrt(var + eps)
    return out


def np_mae_loss(pred, patches, mask, norm_pix):
    target = np_norm_targets(patches) if norm_pix else patches.astype(np.float64)
    num, den = 0.0, 0.0
    for b in range(pred.shape[0]):
        for i in range(pred.shape[1]):
            if mask[b, i]:
                num += np.mean((pred[b, i].astype(np.float64) - target[b, i]) ** 2)
                den += 1
    return num / den


def np_simmim_loss(images, recon, pixel_mask):
    b, h, w, c = images.shape
    num = 0.0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                if pixel_mask[i, y, x]:
                    num += sum(abs(float(recon[i, y, x, k]) - float(images[i, y, x, k])) for k in range(c))
    return num / (pixel_mask.sum() + 1e-5) / c


def numeric_grad(f, x, eps=1e-5):
    g = np.zeros_like(x, dtype=np.float64)
    flat = x.reshape(-1).astype(np.float64)
    for j in range(flat.size):
        up, down = flat.copy(), flat.copy()
        up[j] += eps
        down[j] -= eps
        g.reshape(-1)[j] = (f(up.reshape(x.shape)) - f(down.reshape(x.shape))) / (2 * eps)
    return g


# ============================================================================================== losses

def test_normalized_patch_target_matches_its_formula():
    patches = np.random.default_rng(0).normal(2.0, 3.0, (2, 5, 12)).astype(np.float32)
    np.testing.assert_allclose(normalized_patch_targets(jnp.asarray(patches)), np_norm_targets(patches),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('norm_pix', [True, False])
def test_mae_loss_matches_numpy_value_and_gradient_on_masked_patches_only(norm_pix):
    rng = np.random.default_rng(1)
    pred = rng.normal(size=(2, 6, 4)).astype(np.float32)
    patches = rng.normal(size=(2, 6, 4)).astype(np.float32)
    mask = np.array([[1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 1, 0]], bool)
    value = mae_loss(jnp.asarray(pred), jnp.asarray(patches), jnp.asarray(mask), norm_pix)
    np.testing.assert_allclose(value, np_mae_loss(pred, patches, mask, norm_pix), rtol=1e-5)
    grad = np.asarray(jax.grad(lambda p: mae_loss(p, jnp.asarray(patches), jnp.asarray(mask), norm_pix))(
        jnp.asarray(pred)))
    expected = numeric_grad(lambda p: np_mae_loss(p, patches, mask, norm_pix), pred)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)
    assert np.all(grad[~mask] == 0)  # the visible patches take no gradient ...
    changed = pred.copy()
    changed[~mask] += 100.0           # ... and do not change the loss
    assert float(mae_loss(jnp.asarray(changed), jnp.asarray(patches), jnp.asarray(mask), norm_pix)) == \
        pytest.approx(float(value), rel=1e-6)


def test_simmim_loss_matches_numpy_value_and_gradient_on_masked_pixels_only():
    rng = np.random.default_rng(2)
    images = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    recon = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    pixel_mask = rng.random((2, 4, 4)) < 0.5
    value = simmim_loss(jnp.asarray(images), jnp.asarray(recon), jnp.asarray(pixel_mask))
    np.testing.assert_allclose(value, np_simmim_loss(images, recon, pixel_mask), rtol=1e-5)
    grad = np.asarray(jax.grad(lambda r: simmim_loss(jnp.asarray(images), r, jnp.asarray(pixel_mask)))(
        jnp.asarray(recon)))
    expected = numeric_grad(lambda r: np_simmim_loss(images, r, pixel_mask), recon, eps=1e-4)
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-6)
    assert np.all(grad[~pixel_mask] == 0)


def test_upsample_mask_repeats_each_mask_patch():
    mask = np.random.default_rng(3).random((2, 9)) < 0.5
    up = np.asarray(upsample_mask(jnp.asarray(mask), 3, 2))
    for b in range(2):
        for y in range(6):
            for x in range(6):
                assert up[b, y, x] == mask[b, (y // 2) * 3 + x // 2]


# ============================================================================================== masking

def test_masks_keep_exactly_the_configured_tokens_and_are_reproducible_from_the_key():
    n, masked = 49, 37
    draw = jax.jit(augment.random_patch_masks, static_argnums=(1, 2, 3))
    m1, m2, m3 = (np.asarray(draw(jax.random.key(k), 6, n, masked)) for k in (5, 5, 6))
    assert (m1.sum(1) == masked).all() and (m1 == m2).all() and (m1 != m3).any()
    # The encoder gathers exactly the visible tokens, in raster order.
    module = vit.ViT(dim=16, depth=1, num_heads=2, patch_size=4, image_size=28)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 28, 28, 3)), jnp.float32)
    variables = jax.jit(lambda k, x: module.init(k, x, train=False))(jax.random.key(0), x[:1])
    out = jax.jit(lambda v, x, m: module.apply(v, x, mask=m, num_visible=n - masked))(variables, x, jnp.asarray(m1))
    assert out['tokens'].shape == (6, n - masked, 16) and out['cls'].shape == (6, 16)
    for b in range(6):
        assert list(np.asarray(out['visible_idx'][b])) == list(np.flatnonzero(~m1[b]))


def test_mae_mask_count_comes_from_the_view_config():
    c = _config('mae', ratio=0.75, size=16)
    objective = _objective(c)
    _, masks = views_lib.views_from_config(c)
    assert (objective.num_patches, objective.num_masked, objective.num_visible) == (16, 12, 4)
    assert masks[0].num_masked == objective.num_masked


# ============================================================================================== decoder positions

def test_scatter_visible_puts_each_token_at_its_patch_index():
    rng = np.random.default_rng(4)
    visible = rng.normal(size=(2, 3, 5)).astype(np.float32)
    idx = np.array([[0, 4, 6], [2, 3, 7]])
    token = rng.normal(size=(5,)).astype(np.float32)
    full = np.asarray(scatter_visible(jnp.asarray(visible), jnp.asarray(idx), jnp.asarray(token), 8))
    for b in range(2):
        for i in range(8):
            expected = visible[b, list(idx[b]).index(i)] if i in idx[b] else token
            np.testing.assert_array_equal(full[b, i], expected)


def test_decoder_sees_each_visible_token_at_its_position_and_the_mask_token_elsewhere():
    # With no blocks, patch i's prediction is pred(LN(e_i + pos_i)), e_i the embedded visible token or the mask
    # token: computed here by hand, patch by patch.
    dec = MAEDecoder(dim=8, depth=0, num_heads=2, patch_size=2, channels=3, grid_h=2, grid_w=3)
    rng = np.random.default_rng(5)
    cls, vis = rng.normal(size=(2, 6)).astype(np.float32), rng.normal(size=(2, 2, 6)).astype(np.float32)
    idx = np.array([[1, 4], [5, 0]], np.int32)
    args = (jnp.asarray(cls), jnp.asarray(vis), jnp.asarray(idx))
    params = jax.jit(dec.init)(jax.random.key(0), *args)['params']
    params['mask_token'] = jnp.asarray(rng.normal(size=(1, 1, 8)), jnp.float32)
    out = np.asarray(jax.jit(dec.apply)({'params': params}, *args))
    pos = vit.sincos_pos_embed_2d(8, 2, 3)
    p = jax.tree.map(np.asarray, params)

    def head(e):
        y = (e - e.mean()) / np.sqrt(e.var() + 1e-6) * p['norm']['scale'] + p['norm']['bias']
        return y @ p['pred']['kernel'] + p['pred']['bias']
    for b in range(2):
        for i in range(6):
            if i in idx[b]:
                e = vis[b, list(idx[b]).index(i)] @ p['embed']['kernel'] + p['embed']['bias']
            else:
                e = p['mask_token'][0, 0]
            np.testing.assert_allclose(out[b, i], head(e + pos[i]), rtol=1e-4, atol=1e-5)


def test_unpatchify_inverts_patchify_and_pixel_shuffle_lays_out_cells():
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 8, 12, 3)), jnp.float32)
    np.testing.assert_array_equal(unpatchify(vit.patchify(x, 4), 4, 2, 3), x)
    head = PixelShuffleHead(stride=4)
    grid = jnp.ones((1, 2, 3, 5))
    assert jax.eval_shape(lambda: head.apply(head.init(jax.random.key(0), grid), grid)).shape == (1, 8, 12, 3)


# ============================================================================================== objectives

def _config(name, ratio=None, size=8, **overrides):
    model = {'model.backbone': 'vit_test', 'model.depth': 1, 'model.patch_size': 4, 'augment.size': size}
    decoder = {'objective.decoder_dim': 8, 'objective.decoder_depth': 1, 'objective.decoder_heads': 2}
    c = tiny_config(name, **model, **({} if name == 'simmim' else decoder))
    if name == 'simmim':
        c.augment.views.view.mask_patch_size = 4
    if ratio is not None:
        for view in c.augment.order:
            c.augment.views[view].mask_ratio = ratio
    for key, value in overrides.items():
        node = c
        *parents, last = key.split('.')
        for part in parents:
            node = node[part]
        node[last] = value
    return c


def _objective(c):
    encoder, dim = registry.encoder_from_config(c)
    return create_objective(c, Context(encoder=encoder, feature_dim=dim, total_steps=10, global_batch=c.batch_size,
                                       num_examples=100))


def _inputs(objective, c, seed=0, b=4):
    """Random normalised views (no augmentation: it is not under test) and the config's masks drawn as the loop does."""
    _, specs = views_lib.views_from_config(c)
    size = c.augment.size
    rng = np.random.default_rng(seed)
    xs = [jnp.asarray(rng.normal(size=(b, size, size, 3)), jnp.float32) for _ in specs]
    draw = jax.jit(augment.random_patch_masks, static_argnums=(1, 2, 3))
    drawn = tuple(None if m is None else draw(jax.random.key(seed + i), b, m.num_patches, m.num_masked)
                  for i, m in enumerate(specs))
    # Everything jitted: eager Flax init / apply dispatch op by op and cost more than compiling here.
    enc_vars = jax.jit(lambda k, x: objective.ctx.encoder.init(k, x, train=False))(jax.random.key(1), xs[0][:2])
    heads, state = jax.jit(objective.init)(jax.random.key(2), enc_vars)
    variables = {'params': {'encoder': enc_vars['params'], **heads['params']},
                 'batch_stats': {'encoder': enc_vars.get('batch_stats', {}), **heads['batch_stats']}}
    return variables, state, xs, {'masks': drawn, 'label': jnp.zeros(b, jnp.int32)}


def test_mae_objective_loss_is_the_mae_loss_of_its_decoder_on_masked_patches():
    c = _config('mae', size=16)
    objective = _objective(c)
    variables, state, views, batch = _inputs(objective, c)
    loss, out = jax.jit(objective.loss)(variables, state, views, batch, jax.random.key(3))
    @jax.jit
    def manual(params, x, mask):
        enc = objective.ctx.encoder.apply({'params': params['encoder']}, x, mask=mask,
                                          num_visible=objective.num_visible)
        return objective.decoder.apply({'params': params['decoder']}, enc['cls'], enc['tokens'], enc['visible_idx'])
    pred = manual(variables['params'], views[0], batch['masks'][0])
    expected = np_mae_loss(np.asarray(pred), np.asarray(vit.patchify(views[0], 4)), np.asarray(batch['masks'][0]),
                           True)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    assert out.probe_features.shape == (4, objective.ctx.feature_dim)


def test_masked_contrastive_is_reconstruction_plus_weight_times_ntxent_and_mae_at_weight_zero():
    c = _config('masked_contrastive', size=16, **{'objective.weight': 0.5})
    objective = _objective(c)
    variables, state, views, batch = _inputs(objective, c)
    loss, out = jax.jit(objective.loss)(variables, state, views, batch, jax.random.key(3))
    m = out.metrics
    np.testing.assert_allclose(loss, m['reconstruction'] + 0.5 * m['contrastive'], rtol=1e-6)
    c0 = _config('masked_contrastive', size=16, **{'objective.weight': 0.0})
    zero = _objective(c0)
    loss0, out0 = jax.jit(zero.loss)(variables, state, views, batch, jax.random.key(3))
    np.testing.assert_allclose(loss0, m['reconstruction'], rtol=1e-6)  # weight 0: the reconstruction term alone
    assert 'contrastive' not in out0.metrics


def _fw(variables):
    from ssljax.objectives import Forward
    return Forward(variables)


def test_contrastive_only_end_has_no_decoder_and_is_ntxent():
    c = _config('masked_contrastive', ratio=0.0, size=16, **{'objective.weight': 1.0})
    objective = _objective(c)
    variables, state, views, batch = _inputs(objective, c)
    assert 'decoder' not in variables['params'] and not objective.masked
    loss, out = jax.jit(objective.loss)(variables, state, views, dict(batch, masks=(None, None)), jax.random.key(3))

    @jax.jit
    def ntxent(variables, x):
        fw = _fw(variables)
        z = fw.apply('projector', objective.projector, fw.apply('encoder', objective.ctx.encoder, x)['pooled'])
        return losses.nt_xent(z[:4], z[4:], 0.2)
    np.testing.assert_allclose(loss, ntxent(variables, jnp.concatenate(views[:2])), rtol=1e-5)


def test_masked_contrastive_byol_term_moves_its_target():
    c = _config('masked_contrastive', size=16, **{'objective.term': 'byol'})
    objective = _objective(c)
    variables, state, views, batch = _inputs(objective, c)
    loss, out = jax.jit(objective.loss)(variables, state, views, batch, jax.random.key(3))
    assert np.isfinite(float(loss)) and 'predictor' in variables['params']
    params = jax.tree.map(lambda p: p + 1.0, variables['params'])
    _, new_state = jax.jit(objective.update)(params, out.objective_state, jnp.asarray(1))
    before = state['target']['params']['encoder']['patch_embed']['kernel']
    after = new_state['target']['params']['encoder']['patch_embed']['kernel']
    np.testing.assert_allclose(after - before, (1 - 0.99) * 1.0, rtol=1e-4)


@pytest.mark.parametrize('backbone', ['vit_test', 'resnet_tiny'])
def test_simmim_reconstruction_ignores_the_masked_pixels_and_loss_is_masked_l1(backbone):
    c = _config('simmim', size=16)
    if backbone != 'vit_test':
        with c.model.unlocked():
            for key in ('mask_mode', 'depth', 'drop_path_rate'):
                del c.model[key]
        c.model.backbone = backbone
    objective = _objective(c)
    variables, state, views, batch = _inputs(objective, c)
    @jax.jit
    def reconstruct(variables, x, mask):
        fw = _fw(variables)
        fw.train = False
        return objective.reconstruct_from(fw, x, mask)[:2]
    x = views[0]
    recon, pixel_mask = reconstruct(variables, x, batch['masks'][0])
    noisy = jnp.where(pixel_mask[..., None], x + 5.0, x)  # change only the masked pixels
    recon2, _ = reconstruct(variables, noisy, batch['masks'][0])
    np.testing.assert_allclose(recon, recon2, rtol=1e-5, atol=1e-5)
    assert recon.shape == x.shape and int(pixel_mask[0].sum()) == objective.num_masked * 16  # 4 x 4 px mask patches
    if backbone == 'vit_test':  # ViT runs the same in train mode (no BatchNorm)
        loss, _ = jax.jit(objective.loss)(variables, state, views, batch, jax.random.key(3))
        np.testing.assert_allclose(loss, np_simmim_loss(np.asarray(x), np.asarray(recon), np.asarray(pixel_mask)),
                                   rtol=1e-4)


@pytest.mark.parametrize('name, change, key', [
    ('mae', {'augment.views.view.mask_ratio': 0.0}, 'augment.views.view.mask_ratio'),
    ('mae', {'augment.views.view.mask_patch_size': 8}, 'augment.views.view.mask_patch_size'),
    ('mae', {'model.mask_mode': 'token'}, 'model.mask_mode'),
    ('mae', {'objective.decoder_heads': 3}, 'objective.decoder_dim'),
    ('simmim', {'model.mask_mode': 'drop'}, 'model.mask_mode'),
    ('simmim', {'augment.views.view.mask_patch_size': 6}, 'augment.views.view.mask_patch_size'),
    ('masked_contrastive', {'objective.term': 'dino'}, 'objective.term'),
    ('masked_contrastive', {'objective.weight': -1.0}, 'objective.weight'),
    ('masked_contrastive', {'objective.temperature': 0.0}, 'objective.temperature'),
])
def test_bad_values_are_one_line_config_errors_naming_the_key(name, change, key):
    c = _config(name, size=16, **change)
    with pytest.raises(config_lib.ConfigError, match=key.replace('.', r'\.')) as info:
        _objective(c)
    assert '\n' not in str(info.value)


def test_mae_needs_a_vit():
    c = _config('mae', size=16)
    c.model.backbone = 'resnet_tiny'
    with pytest.raises(config_lib.ConfigError, match='model.backbone'):
        create_objective(c, Context(encoder=None, feature_dim=16, total_steps=1, global_batch=16, num_examples=16))


# ============================================================================================== drop-path

def test_drop_path_drops_whole_samples_and_is_off_in_eval_mode():
    x = jnp.ones((1000, 3, 2))
    y = np.asarray(jax.jit(vit.drop_path, static_argnums=1)(x, 0.25, jax.random.key(0)))
    per_sample = y.reshape(1000, -1)
    assert np.all(np.isclose(per_sample, 0.0) | np.isclose(per_sample, 1 / 0.75))
    assert (per_sample.min(1) == per_sample.max(1)).all()  # one decision per sample
    assert abs((per_sample[:, 0] > 0).mean() - 0.75) < 0.05
    module = vit.ViT(dim=16, depth=2, num_heads=2, patch_size=4, image_size=8, drop_path_rate=0.5)
    plain = module.clone(drop_path_rate=0.0)
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 3)), jnp.float32)
    v = jax.jit(lambda k, x: plain.init(k, x, train=False))(jax.random.key(0), xs)
    run = jax.jit(lambda m, v, x, train, k: m.apply(v, x, train=train, rngs={'dropout': k})['pooled'],
                  static_argnums=(0, 3))
    reference = run(plain, v, xs, True, jax.random.key(1))
    np.testing.assert_allclose(run(module, v, xs, False, jax.random.key(1)), reference, rtol=1e-6)
    assert np.abs(np.asarray(run(module, v, xs, True, jax.random.key(1)) - reference)).max() > 1e-4


@pytest.mark.parametrize('name', ['mae', 'simmim', 'masked_contrastive'])
def test_online_probe_sees_the_whole_view_with_probe_unmasked_and_the_loss_is_unchanged(name):
    """probe_unmasked=True: the probe's features are the eval-mode encoder on the unmasked first view (what the
    offline probe sees); False (default): the masked view's pooled output. The loss is the same either way."""
    c = _config(name, size=16)
    objective = _objective(c)
    unmasked = _objective(_config(name, size=16, **{'objective.probe_unmasked': True}))
    assert not objective.probe_unmasked and unmasked.probe_unmasked
    variables, state, views, batch = _inputs(objective, c)
    loss, out = jax.jit(objective.loss)(variables, state, views, batch, jax.random.key(3))
    loss_u, out_u = jax.jit(unmasked.loss)(variables, state, views, batch, jax.random.key(3))
    np.testing.assert_allclose(loss_u, loss, rtol=1e-6)
    whole = jax.jit(lambda v, x: objective.ctx.encoder.apply({'params': v['params']['encoder']}, x,
                                                             train=False)['pooled'])(variables, views[0])
    np.testing.assert_allclose(out_u.probe_features, whole, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out.probe_features, whole, atol=1e-3)  # the default probes the masked view
    assert c.objective.probe_unmasked is False
