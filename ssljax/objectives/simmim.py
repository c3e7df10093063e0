"""SimMIM: simple masked image modeling (Xie et al. 2022), after microsoft/SimMIM ``models/simmim.py`` and the
``MaskGenerator`` of ``data/data_simmim.py``.

The image x [H, W, C] (the augmented view, normalised with the view's mean / std, as the reference's loader does)
gets a random mask over a grid of mask patches of side q (``augment.views.<view>.mask_patch_size``, 32 in the
reference; 0 means the model's patch size) with round(r M) of the M mask patches masked per sample
(``mask_ratio`` r, 0.6 in the reference; the reference rounds up: ceil(r M), which differs by at most one patch when
r M is not an integer). The mask is repeated to the encoder's token grid (q / p tokens per side for a ViT of patch p,
q pixels for a ResNet), so every token of a masked mask patch is masked.

  * ViT (``model.mask_mode='token'``): masked patch embeddings are replaced by a learnable mask token before the
    positions are added, all tokens go through the encoder, and the decoder maps each output patch token to its
    p x p x C pixels (a 1x1 conv + pixel shuffle of stride p, ``mae_decoder.PixelShuffleHead``).
  * ResNet (masking at the input, this library's addition: the reference only has ViT / Swin): masked pixels are
    replaced by a learnable per-channel value (``mae_decoder.PixelMaskToken``, 0 at init, i.e. the dataset mean),
    and the decoder maps the last feature map [h, w, D] to pixels with stride s = H / h.

With the prediction y and the pixel mask M_hw in {0, 1} (1 = masked):

    L = sum_{b,h,w,c} M_bhw |y_bhwc - x_bhwc|  /  (sum_{b,h,w} M_bhw + 1e-5)  /  C

(L1 on the masked pixels, averaged per masked pixel and channel, as the reference's ``forward``).

Defaults (the config keys): probe_unmasked False (as MAE's; True: the online probe on the whole view). The mask comes
from the first view's ``mask_ratio`` / ``mask_patch_size`` (the mask patch must be a multiple of the model's patch and
divide the view side).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from ssljax.config_lib import ConfigError
from ssljax.models.mae_decoder import PixelMaskToken, PixelShuffleHead
from ssljax.objectives.base import Context, Forward, LossOutput, Objective, derived, init_heads, register
from ssljax.objectives.mae import probe_features, view_mask_spec

L1_EPS = 1e-5


# ==================================================================================================== pure functions


def simmim_loss(images: jax.Array, recon: jax.Array, pixel_mask: jax.Array) -> jax.Array:
    """SimMIM's masked L1: sum M |y - x| / (sum M + 1e-5) / C with images, recon [B, H, W, C] and pixel_mask
    [B, H, W] (1 / True = masked); M is summed over pixels only, then the channels divide."""
    m = pixel_mask.astype(jnp.float32)
    err = jnp.abs(recon.astype(jnp.float32) - images.astype(jnp.float32)) * m[..., None]
    return jnp.sum(err) / (jnp.sum(m) + L1_EPS) / images.shape[-1]


def upsample_mask(mask: jax.Array, grid: int, scale: int) -> jax.Array:
    """A mask over a grid x grid of mask patches, [B, grid * grid] (raster order), repeated ``scale`` times along
    both axes -> [B, grid * scale, grid * scale] (the reference's ``mask.repeat(scale, axis=0).repeat(scale,
    axis=1)``)."""
    m = mask.reshape(mask.shape[0], grid, grid)
    return jnp.repeat(jnp.repeat(m, scale, axis=1), scale, axis=2)


# ==================================================================================================== the objective


@register
@dataclasses.dataclass(frozen=True)
class SimMIM(Objective):
    """SimMIM (see the module docstring for the math, the reference and the keys)."""

    name = 'simmim'
    # per-sample loss, no batch-coupled state: micro-batch gradients average to the one-batch gradient
    accumulation: ClassVar[str] = 'per_sample'
    probe_unmasked: bool = False  # the online probe on the whole view (mae.probe_features)
    stride: int = derived(1)  # the pixel-shuffle head's upsampling factor
    input_mask: bool = derived(False)  # True: ResNet, masking at the input with a learnable pixel value
    mask_grid: int = derived(0)  # side of the mask-patch grid
    mask_scale_tokens: int = derived(1)  # encoder tokens per mask patch side (ViT)
    image_size: int = derived(0)
    num_masked: int = derived(0)

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        cls.config_values(config)
        vit = str(config.model.backbone).startswith('vit')
        if vit and config.model.get('mask_mode', 'drop') != 'token':
            raise ConfigError(
                f'config key "model.mask_mode" must be \'token\' for simmim on a ViT, got '
                f'{config.model.get("mask_mode", "drop")!r}'
            )
        name, view, spec = view_mask_spec(config, 0, cls.name)
        key = f'augment.views.{name}'
        if spec is None:
            raise ConfigError(f'config key "{key}.mask_ratio" must be > 0 for simmim (0.6 in the reference)')
        p = int(config.model.patch_size)
        if vit and spec.patch_size % p:
            raise ConfigError(
                f'config key "{key}.mask_patch_size" ({spec.patch_size}) must be a multiple of the '
                f'model\'s patch size {p}'
            )

    @classmethod
    def from_config(cls, config, ctx: Context) -> 'SimMIM':
        backbone = str(config.model.backbone)
        vit = backbone.startswith('vit')
        _, view, spec = view_mask_spec(config, 0, cls.name)
        size, q = view.size, spec.patch_size
        if vit:
            p = int(config.model.patch_size)
            stride, scale = p, q // p
        else:  # the feature map's stride needs the encoder: checked here, not in check_config
            feature = _feature_grid(ctx.encoder, size)
            if size % feature:
                raise ConfigError(
                    f'config key "model.backbone": {backbone}\'s feature map ({feature} x {feature}) '
                    f'does not divide the view side {size}, so no pixel-shuffle stride fits'
                )
            stride, scale = size // feature, 1
        return cls.build(
            config,
            ctx,
            stride=stride,
            input_mask=not vit,
            mask_grid=size // q,
            mask_scale_tokens=scale,
            image_size=size,
            num_masked=spec.num_masked,
        )

    @property
    def head(self) -> PixelShuffleHead:
        return PixelShuffleHead(stride=self.stride, dtype=self.ctx.dtype)

    def init(self, rng, encoder_variables):
        if self.input_mask:
            g = _feature_grid(self.ctx.encoder, self.image_size)
            heads = {
                'decoder': (self.head, (jnp.zeros((2, g, g, self.ctx.feature_dim)),)),
                'mask_token': (PixelMaskToken(), (jnp.zeros((2, 2, 2, 3)), jnp.zeros((2, 2, 2), bool))),
            }
        else:
            g = self.mask_grid * self.mask_scale_tokens
            heads = {'decoder': (self.head, (jnp.zeros((2, g, g, self.ctx.feature_dim)),))}
        return init_heads(rng, heads), {}

    def pixel_mask(self, mask: jax.Array) -> jax.Array:
        """bool [B, H, W] from the mask-patch mask [B, mask_grid^2]."""
        return upsample_mask(mask, self.mask_grid, self.image_size // self.mask_grid)

    def reconstruct_from(self, fw: Forward, images: jax.Array, mask: jax.Array, rng=None):
        """(reconstruction [B, H, W, C], pixel mask [B, H, W], encoder output) for a mask-patch mask."""
        pixel_mask = self.pixel_mask(mask)
        kwargs = {} if rng is None else {'rngs': {'dropout': rng}}
        if self.input_mask:
            x = fw.apply('mask_token', PixelMaskToken(), images, pixel_mask)
            encoded = fw.apply('encoder', self.ctx.encoder, x, **kwargs)
            grid = encoded['feature_map']
        else:
            b = images.shape[0]
            token_mask = upsample_mask(mask, self.mask_grid, self.mask_scale_tokens).reshape(b, -1)
            encoded = fw.apply('encoder', self.ctx.encoder, images, mask=token_mask, **kwargs)
            g = self.mask_grid * self.mask_scale_tokens
            grid = encoded['tokens'].reshape(b, g, g, -1)
        return fw.apply('decoder', self.head, grid), pixel_mask, encoded

    def loss(self, variables, objective_state, views, batch, rng):
        fw = Forward(variables)
        images = views[0]
        recon, pixel_mask, encoded = self.reconstruct_from(fw, images, batch['masks'][0], rng)
        loss = simmim_loss(images, recon, pixel_mask)
        probe = probe_features(self.ctx, variables, images, encoded['pooled'], self.probe_unmasked)
        return loss, LossOutput({'reconstruction': loss}, fw.batch_stats, objective_state, probe)

    def reconstruct(self, variables: dict, images: jax.Array, rng: jax.Array) -> dict:
        """Evaluation hook (ssljax.evaluation.reconstruction): a fresh random mask from ``rng``; {'reconstruction',
        'pixel_mask', 'error' (mean |y - x| per masked pixel and channel)}, images in their normalised space."""
        from ssljax.data import augment

        fw = Forward(variables, train=False)
        mask = augment.random_patch_masks(rng, images.shape[0], self.mask_grid**2, self.num_masked)
        recon, pixel_mask, _ = self.reconstruct_from(fw, images, mask)
        return {'reconstruction': recon, 'pixel_mask': pixel_mask, 'error': simmim_loss(images, recon, pixel_mask)}


def _feature_grid(encoder, size: int) -> int:
    """Side of a ResNet's last feature map for size x size inputs (by shape evaluation)."""
    out = jax.eval_shape(
        lambda: encoder.init_with_output(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)[0]
    )
    if 'feature_map' not in out:
        raise ConfigError('config key "model.backbone": simmim needs a ViT or a backbone with a feature map')
    return int(out['feature_map'].shape[1])
