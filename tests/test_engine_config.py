"""Views, masks and models as configuration: what the config says is what the step computes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from configs import common
from ssljax import config_lib, configure, train
from ssljax.data import augment
from ssljax.data import views as views_lib
from ssljax.models import registry


def test_views_follow_the_config_order_counts_and_overrides():
    c = tiny_config('dino')
    views, masks = views_lib.views_from_config(c)
    n_local = c.augment.views.local.count
    assert len(views) == 2 + n_local and masks == (None,) * len(views)
    assert (views[0].blur_prob, views[1].blur_prob) == (0.0, 0.0)  # tiny_config's augment.blur_prob=0 wins
    assert views[0].size == views[1].size == c.augment.size and views[2].size == c.augment.views.local.size
    configure.apply_overrides(c, ['augment.views.local.count=1', 'augment.views.global2.solarize_prob=0.5',
                                   'augment.blur_prob=-1'])
    views, _ = views_lib.views_from_config(c)
    assert len(views) == 3 and views[1].solarize_prob == 0.5 and views[0].blur_prob == 1.0


@pytest.mark.parametrize('key, value, message', [
    ('order', ('view1',), 'augment.order'),
    ('views.view1.crop_ratio', (2.0, 1.0), 'augment.views.view1'),
    ('views.view2.count', -1, 'augment.views.view2.count'),
    ('views.view1.mask_ratio', 1.0, 'augment.views.view1.mask_ratio'),
])
def test_bad_view_settings_name_the_key(key, value, message):
    c = tiny_config('byol')
    node = c.augment
    parts = key.split('.')
    for p in parts[:-1]:
        node = node[p]
    with node.unlocked():
        node[parts[-1]] = value
    with pytest.raises(config_lib.ConfigError, match=message.replace('.', r'\.')):
        views_lib.views_from_config(c)


def test_patch_masks_keep_exactly_the_configured_count_and_depend_on_the_key_and_sample_only():
    c = tiny_config('simclr')
    c.augment.views.view.mask_ratio = 0.75
    c.augment.views.view.mask_patch_size = 2  # 8 px views -> 16 patches of 2 x 2, 12 masked
    views, masks = views_lib.views_from_config(c)
    assert masks[0] == views_lib.MaskSpec(num_patches=16, num_masked=12, patch_size=2)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3)), jnp.uint8)
    # Jitted, as in the train step (op by op, the augmentation dispatches and compiles every op on its own).
    make_views = jax.jit(views_lib.make_views, static_argnums=(2, 3))
    out, drawn = make_views(images, jax.random.key(3), views, masks)
    assert len(out) == len(drawn) == 2
    for m in drawn:
        assert m.shape == (6, 16) and m.dtype == jnp.bool_
        np.testing.assert_array_equal(np.asarray(m.sum(1)), 12)
    _, again = make_views(images, jax.random.key(3), views, masks)
    np.testing.assert_array_equal(np.asarray(drawn[0]), np.asarray(again[0]))  # reproducible from the key
    # The masks alone at another batch size (the views' pixels, which the check does not read, are not compiled).
    half = jax.jit(lambda x, key: views_lib.make_views(x, key, views, masks)[1])(images[:3], jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(drawn[1][:3]), np.asarray(half[1]))  # a sample's mask: its own key
    assert not np.array_equal(np.asarray(drawn[0]), np.asarray(drawn[1]))  # each view draws its own


def test_random_patch_masks_is_uniform_over_patches():
    m = np.asarray(augment.random_patch_masks(jax.random.key(0), 4000, 8, 2))
    assert (m.sum(1) == 2).all()
    np.testing.assert_allclose(m.mean(0), 0.25, atol=0.03)


def test_model_settings_go_to_the_backbone_and_unknown_ones_name_the_key():
    c = tiny_config('simclr')
    c.model.backbone = 'vit_test'
    with c.model.unlocked():
        c.model.mask_mode = 'token'
        c.model.pool = 'mean'
    encoder, dim = registry.encoder_from_config(c)
    assert (encoder.mask_mode, encoder.pool, encoder.patch_size, encoder.image_size) == ('token', 'mean', 4, 8)
    with c.model.unlocked():
        c.model.drop_pat = 0.1
    with pytest.raises(ValueError, match=r'model\.drop_pat'):
        registry.encoder_from_config(c)


def test_set_views_stores_presets_as_data():
    c = common.base_config('byol')
    common.set_views(c, 'multicrop', n_local=3)
    assert c.augment.order == ('global1', 'global2', 'local') and c.augment.views.local.count == 3
    assert c.augment.views.global1.size == 0  # follows augment.size
    built, _ = views_lib.views_from_config(c)
    assert built == augment.recipe('multicrop', c.augment.size, n_local=3)


def test_a_second_trace_of_the_step_is_refused():
    step = jax.jit(train._traced_once(lambda x: x * 2))
    step(jnp.zeros((2,)))
    step(jnp.ones((2,)))  # same shapes: no new trace
    with pytest.raises(AssertionError, match='compiled a second time'):
        step(jnp.zeros((3,)))
    other = jax.jit(train._traced_once(lambda x: x * 2))  # a second experiment in the same process is fine
    other(jnp.zeros((3,)))
