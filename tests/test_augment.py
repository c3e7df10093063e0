"""Tests for ssljax.data.augment: each op against its written definition (NumPy references), recipes, the batch
pipeline's determinism / batch-size independence / sharding independence, and empirical application rates."""

import colorsys
import dataclasses
import itertools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax.data import augment as A

RNG = np.random.RandomState(0)
IMG = RNG.uniform(0, 1, (8, 10, 3)).astype(np.float32)  # fixed float image in [0, 1]
GRAY_W = np.array([0.299, 0.587, 0.114], np.float32)


def np_gray(x):
    return (x * GRAY_W).sum(-1, keepdims=True)


# Jitted entry points: one compile each instead of many small eager-op compiles (keeps the file fast on CPU).
augment_jit = jax.jit(A.augment_views, static_argnums=2)
resized_crop_jit = jax.jit(A.resized_crop, static_argnums=2)
crop_box_jit = jax.jit(A.crop_box, static_argnums=(1, 2, 3, 4))
blur_jit = jax.jit(A.gaussian_blur, static_argnums=2)
hue_jit = jax.jit(A.adjust_hue)
jitter_jit = jax.jit(A.apply_color_jitter, static_argnums=3)


def uint8_batch(b, h, w, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(0, 256, (b, h, w, 3)), jnp.uint8)


# ---------------------------------------------------------------------------------------------------------------------
# Single ops against their definitions
# ---------------------------------------------------------------------------------------------------------------------

def test_flip_and_grayscale_and_solarize_match_definitions():
    np.testing.assert_array_equal(A.hflip(IMG), IMG[:, ::-1])
    gray = np.asarray(A.grayscale(IMG))
    np.testing.assert_allclose(gray, np.repeat(np_gray(IMG), 3, -1), atol=1e-6)
    # Known values: pure red -> 0.299 in every channel.
    np.testing.assert_allclose(A.grayscale(jnp.array([[[1.0, 0.0, 0.0]]])), [[[0.299] * 3]], atol=1e-7)
    x = jnp.array([[[0.0, 0.49, 0.5]], [[0.51, 0.9, 1.0]]])
    np.testing.assert_allclose(A.solarize(x, 0.5), [[[0.0, 0.49, 0.5]], [[0.49, 0.1, 0.0]]], atol=1e-6)


@pytest.mark.parametrize("f", [0.0, 0.5, 1.0, 1.7])
def test_brightness_contrast_saturation_match_torchvision_formulas(f):
    np.testing.assert_allclose(A.adjust_brightness(IMG, f), np.clip(f * IMG, 0, 1), atol=1e-6)
    m = np_gray(IMG).mean()
    np.testing.assert_allclose(A.adjust_contrast(IMG, f), np.clip(f * IMG + (1 - f) * m, 0, 1), atol=1e-6)
    np.testing.assert_allclose(A.adjust_saturation(IMG, f), np.clip(f * IMG + (1 - f) * np_gray(IMG), 0, 1),
                               atol=1e-6)


@pytest.mark.parametrize("delta", [0.0, 0.1, -0.25, 0.5])
def test_hue_matches_hsv_rotation(delta):
    ref = np.array([[colorsys.hsv_to_rgb(((h := colorsys.rgb_to_hsv(*px))[0] + delta) % 1.0, h[1], h[2])
                     for px in row] for row in IMG.astype(np.float64)])
    np.testing.assert_allclose(hue_jit(IMG, delta), ref, atol=1e-5)


def np_jitter(x, factors, order):
    b, c, s, h = factors
    for op in order:
        if op == 0:
            x = np.clip(b * x, 0, 1)
        elif op == 1:
            x = np.clip(c * x + (1 - c) * np_gray(x).mean(), 0, 1)
        elif op == 2:
            x = np.clip(s * x + (1 - s) * np_gray(x), 0, 1)
        else:
            x = np.array([[colorsys.hsv_to_rgb(((q := colorsys.rgb_to_hsv(*px))[0] + h) % 1.0, q[1], q[2])
                           for px in row] for row in x.astype(np.float64)])
    return x


def test_color_jitter_applies_ops_in_the_given_order():
    factors = np.array([1.6, 0.4, 1.8, 0.15], np.float32)
    outs = []
    for order in [(0, 1, 2, 3), (3, 2, 1, 0), (2, 0, 3, 1)]:
        out = np.asarray(jitter_jit(IMG, jnp.asarray(factors), jnp.asarray(order), (True,) * 4))
        np.testing.assert_allclose(out, np_jitter(IMG, factors, order), atol=1e-5)
        outs.append(out)
    assert np.abs(outs[0] - outs[1]).max() > 1e-2  # the order matters (clipping), so it is really followed
    # A disabled op is the identity wherever it falls in the order.
    out = jitter_jit(IMG, jnp.asarray(factors), jnp.asarray((3, 0, 1, 2)), (True, True, True, False))
    np.testing.assert_allclose(out, np_jitter(IMG, factors, (0, 1, 2)), atol=1e-5)


def test_jitter_params_ranges_and_random_order():
    keys = jax.random.split(jax.random.key(1), 2000)
    factors, orders = jax.jit(jax.vmap(lambda k: A.jitter_params(k, 0.4, 1.5, 0.2, 0.1)))(keys)
    factors, orders = np.asarray(factors), np.asarray(orders)
    lo = np.array([0.6, 0.0, 0.8, -0.1])
    hi = np.array([1.4, 2.5, 1.2, 0.1])
    assert np.all(factors >= lo - 1e-6) and np.all(factors <= hi + 1e-6)
    # Roughly uniform over the range (mean near the centre) and a real permutation, every one of the 24 occurring.
    np.testing.assert_allclose(factors.mean(0), (lo + hi) / 2, atol=0.05)
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
    counts = {p: 0 for p in itertools.permutations(range(4))}
    for o in orders:
        counts[tuple(o)] += 1
    assert min(counts.values()) > 2000 / 24 * 0.6


def np_blur(x, sigma, k):
    r = k // 2
    t = np.arange(-r, r + 1)
    w = np.exp(-t ** 2 / (2 * sigma ** 2))
    w /= w.sum()
    p = np.pad(x, ((r, r), (r, r), (0, 0)), mode="reflect")
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(k):
        for j in range(k):
            out += w[i] * w[j] * p[i:i + x.shape[0], j:j + x.shape[1]]
    return out


@pytest.mark.parametrize("sigma,k", [(0.5, 3), (1.3, 5), (2.0, 7)])
def test_gaussian_blur_matches_reflect_padded_convolution(sigma, k):
    np.testing.assert_allclose(blur_jit(IMG, sigma, k), np_blur(IMG, sigma, k), atol=1e-5)
    # Constant image stays constant: no darkened borders (zero padding would fail this).
    np.testing.assert_allclose(blur_jit(jnp.full(IMG.shape, 0.7), sigma, k), 0.7, atol=1e-6)


def test_blur_kernel_size_is_simclr_ten_percent_odd_at_least_three():
    assert [A.blur_kernel_size(s) for s in (8, 14, 32, 64, 96, 224)] == [3, 3, 3, 7, 9, 23]


def np_resize_weights(in_len, out_len, start, length):
    """Triangle filter with support max(1, length / out_len) over the pixels inside the crop, normalised."""
    scale = out_len / length
    support = max(1.0, 1.0 / scale)
    w = np.zeros((out_len, in_len))
    for o in range(out_len):
        c = start + (o + 0.5) / scale
        for i in range(in_len):
            if start <= i < start + length:
                w[o, i] = max(0.0, 1.0 - abs(i + 0.5 - c) / support)
        w[o] /= w[o].sum()
    return w


@pytest.mark.parametrize("box,size", [((2, 3, 4, 5), 4), ((0, 0, 8, 10), 4), ((1, 2, 3, 3), 7), ((0, 1, 7, 6), 5)])
def test_resized_crop_matches_antialiased_bilinear_definition(box, size):
    top, left, h, w = box
    wh = np_resize_weights(IMG.shape[0], size, top, h)
    ww = np_resize_weights(IMG.shape[1], size, left, w)
    ref = np.einsum("pi,qj,ijc->pqc", wh, ww, IMG)
    np.testing.assert_allclose(resized_crop_jit(IMG, jnp.array(box), size), ref, atol=1e-5)


def test_resized_crop_at_unit_scale_is_the_exact_slice():
    out = resized_crop_jit(IMG, jnp.array([2, 3, 5, 5]), 5)
    np.testing.assert_allclose(out, IMG[2:7, 3:8], atol=1e-6)


def test_crop_box_stays_inside_and_respects_scale_and_ratio():
    h_img, w_img, scale, ratio = 20, 24, (0.08, 1.0), (3 / 4, 4 / 3)
    keys = jax.random.split(jax.random.key(2), 3000)
    boxes, ok = jax.jit(jax.vmap(lambda k: A.crop_box(k, h_img, w_img, scale, ratio)))(keys)
    boxes, ok = np.asarray(boxes), np.asarray(ok)
    top, left, h, w = boxes.T
    assert np.all((top >= 0) & (left >= 0) & (h >= 1) & (w >= 1))
    assert np.all((top + h <= h_img) & (left + w <= w_img))
    assert ok.mean() > 0.95  # torchvision-style attempts almost always succeed with these ranges
    # Successful boxes: w = round(sqrt(a r)), h = round(sqrt(a / r)) with a/area in scale and r in ratio, so the
    # area fraction lies in scale and w/h in ratio up to the rounding of w and h by at most 1/2 pixel each.
    th, tw, hs, ws = h[ok], w[ok], h[ok].astype(float), w[ok].astype(float)
    frac = th * tw / (h_img * w_img)
    tol = (hs + ws + 0.5) / 2 / (h_img * w_img)
    assert np.all(frac >= scale[0] - tol) and np.all(frac <= scale[1] + tol)
    r_lo = (ws - 0.5) / (hs + 0.5)
    r_hi = (ws + 0.5) / np.maximum(hs - 0.5, 1e-9)
    assert np.all(r_hi >= ratio[0]) and np.all(r_lo <= ratio[1])
    # Fractions spread over the range and positions over the image.
    assert frac.min() < 0.15 and frac.max() > 0.9
    assert top[ok].min() == 0 and (top + h)[ok].max() == h_img


def test_crop_box_falls_back_to_ratio_clamped_centre_crop():
    # Aspect ratios >= 10 never fit a 20 x 20 image at area >= 0.5: the fallback is torchvision's centre crop,
    # width 20 and height round(20 / 10) = 2, centred.
    box, ok = crop_box_jit(jax.random.key(0), 20, 20, (0.5, 1.0), (10.0, 20.0))
    assert not bool(ok)
    np.testing.assert_array_equal(box, [9, 0, 2, 20])
    box, ok = crop_box_jit(jax.random.key(0), 10, 30, (1.0, 1.0), (1.0, 1.0))  # fallback: centre square
    np.testing.assert_array_equal(box, [0, 10, 10, 10])


# ---------------------------------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------------------------------

def test_byol_recipe_is_asymmetric():
    v1, v2 = A.recipe("byol", 224)
    assert (v1.blur_prob, v1.solarize_prob, v2.blur_prob, v2.solarize_prob) == (1.0, 0.0, 0.1, 0.2)
    for v in (v1, v2):
        assert (v.brightness, v.contrast, v.saturation, v.hue, v.jitter_prob) == (0.4, 0.4, 0.2, 0.1, 0.8)
        assert (v.grayscale_prob, v.flip_prob, v.size, v.crop_scale) == (0.2, 0.5, 224, (0.08, 1.0))


def test_simclr_recipes():
    v1, v2 = A.recipe("simclr", 64)
    assert v1 == v2
    assert (v1.brightness, v1.contrast, v1.saturation, v1.hue) == pytest.approx((0.8, 0.8, 0.8, 0.2))
    assert (v1.jitter_prob, v1.grayscale_prob, v1.blur_prob, v1.flip_prob) == (0.8, 0.2, 0.5, 0.5)
    half = A.recipe("simclr", 64, strength=0.5)[0]
    assert (half.brightness, half.hue) == pytest.approx((0.4, 0.1))


def test_solo_learn_cifar_recipes_match_methods_md():
    s1, s2 = A.recipe("solo_simclr_cifar", 32)
    assert s1 == s2 and s1.size == 32 and s1.crop_scale == (0.08, 1.0)
    assert (s1.brightness, s1.contrast, s1.saturation, s1.hue, s1.jitter_prob) == (0.8, 0.8, 0.8, 0.2, 0.8)
    assert (s1.grayscale_prob, s1.blur_prob, s1.solarize_prob, s1.flip_prob) == (0.2, 0.5, 0.0, 0.5)
    b1, b2 = A.recipe("solo_byol_cifar", 32)
    for v in (b1, b2):
        assert (v.brightness, v.contrast, v.saturation, v.hue, v.jitter_prob) == (0.4, 0.4, 0.2, 0.1, 0.8)
        assert (v.grayscale_prob, v.blur_prob, v.flip_prob, v.crop_scale) == (0.2, 0.0, 0.5, (0.08, 1.0))
    assert (b1.solarize_prob, b2.solarize_prob) == (0.0, 0.2)
    assert s1.mean == A.CIFAR10_MEAN and b1.std == A.CIFAR10_STD


def test_multicrop_recipe():
    views = A.recipe("multicrop", 224)
    assert len(views) == 8
    g1, g2, locals_ = views[0], views[1], views[2:]
    assert g1.size == g2.size == 224 and g1.crop_scale == (0.4, 1.0)
    assert (g1.blur_prob, g1.solarize_prob, g2.blur_prob, g2.solarize_prob) == (1.0, 0.0, 0.1, 0.2)
    assert all(v.size == 96 and v.crop_scale == (0.05, 0.4) and v.solarize_prob == 0.0 for v in locals_)
    small = A.recipe("multicrop", 32, n_local=2)
    assert [v.size for v in small] == [32, 32, 14, 14]
    assert A.recipe("multicrop", 8)[2].size == 8  # local side floored at 8
    assert [v.size for v in A.recipe("multicrop", 32, n_local=1, local_size=12)] == [32, 32, 12]


def test_none_recipe_and_field_overrides():
    (v,) = A.recipe("none", 16)
    assert (v.flip_prob, v.jitter_prob, v.grayscale_prob, v.blur_prob, v.solarize_prob) == (0, 0, 0, 0, 0)
    views = A.recipe("byol", 32, blur_prob=0.0, mean=[0.5, 0.5, 0.5])
    assert all(x.blur_prob == 0.0 and x.mean == (0.5, 0.5, 0.5) for x in views)
    assert views[1].solarize_prob == 0.2
    hash(views)  # lists from configs become tuples: usable as a static jit argument


def test_unknown_recipe_override_or_bad_value_raises():
    with pytest.raises(ValueError, match="'mocov9'"):
        A.recipe("mocov9", 32)
    with pytest.raises(ValueError, match="blur_prb.*valid:.*blur_prob"):
        A.recipe("byol", 32, blur_prb=0.0)
    with pytest.raises(ValueError, match="n_local"):
        A.recipe("simclr", 32, n_local=4)  # recipe-level key of another recipe
    with pytest.raises(ValueError, match="flip_prob"):
        A.recipe("simclr", 32, flip_prob=1.5)
    with pytest.raises(ValueError, match="crop_scale"):
        A.ViewConfig(size=8, crop_scale=(0.5, 0.1))


# ---------------------------------------------------------------------------------------------------------------------
# Batch pipeline
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(A.RECIPES))
def test_every_recipe_gives_normalised_float32_views(name):
    views = A.recipe(name, 16, n_local=2) if name == "multicrop" else A.recipe(name, 16)
    outs = augment_jit(uint8_batch(4, 20, 18), jax.random.key(0), views)
    assert len(outs) == len(views)
    for out, v in zip(outs, views):
        assert out.shape == (4, v.size, v.size, 3) and out.dtype == jnp.float32
        lo = (0 - np.array(v.mean)) / np.array(v.std)
        hi = (1 - np.array(v.mean)) / np.array(v.std)
        assert np.all(np.asarray(out) >= lo - 1e-4) and np.all(np.asarray(out) <= hi + 1e-4)
        assert np.all(np.isfinite(out))


def test_determinism_and_per_view_keys():
    views = A.recipe("solo_simclr_cifar", 16)
    images = uint8_batch(4, 20, 18)
    a = augment_jit(images, jax.random.key(3), views)
    b = augment_jit(images, jax.random.key(3), views)
    c = augment_jit(images, jax.random.key(4), views)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert np.abs(a[0] - a[1]).max() > 0.1  # identical recipes, different view index -> different views
    assert np.abs(a[0] - c[0]).max() > 0.1
    # Samples within a view are augmented differently even for identical images.
    same = jnp.broadcast_to(images[:1], images.shape)
    out = augment_jit(same, jax.random.key(3), views)[0]
    assert np.abs(out[0] - out[1]).max() > 0.1


def test_results_do_not_depend_on_batch_size():
    views = A.recipe("solo_simclr_cifar", 16)
    images = uint8_batch(4, 20, 18, seed=1)
    full = augment_jit(images, jax.random.key(5), views)
    head = augment_jit(images[:2], jax.random.key(5), views)
    for f, h in zip(full, head):
        np.testing.assert_allclose(f[:2], h, atol=1e-6)


def test_empirical_application_rates_match_probabilities():
    n, side = 1200, 8
    off = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0,
               mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    base = A.ViewConfig(size=side, **off)
    views = (dataclasses.replace(base, flip_prob=0.5), dataclasses.replace(base, grayscale_prob=0.2),
             dataclasses.replace(base, solarize_prob=0.3), dataclasses.replace(base, jitter_prob=0.8),
             dataclasses.replace(base, blur_prob=0.1))
    img = np.random.RandomState(2).randint(0, 256, (side, side, 3)).astype(np.uint8)
    x = img / 255.0
    outs = [np.asarray(o) for o in augment_jit(jnp.asarray(np.broadcast_to(img, (n,) + img.shape)),
                                               jax.random.key(7), views)]
    # Identity crop, so an untouched sample equals x exactly and each changed one must be exactly the op's output.
    changed = [np.abs(o - x).reshape(n, -1).max(1) > 1e-4 for o in outs]
    flipped = np.abs(outs[0] - x[:, ::-1]).reshape(n, -1).max(1) < 1e-5
    gray = np.abs(outs[1] - outs[1][..., :1]).reshape(n, -1).max(1) < 1e-6
    solar = np.abs(outs[2] - np.where(x >= 0.5, 1 - x, x)).reshape(n, -1).max(1) < 1e-5
    np.testing.assert_array_equal(flipped, changed[0])
    np.testing.assert_array_equal(gray, changed[1])
    np.testing.assert_array_equal(solar, changed[2])
    for rate, p in [(flipped, 0.5), (gray, 0.2), (solar, 0.3), (changed[3], 0.8), (changed[4], 0.1)]:
        assert abs(rate.mean() - p) < 4 * np.sqrt(p * (1 - p) / n), (rate.mean(), p)


def test_eval_view_and_none_recipe():
    images = uint8_batch(2, 8, 8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    eval_jit = jax.jit(A.eval_view, static_argnums=(1, 2, 3))
    out = eval_jit(images, 8, mean, std)
    np.testing.assert_allclose(out, (np.asarray(images) / 255.0 - mean) / std, atol=1e-5)
    # Non-square input: centre square crop then resize.
    wide = uint8_batch(2, 10, 14, seed=3)
    out = eval_jit(wide, 5, mean, std)
    w = np_resize_weights(10, 5, 0, 10)
    ref = np.einsum("pi,qj,bijc->bpqc", w, w, np.asarray(wide)[:, :, 2:12] / 255.0)
    np.testing.assert_allclose(out, (ref - mean) / std, atol=1e-5)
    # The 'none' recipe through augment_views is the same deterministic view.
    (none,) = augment_jit(wide, jax.random.key(0), A.recipe("none", 5, mean=mean, std=std))
    np.testing.assert_allclose(none, out, atol=1e-5)


def test_sharded_batch_gives_the_same_views(tmp_path):
    """Under jit with the batch sharded over 4 (fake CPU) devices, the views equal the single-device ones."""
    images = uint8_batch(4, 20, 18, seed=5)
    views = A.recipe("solo_simclr_cifar", 16)
    ref = augment_jit(images, jax.random.key(9), views)  # one device, in this process
    np.save(tmp_path / "images.npy", np.asarray(images))
    np.save(tmp_path / "ref.npy", np.stack([np.asarray(r) for r in ref]))
    code = textwrap.dedent("""
        import sys, jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from ssljax.data import augment as A
        assert jax.device_count() == 4
        images, ref = np.load(sys.argv[1] + "/images.npy"), np.load(sys.argv[1] + "/ref.npy")
        mesh = Mesh(np.array(jax.devices()), ("data",))
        sharded = jax.device_put(jnp.asarray(images), NamedSharding(mesh, P("data")))
        outs = jax.jit(A.augment_views, static_argnums=2)(sharded, jax.random.key(9), A.recipe("solo_simclr_cifar", 16))
        assert len(outs[0].sharding.device_set) == 4
        np.testing.assert_allclose(np.stack([np.asarray(o) for o in outs]), ref, atol=1e-5)
        print("OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-2000:]


def test_solo_simclr_blur_is_a_full_gaussian_kernel():
    view = A.recipe("solo_simclr_cifar", 32)[0]
    assert view.blur_kernel == 13 and A.recipe("simclr", 32)[0].blur_kernel == 0  # SimCLR's 10% rule elsewhere
    with pytest.raises(ValueError, match="blur_kernel"):
        A.ViewConfig(size=32, blur_kernel=4)
    # sigma 2: the 13-tap kernel spreads a point further than the 3-tap one (3 sigma each side)
    image = jnp.zeros((32, 32, 3)).at[16, 16].set(1.0)
    wide, narrow = A.gaussian_blur(image, 2.0, 13), A.gaussian_blur(image, 2.0, 3)
    assert float(wide[16, 22, 0]) > 0 and float(narrow[16, 22, 0]) == 0
    np.testing.assert_allclose(float(wide[..., 0].sum()), 1.0, rtol=1e-5)  # mass is kept
