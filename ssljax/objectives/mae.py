"""MAE: masked autoencoders (He et al. 2022), after facebookresearch/mae ``models_mae.py``.

For an image x cut into N patches x_1 .. x_N of p x p x C pixels (``vit.patchify``; x is the augmented view,
normalised with the view's mean / std as the reference's data loader does), a per-sample random mask m in {0, 1}^N
with exactly round(r N) ones (masked) is drawn on the device from the step's key (``config.augment.views.<view>
.mask_ratio`` r, 0.75 by default; ``ssljax.data.augment.random_patch_masks``: noise argsort, as the reference's
``random_masking``). The encoder (a ViT with ``mask_mode='drop'``) sees only the N_vis = N - round(r N) visible
patches, gathered (not zeroed), so its cost falls with r; the decoder (``ssljax.models.mae_decoder.MAEDecoder``)
puts them back at their positions, fills the masked positions with a learnable mask token and predicts every
patch's pixels y_i in R^{p p C}. The loss is the mean squared error over the masked patches only:

    L = sum_i m_i * (1 / (p p C)) sum_k (y_ik - t_ik)^2  /  sum_i m_i      (summed over the batch too)

with target t_i = x_i, or, with ``norm_pix_loss`` (the default, the reference's recommended setting), each patch
normalised by its own statistics:  t_ik = (x_ik - mu_i) / sqrt(sigma_i^2 + 1e-6),  mu_i = mean_k x_ik,
sigma_i^2 = sum_k (x_ik - mu_i)^2 / (p p C - 1)  (the unbiased variance, as torch's ``Tensor.var`` there).

Differences from the reference, by choice: the visible tokens keep raster order (the reference keeps them in the
shuffled order; attention is permutation-equivariant and positions are added before the gather, so the outputs are
the same up to that order); the number masked is the engine's round(r N) (the reference keeps int(N (1 - r)),
which differs by at most one patch when r N is not an integer).

Defaults (the config keys): the reference's (facebookresearch/mae models_mae.py, PRETRAIN.md): decoder_dim 512,
decoder_depth 8, decoder_heads 16, norm_pix_loss True; probe_unmasked False (the online probe trains on the masked
view's features; True: on the whole view's, see ``probe_features``; the reference has no online probe).
The mask comes from the first view's ``mask_ratio`` (and ``mask_patch_size``, which must be 0 or the model's patch).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from ssljax.config_lib import ConfigError
from ssljax.data import views as views_lib
from ssljax.models.mae_decoder import MAEDecoder, unpatchify
from ssljax.models.vit import patchify
from ssljax.objectives.base import Context, Forward, LossOutput, Objective, derived, init_heads, register

NORM_PIX_EPS = 1e-6


# ==================================================================================================== pure losses


def normalized_patch_targets(patches: jax.Array, eps: float = NORM_PIX_EPS) -> jax.Array:
    """MAE's norm_pix target: each patch (last axis, K = p p C values) as (x - mean) / sqrt(var + eps), with the
    unbiased variance var = sum_k (x_k - mean)^2 / (K - 1)."""
    x = patches.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True, ddof=1)
    return (x - mean) / jnp.sqrt(var + eps)


def masked_patch_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """sum_{b,i} m_bi mean_k (pred_bik - target_bik)^2 / sum_{b,i} m_bi: the per-patch MSE averaged over the masked
    patches only (pred, target [B, N, K]; mask [B, N], 1 / True = masked)."""
    m = mask.astype(jnp.float32)
    per_patch = jnp.mean((pred.astype(jnp.float32) - target.astype(jnp.float32)) ** 2, axis=-1)
    return jnp.sum(per_patch * m) / jnp.sum(m)


def mae_loss(pred: jax.Array, patches: jax.Array, mask: jax.Array, norm_pix_loss: bool = True) -> jax.Array:
    """MAE's reconstruction loss: ``masked_patch_mse(pred, t, mask)`` with t the patches, per-patch normalised when
    ``norm_pix_loss`` (:func:`normalized_patch_targets`)."""
    target = normalized_patch_targets(patches) if norm_pix_loss else patches.astype(jnp.float32)
    return masked_patch_mse(pred, target, mask)


# ==================================================================================================== config helpers


def view_mask_spec(config, index: int = 0, method: str = ''):
    """(view name, view, MaskSpec or None) of the ``index``-th view of ``config.augment`` (from
    ``data.views.views_from_config``)."""
    views, masks = views_lib.views_from_config(config)
    order = [name for name in config.augment.order for _ in range(int(config.augment.views[name].get('count', 1)))]
    if index >= len(views):
        raise ConfigError(f'config key "augment.views": {method} needs at least {index + 1} views, got {len(views)}')
    return order[index], views[index], masks[index]


def check_positive(cfg, method: str, *keys) -> None:
    for key in keys:
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f'config key "objective.{key}" must be > 0 for {method}, got {value!r}')


def check_vit(config, method: str, mask_mode: str) -> None:
    """The backbone must be a ViT run in ``mask_mode``."""
    if not str(config.model.backbone).startswith('vit'):
        raise ConfigError(
            f'config key "model.backbone": {method} needs a ViT backbone (vit_*), got {config.model.backbone!r}'
        )
    if config.model.get('mask_mode', 'drop') != mask_mode:
        raise ConfigError(
            f'config key "model.mask_mode" must be {mask_mode!r} for {method}, got '
            f'{config.model.get("mask_mode", "drop")!r}'
        )


def check_decoder(config, method: str, view_size: int) -> None:
    """The decoder keys: positive, decoder_dim divisible by 4 and by decoder_heads; the patch divides the view."""
    cfg = config.objective
    check_positive(cfg, method, 'decoder_dim', 'decoder_depth', 'decoder_heads')
    if cfg.decoder_dim % cfg.decoder_heads or cfg.decoder_dim % 4:
        raise ConfigError(
            f'config key "objective.decoder_dim" ({cfg.decoder_dim}) must be divisible by 4 and by '
            f'objective.decoder_heads ({cfg.decoder_heads})'
        )
    p = int(config.model.patch_size)
    if view_size % p:
        raise ConfigError(f'config key "model.patch_size" ({p}) must divide the view side {view_size}')


def drop_mask_spec(config, index: int, method: str, required: bool = True):
    """(num_patches, num_masked) of view ``index``'s mask, checked against the model's patches; None when the view
    has no mask and ``required`` is False."""
    name, view, spec = view_mask_spec(config, index, method)
    key = f'augment.views.{name}'
    if spec is None:
        if required:
            raise ConfigError(f'config key "{key}.mask_ratio" must be > 0 for {method} (0.75 in the reference)')
        return None
    p = int(config.model.patch_size)
    if spec.patch_size != p:
        raise ConfigError(
            f'config key "{key}.mask_patch_size" must be 0 or the model\'s patch size {p} for '
            f'{method} (one mask bit per encoder token), got {spec.patch_size}'
        )
    if spec.num_masked >= spec.num_patches:
        raise ConfigError(f'config key "{key}.mask_ratio" masks every patch of the view')
    return spec.num_patches, spec.num_masked


def probe_features(
    ctx: Context, variables: dict, images: jax.Array, masked_pooled: jax.Array, unmasked: bool
) -> jax.Array:
    """What the online probe trains on. Default (``objective.probe_unmasked`` False): the encoder's pooled output on
    the masked view, free but an understatement (the probe sees a quarter of the patches under MAE's mask, so
    ``online_probe_top1`` runs below the offline linear probe). True: the pooled output on the whole view from one
    extra forward pass in evaluation mode (no dropout or drop-path, BatchNorm's running statistics, no gradient),
    which the offline probe's features are; it costs one unmasked forward per step."""
    if not unmasked:
        return masked_pooled
    return jax.lax.stop_gradient(Forward(variables, train=False).apply('encoder', ctx.encoder, images)['pooled'])


# ==================================================================================================== the objective


@register
@dataclasses.dataclass(frozen=True)
class MAE(Objective):
    """MAE (see the module docstring for the math, the reference and the keys)."""

    name = 'mae'
    # per-sample loss, no batch-coupled state: micro-batch gradients average to the one-batch gradient
    accumulation: ClassVar[str] = 'per_sample'
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True
    probe_unmasked: bool = False
    num_patches: int = derived(0)
    num_masked: int = derived(0)
    patch_size: int = derived(16)
    grid: int = derived(0)  # patches per side of the view
    # the decoder's block layout follows the encoder's (model.scan, model.remat, model.remat_policy)
    scan: bool = derived(False)
    remat: str = derived('none')
    remat_policy: str = derived('nothing_saveable')

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        cls.config_values(config)
        check_vit(config, cls.name, 'drop')
        drop_mask_spec(config, 0, cls.name)
        check_decoder(config, cls.name, view_mask_spec(config, 0, cls.name)[1].size)

    @classmethod
    def from_config(cls, config, ctx: Context) -> 'MAE':
        num_patches, num_masked = drop_mask_spec(config, 0, cls.name)
        view_size, p = view_mask_spec(config, 0, cls.name)[1].size, int(config.model.patch_size)
        encoder = ctx.encoder  # the decoder's blocks take the encoder's layout (a ViT: check_vit)
        return cls.build(
            config,
            ctx,
            num_patches=num_patches,
            num_masked=num_masked,
            patch_size=p,
            grid=view_size // p,
            scan=bool(getattr(encoder, 'scan', False)),
            remat=str(getattr(encoder, 'remat', 'none')),
            remat_policy=str(getattr(encoder, 'remat_policy', 'nothing_saveable')),
        )

    @property
    def decoder(self) -> MAEDecoder:
        return MAEDecoder(
            dim=self.decoder_dim,
            depth=self.decoder_depth,
            num_heads=self.decoder_heads,
            patch_size=self.patch_size,
            grid_h=self.grid,
            grid_w=self.grid,
            dtype=self.ctx.dtype,
            scan=self.scan,
            remat=self.remat,
            remat_policy=self.remat_policy,
        )

    @property
    def num_visible(self) -> int:
        return self.num_patches - self.num_masked

    def init(self, rng, encoder_variables):
        d, nv = self.ctx.feature_dim, self.num_visible
        example = (jnp.zeros((2, d)), jnp.zeros((2, nv, d)), jnp.zeros((2, nv), jnp.int32))
        return init_heads(rng, {'decoder': (self.decoder, example)}), {}

    # ----- pieces shared with the contrastive + masked objective ------------------------------------------------
    def encode_visible(self, fw: Forward, images: jax.Array, mask: jax.Array, rng: jax.Array) -> dict:
        """The encoder on the visible patches of ``images`` (mask bool [B, N], True = masked)."""
        kwargs = {} if rng is None else {'rngs': {'dropout': rng}}
        return fw.apply('encoder', self.ctx.encoder, images, mask=mask, num_visible=self.num_visible, **kwargs)

    def decode(self, fw: Forward, encoded: dict) -> jax.Array:
        """Predicted patches float32 [B, N, p p C] from the encoder's output on the visible patches."""
        return fw.apply('decoder', self.decoder, encoded['cls'], encoded['tokens'], encoded['visible_idx'])

    def reconstruction_loss(self, images: jax.Array, pred: jax.Array, mask: jax.Array) -> jax.Array:
        return mae_loss(pred, patchify(images, self.patch_size), mask, self.norm_pix_loss)

    def loss(self, variables, objective_state, views, batch, rng):
        fw = Forward(variables)
        images, mask = views[0], batch['masks'][0]
        encoded = self.encode_visible(fw, images, mask, rng)
        pred = self.decode(fw, encoded)
        loss = self.reconstruction_loss(images, pred, mask)
        metrics = {'reconstruction': loss}
        probe = probe_features(self.ctx, variables, images, encoded['pooled'], self.probe_unmasked)
        return loss, LossOutput(metrics, fw.batch_stats, objective_state, probe)

    # ----- evaluation hook (ssljax.evaluation.reconstruction) ---------------------------------------------------
    def reconstruct(self, variables: dict, images: jax.Array, rng: jax.Array) -> dict:
        """Reconstructions of eval views ``images`` [B, H, W, C] (normalised) under a fresh random mask from ``rng``.

        Returns {'reconstruction': [B, H, W, C] in the images' (normalised) space, 'pixel_mask': bool [B, H, W]
        (True = masked), 'error': mean squared error over the masked pixels}. With ``norm_pix_loss`` the predicted
        patches are in per-patch normalised units and are mapped back with each original patch's mean and std
        (mean + y sqrt(var + 1e-6)), as MAE's visualisation does.
        """
        from ssljax.data import augment

        fw = Forward(variables, train=False)
        b, h, w, c = images.shape
        mask = augment.random_patch_masks(rng, b, self.num_patches, self.num_masked)
        encoded = fw.apply('encoder', self.ctx.encoder, images, mask=mask, num_visible=self.num_visible)
        pred = self.decode(fw, encoded)
        patches = patchify(images.astype(jnp.float32), self.patch_size)
        if self.norm_pix_loss:
            mean = jnp.mean(patches, axis=-1, keepdims=True)
            std = jnp.sqrt(jnp.var(patches, axis=-1, keepdims=True, ddof=1) + NORM_PIX_EPS)
            pred = pred * std + mean
        p = self.patch_size
        recon = unpatchify(pred, p, h // p, w // p, c)
        pixel_mask = (
            unpatchify(
                jnp.broadcast_to(mask[..., None], mask.shape + (p * p,)).astype(jnp.float32), p, h // p, w // p, 1
            )[..., 0]
            > 0.5
        )
        error = masked_patch_mse(pred, patches, mask)
        return {'reconstruction': recon, 'pixel_mask': pixel_mask, 'error': error}
