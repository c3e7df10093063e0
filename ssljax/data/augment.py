"""On-device image augmentation for self-supervised pretraining, run inside the jitted train step.

The host hands over uint8 batches [B, H, W, 3]; `augment_views` turns them into one normalised float32 batch per view.
Everything random is drawn from a key derived from (key, view index, sample index), so a sample's augmentation does not
depend on the batch size or on how the batch is sharded over devices.

Per sample and view the pipeline is (torchvision / solo-learn order; the flip commutes with every later op):

    uint8 -> [0, 1] -> random resized crop to `size` -> horizontal flip -> colour jitter -> grayscale
          -> Gaussian blur -> solarize -> (x - mean) / std

Streamed datasets take the random resized crop on the host instead, from the whole image at full resolution
(ssljax/data/decode.py), and hand over every view's crop packed in one uint8 row per sample ([B, sum size^2 * 3]);
`augment_views` recognises that layout and runs the rest of the pipeline with the same random draws, without a
second crop.

Each op below is a pure function of one float image in [0, 1] (HWC) and explicit parameters, pinned to its stated
definition in tests/test_augment.py; `crop_box`, `jitter_params` and `augment_image` draw the parameters. Ops whose
probability is 0 in a view are left out of the compiled graph.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import dm_pix
import jax
import jax.numpy as jnp

__all__ = [
    "GRAY_WEIGHTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "RECIPES",
    "ViewConfig",
    "recipe",
    "augment_views",
    "augment_image",
    "eval_view",
    "packed_size",
    "unpack_views",
    "crop_box",
    "crop_box_from_uniforms",
    "resized_crop",
    "random_resized_crop",
    "hflip",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "jitter_params",
    "jitter_params_from_uniforms",
    "apply_color_jitter",
    "color_jitter",
    "grayscale",
    "blur_kernel_size",
    "gaussian_blur",
    "solarize",
    "normalize",
]

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# solo-learn's CIFAR-10 statistics (its pretrain pipeline normalises CIFAR with these).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_TUPLE_FIELDS = ("crop_scale", "crop_ratio", "blur_sigma", "mean", "std")
_PROB_FIELDS = ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob")


# ----------------------------------------------------------------------------------------------------------------------
# View recipe
# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """One view's augmentation recipe. Frozen and hashable, so it can be a static jit argument.

    size: output side in pixels. crop_scale: range of the crop's area as a fraction of the image's area;
    crop_ratio: range of the crop's width / height (sampled log-uniformly). flip_prob: horizontal flip probability.
    jitter_prob: probability of colour jitter, which draws brightness / contrast / saturation factors uniformly from
    [max(0, 1 - b), 1 + b] and a hue shift from [-hue, hue] (hue in turns, at most 0.5). grayscale_prob: probability of
    BT.601 grayscale. blur_prob: probability of a Gaussian blur with sigma uniform in blur_sigma (pixels of the output)
    and kernel side `blur_kernel` (0: SimCLR's rule `blur_kernel_size(size)`, about 10% of the side).
    solarize_prob: probability of x -> 1 - x where x >= solarize_threshold.
    mean, std: per-channel normalisation applied last.
    """

    size: int
    crop_scale: tuple = (0.08, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 0.0
    blur_sigma: tuple = (0.1, 2.0)
    blur_kernel: int = 0
    solarize_prob: float = 0.0
    solarize_threshold: float = 0.5
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def __post_init__(self):
        # Configs often carry lists (ml_collections, YAML); store tuples so the dataclass stays hashable.
        for name in _TUPLE_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or len(value) != (3 if name in ("mean", "std") else 2):
                n = 3 if name in ("mean", "std") else 2
                raise ValueError(f"ViewConfig.{name} must be a sequence of {n} numbers, got {value!r}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if int(self.size) != self.size or self.size < 1:
            raise ValueError(f"ViewConfig.size must be a positive integer, got {self.size!r}")
        object.__setattr__(self, "size", int(self.size))
        for name in _PROB_FIELDS:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ViewConfig.{name} must lie in [0, 1], got {getattr(self, name)!r}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"ViewConfig.crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale!r}")
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ValueError(f"ViewConfig.crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio!r}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"ViewConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"ViewConfig.hue must lie in [0, 0.5], got {self.hue!r}")
        lo, hi = self.blur_sigma
        if not 0.0 < lo <= hi:
            raise ValueError(f"ViewConfig.blur_sigma must satisfy 0 < lo <= hi, got {self.blur_sigma!r}")
        if self.blur_kernel and (self.blur_kernel % 2 == 0 or not 0 < self.blur_kernel < 2 * self.size):
            raise ValueError(f"ViewConfig.blur_kernel must be 0 or odd and below 2 * size, got {self.blur_kernel!r}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"ViewConfig.std must be positive, got {self.std!r}")


def _simclr_views(image_size, strength=1.0):
    s = float(strength)
    view = ViewConfig(
        size=image_size,
        brightness=0.8 * s,
        contrast=0.8 * s,
        saturation=0.8 * s,
        hue=min(0.2 * s, 0.5),
        jitter_prob=0.8,
        grayscale_prob=0.2,
        blur_prob=0.5,
        flip_prob=0.5,
    )
    return (view, view)


def _byol_views(image_size):
    base = ViewConfig(size=image_size)  # jitter (0.4, 0.4, 0.2, 0.1) p 0.8, gray 0.2, flip 0.5
    return (
        dataclasses.replace(base, blur_prob=1.0, solarize_prob=0.0),
        dataclasses.replace(base, blur_prob=0.1, solarize_prob=0.2),
    )


def _solo_simclr_cifar_views(image_size):
    # solo-learn blurs with PIL's full Gaussian (radius = sigma up to 2), not SimCLR's 10%-of-side kernel, which is
    # 3 taps at 32 px: a 2 ceil(3 sigma_max) + 1 = 13-tap kernel matches it (capped for tiny images).
    view = ViewConfig(
        size=image_size,
        brightness=0.8,
        contrast=0.8,
        saturation=0.8,
        hue=0.2,
        jitter_prob=0.8,
        grayscale_prob=0.2,
        blur_prob=0.5,
        solarize_prob=0.0,
        flip_prob=0.5,
        blur_kernel=min(13, 2 * (image_size - 1) + 1),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    )
    return (view, view)


def _solo_byol_cifar_views(image_size):
    base = ViewConfig(
        size=image_size,
        brightness=0.4,
        contrast=0.4,
        saturation=0.2,
        hue=0.1,
        jitter_prob=0.8,
        grayscale_prob=0.2,
        blur_prob=0.0,
        flip_prob=0.5,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    )
    return (dataclasses.replace(base, solarize_prob=0.0), dataclasses.replace(base, solarize_prob=0.2))


def _multicrop_views(
    image_size, n_local=6, local_size=None, global_crop_scale=(0.4, 1.0), local_crop_scale=(0.05, 0.4)
):
    if int(n_local) != n_local or n_local < 0:
        raise ValueError(f"recipe 'multicrop': n_local must be a non-negative integer, got {n_local!r}")
    if local_size is None:
        local_size = max(8, int(round(image_size * 96 / 224)))
    base = ViewConfig(size=image_size, crop_scale=tuple(global_crop_scale))
    globals_ = (
        dataclasses.replace(base, blur_prob=1.0, solarize_prob=0.0),
        dataclasses.replace(base, blur_prob=0.1, solarize_prob=0.2),
    )
    local = dataclasses.replace(base, size=int(local_size), crop_scale=tuple(local_crop_scale), blur_prob=0.5)
    return globals_ + (local,) * int(n_local)


def _none_views(image_size):
    # Full image (centre square crop when not square), resized and normalised; nothing random is applied.
    return (
        ViewConfig(
            size=image_size,
            crop_scale=(1.0, 1.0),
            crop_ratio=(1.0, 1.0),
            flip_prob=0.0,
            jitter_prob=0.0,
            grayscale_prob=0.0,
            blur_prob=0.0,
            solarize_prob=0.0,
        ),
    )


# name -> (builder, recipe-level override names)
RECIPES = {
    "simclr": (_simclr_views, ("strength",)),
    "byol": (_byol_views, ()),
    "solo_simclr_cifar": (_solo_simclr_cifar_views, ()),
    "solo_byol_cifar": (_solo_byol_cifar_views, ()),
    "multicrop": (_multicrop_views, ("n_local", "local_size", "global_crop_scale", "local_crop_scale")),
    "none": (_none_views, ()),
}


def recipe(name: str, image_size: int, **overrides) -> tuple[ViewConfig, ...]:
    """Returns the views of a named augmentation recipe, each a ViewConfig.

    'simclr': two identical views (SimCLR paper, strength s = 1 by default, override `strength`): crop scale (0.08, 1),
        flip 0.5, jitter p 0.8 with brightness / contrast / saturation 0.8 s and hue 0.2 s, grayscale 0.2, blur p 0.5.
        (SimCLR's own CIFAR runs used no blur: pass blur_prob=0.0 for that.)
    'byol': BYOL's asymmetric pair: jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, flip 0.5; view 1 blur p 1.0,
        solarize p 0.0; view 2 blur p 0.1, solarize p 0.2.
    'solo_simclr_cifar': solo-learn's CIFAR SimCLR: two views, crop (0.08, 1), jitter (0.8, 0.8, 0.8, 0.2) p 0.8,
        grayscale 0.2, blur p 0.5, flip 0.5, CIFAR-10 mean / std.
    'solo_byol_cifar': solo-learn's CIFAR BYOL: crop (0.08, 1), jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2,
        flip 0.5, no blur, solarize p 0.0 on view 1 and 0.2 on view 2, CIFAR-10 mean / std.
    'multicrop': DINO's multi-crop: 2 global views at image_size with crop scale (0.4, 1.0) (DINO's code default;
        override `global_crop_scale`) and BYOL's asymmetric blur 1.0 / 0.1 and solarize 0.0 / 0.2, then `n_local`
        (default 6) local views at `local_size` (default max(8, round(image_size * 96 / 224))) with crop scale
        (0.05, 0.4) (override `local_crop_scale`) and blur p 0.5. Jitter, grayscale and flip as in 'byol'.
    'none': one deterministic view: the whole image (centre square crop if not square) resized and normalised.

    overrides: any ViewConfig field, applied to every view (e.g. blur_prob=0.0, mean=..., std=...), plus the
    recipe-level names listed above. An unknown recipe or override name raises ValueError.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown augmentation recipe {name!r}; valid recipes: {', '.join(sorted(RECIPES))}")
    builder, recipe_keys = RECIPES[name]
    view_keys = tuple(f.name for f in dataclasses.fields(ViewConfig))
    unknown = sorted(set(overrides) - set(view_keys) - set(recipe_keys))
    if unknown:
        raise ValueError(
            f"unknown override(s) {', '.join(unknown)} for recipe {name!r}; valid: {', '.join(recipe_keys + view_keys)}"
        )
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    views = builder(int(image_size), **{k: v for k, v in overrides.items() if k in recipe_keys})
    field_overrides = {k: v for k, v in overrides.items() if k in view_keys}
    return tuple(dataclasses.replace(v, **field_overrides) for v in views)


# ----------------------------------------------------------------------------------------------------------------------
# Geometric ops
# ----------------------------------------------------------------------------------------------------------------------

_ATTEMPTS = 10  # torchvision's number of crop attempts


def crop_box_from_uniforms(u, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """crop_box with its randomness given: u is float [2 n + 2] of U[0, 1) draws for n attempts (see crop_box)."""
    n = (u.shape[0] - 2) // 2
    area = float(height * width)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:n])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[n : 2 * n])
    w = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = jnp.argmax(valid)  # index of the first True (0 if none, masked below)
    ok = jnp.any(valid)

    # Fallback (static: depends on shapes only), as torchvision.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height

    hh = jnp.where(ok, h[first], fh)
    ww = jnp.where(ok, w[first], fw)
    top_r = jnp.minimum(jnp.floor(u[2 * n] * (height - hh + 1)).astype(jnp.int32), height - hh)
    left_r = jnp.minimum(jnp.floor(u[2 * n + 1] * (width - ww + 1)).astype(jnp.int32), width - ww)
    top = jnp.where(ok, top_r, (height - fh) // 2)
    left = jnp.where(ok, left_r, (width - fw) // 2)
    return jnp.stack([top, left, hh, ww]).astype(jnp.int32), ok


def crop_box(key, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts: int = _ATTEMPTS):
    """Samples a random-resized-crop box the way torchvision's RandomResizedCrop.get_params does.

    Each of `attempts` candidates draws an area a ~ U(scale) * H * W and an aspect r = exp(U(log ratio)), and sets
    w = round(sqrt(a r)), h = round(sqrt(a / r)). The first candidate with 0 < w <= W and 0 < h <= H wins, placed at
    top ~ U{0..H-h}, left ~ U{0..W-w}. If none fits, the fallback is the centre crop of the whole image clamped to the
    ratio range. The candidates are drawn all at once (no loop over data).

    Returns (box, from_attempt): box int32 [top, left, h, w]; from_attempt a bool scalar, False for the fallback.
    """
    u = jax.random.uniform(key, (2 * attempts + 2,))
    return crop_box_from_uniforms(u, height, width, scale, ratio)


def _axis_weights(start, length, in_len: int, out_len: int):
    """[out_len, in_len] resampling weights of one axis for the crop [start, start + length) (see resized_crop)."""
    centres = start + (jnp.arange(out_len, dtype=jnp.float32) + 0.5) * (length / out_len)
    pixels = jnp.arange(in_len, dtype=jnp.float32) + 0.5
    support = jnp.maximum(1.0, length / out_len)
    w = jnp.maximum(0.0, 1.0 - jnp.abs(pixels[None, :] - centres[:, None]) / support)
    w = jnp.where((pixels >= start) & (pixels < start + length), w, 0.0)  # crop first, as torchvision
    # Each centre lies inside the crop, so its nearest crop pixel has weight >= 1/2: the sum is positive.
    return w / jnp.sum(w, axis=1, keepdims=True)


def resized_crop(image, box, size: int):
    """Resamples the box [top, left, h, w] of an HWC image to size x size with an antialiased bilinear filter.

    In continuous coordinates (pixel i spans [i, i + 1]) the output pixel (p, q) is centred at input
    (top + (p + 0.5) h / size, left + (q + 0.5) w / size). Along each axis the weights are the triangle
    max(0, 1 - |d| / s) of the distance d from that centre to each input pixel centre inside the box, with support
    s = max(1, h / size) (widened when shrinking, as PIL and torchvision's antialias=True), normalised to sum to 1.
    Pixels outside the box never contribute (crop, then resize). An integer box resized to its own size is the
    exact slice. The box may be traced; the two axes are two small matrix products.
    """
    box = jnp.asarray(box, jnp.float32)
    wh = _axis_weights(box[0], box[2], image.shape[0], size)
    ww = _axis_weights(box[1], box[3], image.shape[1], size)
    # Default matmul precision: TF32 on recent GPUs errs by ~1e-3 relative, below a uint8 step, and is faster.
    x = jnp.einsum("pi,ijc->pjc", wh, image.astype(jnp.float32))
    return jnp.einsum("qj,pjc->pqc", ww, x)


def random_resized_crop(image, key, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """resized_crop(image, crop_box(key, H, W, scale, ratio)[0], size)."""
    box, _ = crop_box(key, image.shape[0], image.shape[1], scale, ratio)
    return resized_crop(image, box, size)


def hflip(image):
    """Mirrors an HWC image left-right: out[i, j] = image[i, W - 1 - j]."""
    return image[:, ::-1, :]


# ----------------------------------------------------------------------------------------------------------------------
# Colour ops (torchvision semantics on float images in [0, 1])
# ----------------------------------------------------------------------------------------------------------------------


def _gray_plane(image):
    w = jnp.asarray(GRAY_WEIGHTS, image.dtype)
    return jnp.sum(image * w, axis=-1, keepdims=True)


def grayscale(image):
    """BT.601 luma g = 0.299 R + 0.587 G + 0.114 B, replicated to the 3 channels."""
    return jnp.broadcast_to(_gray_plane(image), image.shape)


def adjust_brightness(image, factor):
    """clip(f x, 0, 1): torchvision's brightness (a blend with black). dm_pix's version adds a delta instead."""
    return jnp.clip(image * factor, 0.0, 1.0)


def adjust_contrast(image, factor):
    """clip(f x + (1 - f) m, 0, 1) with m the mean of the grayscale image over all pixels (torchvision).

    dm_pix / tf.image instead blend each channel with its own mean.
    """
    m = jnp.mean(_gray_plane(image))
    return jnp.clip(factor * image + (1.0 - factor) * m, 0.0, 1.0)


def adjust_saturation(image, factor):
    """clip(f x + (1 - f) g, 0, 1) with g the per-pixel grayscale (torchvision).

    dm_pix instead scales the HSV saturation.
    """
    return jnp.clip(factor * image + (1.0 - factor) * _gray_plane(image), 0.0, 1.0)


def adjust_hue(image, delta):
    """RGB -> HSV, h <- (h + delta) mod 1, HSV -> RGB (torchvision; delta in turns). Uses dm_pix.adjust_hue, which
    implements exactly this for inputs in [0, 1]."""
    return dm_pix.adjust_hue(image, delta)


def jitter_params_from_uniforms(u, brightness: float, contrast: float, saturation: float, hue: float):
    """jitter_params with its randomness given: u is float [8] of U[0, 1) draws (4 for the factors, 4 for the order).

    The order is argsort(u[4:8]), a uniformly random permutation.
    """
    strength = jnp.stack([jnp.asarray(v, jnp.float32) for v in (brightness, contrast, saturation, hue)])
    lo = jnp.concatenate([jnp.maximum(0.0, 1.0 - strength[:3]), -strength[3:]])
    hi = jnp.concatenate([1.0 + strength[:3], strength[3:]])
    factors = lo + (hi - lo) * u[:4]
    order = jnp.argsort(u[4:8]).astype(jnp.int32)
    return factors.astype(jnp.float32), order


def jitter_params(key, brightness: float, contrast: float, saturation: float, hue: float):
    """Draws torchvision ColorJitter parameters.

    Returns (factors, order): factors float32 [4] = (b ~ U[max(0, 1 - brightness), 1 + brightness], c likewise,
    s likewise, hue delta ~ U[-hue, hue]); order int32 [4], a uniformly random permutation of (0, 1, 2, 3), the
    sequence in which the four adjustments are applied.
    """
    return jitter_params_from_uniforms(jax.random.uniform(key, (8,)), brightness, contrast, saturation, hue)


def _blend(x, factor, kind):
    """clip(f x + (1 - f) ref, 0, 1) with ref = 0 (kind 0), mean gray (1) or per-pixel gray (2); f = 1 is identity."""
    gray = _gray_plane(x)
    ref = jnp.where(kind == 0, 0.0, jnp.where(kind == 1, jnp.mean(gray), gray))
    return jnp.clip(factor * x + (1.0 - factor) * ref, 0.0, 1.0)


def apply_color_jitter(image, factors, order, enabled=(True, True, True, True)):
    """Applies adjust_{brightness, contrast, saturation, hue}(., factors[op]) for op = order[0], ..., order[3].

    `enabled` (static) marks ops to skip; a disabled op acts as the identity wherever it falls in the order.
    Brightness, contrast and saturation are all blends clip(f x + (1 - f) ref, 0, 1) (ref black, mean gray, gray),
    so the sequence is computed as: the blends ordered before hue, then hue once, then the blends after it; a blend
    in the other phase gets f = 1, the identity on [0, 1]. Each phase is a 3-step fori_loop so the graph holds one
    blend per phase (small compile); works per sample under vmap and jit.
    """
    factors = jnp.asarray(factors, jnp.float32)
    order = jnp.asarray(order, jnp.int32)
    pos = jnp.argmax(order == 3)  # step at which hue is applied
    # The steps holding the three blends, in order of application, and which blend each is.
    blend_steps = jnp.argsort(jnp.where(order == 3, 4, jnp.arange(4)))[:3]
    kinds = order[blend_steps]
    on = jnp.asarray(enabled[:3])[kinds]

    def blends(x, in_phase):
        def body(j, x):
            return _blend(x, jnp.where(in_phase[j] & on[j], factors[kinds[j]], 1.0), kinds[j])

        return jax.lax.fori_loop(0, 3, body, x)

    if not enabled[3]:
        return blends(image, jnp.ones(3, bool))
    x = blends(image, blend_steps < pos)
    x = adjust_hue(x, factors[3])
    return blends(x, blend_steps > pos)


def color_jitter(image, key, brightness: float, contrast: float, saturation: float, hue: float):
    """torchvision ColorJitter: apply_color_jitter with parameters from jitter_params(key, ...)."""
    factors, order = jitter_params(key, brightness, contrast, saturation, hue)
    enabled = (brightness > 0, contrast > 0, saturation > 0, hue > 0)
    return apply_color_jitter(image, factors, order, enabled)


# ----------------------------------------------------------------------------------------------------------------------
# Blur, solarize, normalise
# ----------------------------------------------------------------------------------------------------------------------


def blur_kernel_size(size: int) -> int:
    """SimCLR's kernel side for an image of side `size`: 2 * ((size // 10) // 2) + 1, at least 3 (and < 2 size)."""
    k = max(3, 2 * ((size // 10) // 2) + 1)
    return max(1, min(k, 2 * (size - 1) + 1))  # reflect padding needs radius < size


def gaussian_blur(image, sigma, kernel_size: int):
    """Separable Gaussian blur with reflect padding (torchvision GaussianBlur).

    1-D kernel k_t = exp(-t^2 / (2 sigma^2)) / sum, t = -r..r, r = kernel_size // 2; applied along H then W, with the
    image mirrored at its borders (without repeating the edge pixel). dm_pix.gaussian_blur pads with zeros, which
    darkens borders, hence this version. `sigma` may be traced; `kernel_size` is static.
    """
    r = kernel_size // 2
    if r == 0:
        return image
    t = jnp.arange(-r, r + 1, dtype=jnp.float32)
    k = jnp.exp(-0.5 * (t / sigma) ** 2)
    k = (k / jnp.sum(k)).astype(image.dtype)
    height, width = image.shape[0], image.shape[1]
    x = jnp.pad(image, ((r, r), (0, 0), (0, 0)), mode="reflect")
    x = sum(k[i] * x[i : i + height] for i in range(2 * r + 1))  # static loop over kernel taps
    x = jnp.pad(x, ((0, 0), (r, r), (0, 0)), mode="reflect")
    return sum(k[i] * x[:, i : i + width] for i in range(2 * r + 1))


def solarize(image, threshold):
    """x -> 1 - x where x >= threshold, x elsewhere (dm_pix.solarize)."""
    return dm_pix.solarize(image, threshold)


def normalize(image, mean, std):
    """(x - mean) / std per channel."""
    return (image - jnp.asarray(mean, image.dtype)) / jnp.asarray(std, image.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------------------------------------------------

# Layout of the per-sample uniform draws: one threefry call per sample, because every separate random call adds
# its own unrolled hash to the compiled graph (most of the compile time on CPU).
_U_CROP = slice(0, 2 * _ATTEMPTS + 2)
_U_FLIP, _U_JITTER_P, _U_GRAY, _U_BLUR_P, _U_SIGMA, _U_SOLARIZE = range(2 * _ATTEMPTS + 2, 2 * _ATTEMPTS + 8)
_U_JITTER = slice(2 * _ATTEMPTS + 8, 2 * _ATTEMPTS + 16)
_N_UNIFORMS = 2 * _ATTEMPTS + 16


def augment_image(image, key, view: ViewConfig, crop: bool = True):
    """Augments one image (uint8 or float in [0, 1], HWC) with one view's recipe; returns float32 [size, size, C].

    Pipeline: to [0, 1] -> random resized crop -> flip (p) -> colour jitter (p) -> grayscale (p) -> blur (p)
    -> solarize (p) -> normalise. All randomness comes from one vector u ~ U[0, 1)^n drawn from `key`; an op with
    probability p is applied when its own entry of u is < p (a Bernoulli(p) draw), with jnp.where. Ops with
    probability 0 are not traced at all. `crop=False`: the image is the view's crop already (taken on the host,
    [size, size, C]); the crop is skipped and every other op draws the same entries of u.
    """
    x = image.astype(jnp.float32) / 255.0 if image.dtype == jnp.uint8 else image.astype(jnp.float32)
    u = jax.random.uniform(key, (_N_UNIFORMS,))

    if crop:
        box, _ = crop_box_from_uniforms(u[_U_CROP], x.shape[0], x.shape[1], view.crop_scale, view.crop_ratio)
        x = resized_crop(x, box, view.size)
    elif x.shape[:2] != (view.size, view.size):
        raise ValueError(f"a host-cropped view must be {view.size}x{view.size}, got {x.shape[:2]}")
    if view.flip_prob > 0:
        x = jnp.where(u[_U_FLIP] < view.flip_prob, hflip(x), x)
    enabled = (view.brightness > 0, view.contrast > 0, view.saturation > 0, view.hue > 0)
    if view.jitter_prob > 0 and any(enabled):
        factors, order = jitter_params_from_uniforms(
            u[_U_JITTER], view.brightness, view.contrast, view.saturation, view.hue
        )
        x = jnp.where(u[_U_JITTER_P] < view.jitter_prob, apply_color_jitter(x, factors, order, enabled), x)
    if view.grayscale_prob > 0:
        x = jnp.where(u[_U_GRAY] < view.grayscale_prob, grayscale(x), x)
    if view.blur_prob > 0:
        sigma = view.blur_sigma[0] + (view.blur_sigma[1] - view.blur_sigma[0]) * u[_U_SIGMA]
        kernel = view.blur_kernel or blur_kernel_size(view.size)
        x = jnp.where(u[_U_BLUR_P] < view.blur_prob, gaussian_blur(x, sigma, kernel), x)
    if view.solarize_prob > 0:
        x = jnp.where(u[_U_SOLARIZE] < view.solarize_prob, solarize(x, view.solarize_threshold), x)
    return normalize(x, view.mean, view.std)


def packed_size(views: Sequence[ViewConfig]) -> int:
    """Bytes per sample of a packed batch: sum over views of size^2 * 3."""
    return sum(3 * v.size * v.size for v in views)


def unpack_views(packed, views: Sequence[ViewConfig]) -> list:
    """uint8 [B, packed_size(views)] -> one uint8 [B, size, size, 3] per view (view i's bytes follow view i - 1's,
    each HWC row-major: the layout ``ssljax.data.decode.decode_views`` writes)."""
    if packed.ndim != 2 or packed.shape[1] != packed_size(views):
        raise ValueError(
            f"a packed batch for views of sizes {[v.size for v in views]} must be [B, "
            f"{packed_size(views)}], got {packed.shape}"
        )
    out, offset = [], 0
    for v in views:
        n = 3 * v.size * v.size
        out.append(packed[:, offset : offset + n].reshape(packed.shape[0], v.size, v.size, 3))
        offset += n
    return out


def augment_views(images, key, views: Sequence[ViewConfig]) -> list[jax.Array]:
    """Augments a uint8 batch [B, H, W, 3] into one float32 [B, size, size, 3] normalised array per view.

    View i uses key_i = fold_in(key, i); sample b of view i uses fold_in(key_i, b), so sample b's output depends only
    on (key, i, b, image b): not on the batch size nor on how the batch is sharded over devices (b is the index in the
    global batch). Output i, row b equals augment_image(images[b], fold_in(key_i, b), views[i]). `views` must be
    static under jit (a tuple of hashable ViewConfigs).

    A packed batch, uint8 [B, packed_size(views)], holds each view's random-resized crop already taken on the host
    (streamed datasets: ssljax.data.decode); row b of view i is then augment_image(crop, fold_in(key_i, b), views[i],
    crop=False): the same flip, colour, blur and solarize draws, no second crop.
    """
    if not views:
        raise ValueError("augment_views needs at least one ViewConfig")
    if images.ndim == 2:
        per_view, crop = unpack_views(images, views), False
    elif images.ndim == 4 and images.shape[-1] == 3:
        per_view, crop = [images] * len(views), True
    else:
        raise ValueError(
            f"augment_views expects images of shape [B, H, W, 3] (or packed host crops [B, bytes]), got {images.shape}"
        )
    index = jnp.arange(images.shape[0], dtype=jnp.uint32)
    outputs = []
    # One traced pipeline per view, equal views included: measured on XLA:CPU, this compiles faster than vmapping
    # the equal views together.
    for i, view in enumerate(views):
        view_key = jax.random.fold_in(key, i)
        sample_keys = jax.vmap(lambda b, k=view_key: jax.random.fold_in(k, b))(index)
        outputs.append(jax.vmap(lambda im, k, v=view: augment_image(im, k, v, crop))(per_view[i], sample_keys))
    return outputs


def eval_view(images, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Deterministic evaluation view: uint8 [B, H, W, 3] -> float32 [B, size, size, 3].

    x / 255, then (if H != W) the centre square crop of side min(H, W), then (if that side != size) the antialiased
    bilinear resize of `resized_crop` to size, then (x - mean) / std.
    """
    if images.ndim != 4:
        raise ValueError(f"eval_view expects images of shape [B, H, W, C], got {images.shape}")
    _, height, width, _ = images.shape
    x = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images.astype(jnp.float32)
    side = min(height, width)
    if (height, width) != (size, size):
        box = jnp.array([(height - side) // 2, (width - side) // 2, side, side])
        x = jax.vmap(lambda im: resized_crop(im, box, size))(x)
    return normalize(x, mean, std)


# ----------------------------------------------------------------------------------------------------------------------
# Patch masks (masked image modeling)
# ----------------------------------------------------------------------------------------------------------------------


def random_patch_masks(key, num_samples: int, num_patches: int, num_masked: int) -> jax.Array:
    """bool [num_samples, num_patches], True = masked, exactly ``num_masked`` True per row, uniformly at random.

    Row b depends only on (key, b): its noise is drawn from fold_in(key, b) and the ``num_masked`` patches of lowest
    noise are masked, so a sample's mask does not depend on the batch size or on how the batch is sharded.
    """
    if not 0 <= num_masked <= num_patches:
        raise ValueError(f"random_patch_masks: num_masked must be in [0, {num_patches}], got {num_masked}")
    index = jnp.arange(num_samples, dtype=jnp.uint32)
    noise = jax.vmap(lambda b: jax.random.uniform(jax.random.fold_in(key, b), (num_patches,)))(index)
    rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
    return rank < num_masked
