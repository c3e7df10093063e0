"""Contrastive + masked: MAE's reconstruction plus a contrastive or BYOL-style term on the pooled representation of the
masked views, in the spirit of CMAE (Huang et al. 2023) and iBOT (Zhou et al. 2022).

Two augmented views a, b of each image each get their own random patch mask (``augment.views.<view>.mask_ratio``,
0.75 by default, equal on both views). The ViT encoder f (``mask_mode='drop'``) sees the visible patches of each
view; MAE's decoder reconstructs each view and R = ``mae.mae_loss`` over both views' masked patches (the mean of the
two views' losses). With h_v = the encoder's pooled output on the visible patches of view v, projector g:

    L = R + lambda * C,       lambda = ``objective.weight`` >= 0

  * ``term='simclr'`` (default): C = NT-Xent(g(h_a), g(h_b); tau), both masked views online (``losses.nt_xent``).
  * ``term='byol'``: predictor q and an EMA target (f', g') that sees the *unmasked* views, as CMAE's momentum branch
    and iBOT's teacher do: C = ||n(q(g(h_a))) - n(sg g'(f'(b)))||^2 + ||n(q(g(h_b))) - n(sg g'(f'(a)))||^2
    (``losses.byol_loss``); the target moves as BYOL's, xi <- tau_t xi + (1 - tau_t) theta with the cosine tau_t.

lambda = 0 is MAE (on two views per image; the contrastive heads then get no gradient and are not computed). The other
end, a contrastive-only ViT, is the same objective with no masks (``mask_ratio`` 0 on both views, lambda > 0): the
encoder sees whole views, nothing is reconstructed (no decoder), and L = lambda C.

The reference methods differ in detail (CMAE adds a pixel-shifted target view and a feature decoder; iBOT distils
masked patch tokens with a DINO head); this objective is the simplest joint form the issue asks for: one switch,
lambda, between MAE and a contrastive ViT.

Defaults (the config keys; no published recipe combines these exactly): weight 1.0 and term 'simclr' (ours),
temperature 0.2 (ours, solo-learn's CIFAR SimCLR value), BYOL's heads and target for the projector and the byol term
(Grill et al.: 4096-256 projector and predictor with BN, ema_base 0.996 -> ema_final 1.0), and MAE's decoder_dim 512,
decoder_depth 8, decoder_heads 16, norm_pix_loss True, probe_unmasked False (the online probe on view a's whole view
when True).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from ssljax.config_lib import ConfigError
from ssljax.objectives import losses
from ssljax.objectives.base import (
    Context,
    Forward,
    LossOutput,
    derived,
    ema_network,
    init_heads,
    register,
    require_predictor_dim,
)
from ssljax.objectives.ema import EMATwoViewObjective, ema_copy, ema_momentum_at, with_batch_stats
from ssljax.objectives.mae import (
    MAE,
    check_decoder,
    check_positive,
    check_vit,
    drop_mask_spec,
    probe_features,
    view_mask_spec,
)

TERMS = ('simclr', 'byol')


def joint_loss(reconstruction: jax.Array, contrastive: jax.Array, weight: float) -> jax.Array:
    """L = R + lambda C."""
    return reconstruction + weight * contrastive


@register
@dataclasses.dataclass(frozen=True)
class MaskedContrastive(MAE):
    """Contrastive + masked (see the module docstring for the math and the keys)."""

    name = 'masked_contrastive'
    accumulation: ClassVar[str] = ''  # its contrastive term couples the batch: no split written yet
    weight: float = 1.0
    term: str = 'simclr'
    temperature: float = 0.2
    # The byol term's heads and target momentum: BYOL's published defaults, read from their one place.
    projector_hidden: tuple = EMATwoViewObjective.projector_hidden
    projector_dim: int = EMATwoViewObjective.projector_dim
    projector_bn: bool = EMATwoViewObjective.projector_bn
    predictor_hidden: tuple = EMATwoViewObjective.predictor_hidden
    predictor_dim: int = EMATwoViewObjective.predictor_dim
    predictor_bn: bool = EMATwoViewObjective.predictor_bn
    ema_base: float = EMATwoViewObjective.ema_base
    ema_final: float = EMATwoViewObjective.ema_final
    masked: bool = derived(True)

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        cfg = config.objective
        cls.config_values(config)
        check_vit(config, cls.name, 'drop')
        if cfg.term not in TERMS:
            raise ConfigError(f'config key "objective.term" must be one of {", ".join(TERMS)}, got {cfg.term!r}')
        weight = cfg.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f'config key "objective.weight" must be >= 0, got {weight!r}')
        if cfg.term == 'simclr':
            check_positive(cfg, cls.name, 'temperature')
        else:
            require_predictor_dim(cfg, ' for the byol term')
        specs = [drop_mask_spec(config, i, cls.name, required=False) for i in (0, 1)]
        if specs[0] != specs[1]:
            name = view_mask_spec(config, 1, cls.name)[0]
            raise ConfigError(
                f'config key "augment.views.{name}.mask_ratio": both views must have the same mask '
                f'(or none, for the contrastive-only end), got {specs[0]} and {specs[1]} '
                f'(patches, masked)'
            )
        if specs[0] is None and weight == 0:
            raise ConfigError('config key "objective.weight" is 0 and the views have no mask: nothing to learn')
        check_decoder(config, cls.name, view_mask_spec(config, 0, cls.name)[1].size)

    @classmethod
    def from_config(cls, config, ctx: Context) -> 'MaskedContrastive':
        spec = drop_mask_spec(config, 0, cls.name, required=False)
        view_size, p = view_mask_spec(config, 0, cls.name)[1].size, int(config.model.patch_size)
        num_patches, num_masked = spec if spec is not None else ((view_size // p) ** 2, 0)
        return cls.build(
            config,
            ctx,
            num_patches=num_patches,
            num_masked=num_masked,
            patch_size=p,
            grid=view_size // p,
            masked=spec is not None,
        )

    @property
    def projector(self):
        return self.mlp('projector')

    @property
    def predictor(self):
        """BYOL's predictor q (the byol term only)."""
        return self.mlp('predictor') if self.term == 'byol' else None

    def init(self, rng, encoder_variables):
        d, nv = self.ctx.feature_dim, self.num_visible
        heads = {'projector': (self.projector, (jnp.zeros((2, d)),))}
        if self.masked:
            example = (jnp.zeros((2, d)), jnp.zeros((2, nv, d)), jnp.zeros((2, nv), jnp.int32))
            heads['decoder'] = (self.decoder, example)
        if self.predictor is not None:
            heads['predictor'] = (self.predictor, (jnp.zeros((2, self.projector.out_dim)),))
        variables = init_heads(rng, heads)
        state = {}
        if self.term == 'byol':
            state['target'] = ema_copy(encoder_variables, variables, ('projector',))
        return variables, state

    def loss(self, variables, objective_state, views, batch, rng):
        fw = Forward(variables)
        x = jnp.concatenate(views[:2], axis=0)
        b = views[0].shape[0]
        metrics = {}
        if self.masked:
            mask = jnp.concatenate(batch['masks'][:2], axis=0)
            encoded = self.encode_visible(fw, x, mask, rng)
            reconstruction = self.reconstruction_loss(x, self.decode(fw, encoded), mask)
            metrics['reconstruction'] = reconstruction
        else:
            encoded = fw.apply('encoder', self.ctx.encoder, x, rngs={'dropout': rng})
            reconstruction = jnp.zeros([], jnp.float32)
        h_a, h_b = encoded['pooled'][:b], encoded['pooled'][b:]
        probe = probe_features(self.ctx, variables, views[0], h_a, self.probe_unmasked and self.masked)
        if self.weight == 0:
            return reconstruction, LossOutput(metrics, fw.batch_stats, objective_state, probe)
        z_a, z_b = fw.apply_views('projector', self.projector, [h_a, h_b])
        if self.term == 'simclr':
            contrastive = losses.nt_xent(z_a, z_b, self.temperature)
            metrics['pos_cosine'] = losses.cosine_similarity(z_a, z_b).mean()
        else:
            p_a, p_b = fw.apply_views('predictor', self.predictor, [z_a, z_b])
            target = Forward(objective_state['target'])
            t_feats = [o['pooled'] for o in target.encode(self.ctx.encoder, views[:2])]
            t_a, t_b = [jax.lax.stop_gradient(t) for t in target.apply_views('projector', self.projector, t_feats)]
            contrastive = losses.byol_loss(p_a, p_b, t_a, t_b)
            objective_state = with_batch_stats(objective_state, 'target', jax.lax.stop_gradient(target.batch_stats))
        metrics['contrastive'] = contrastive
        loss = joint_loss(reconstruction, contrastive, self.weight)
        return loss, LossOutput(metrics, fw.batch_stats, objective_state, probe)

    def update(self, params, objective_state, step):
        if self.term != 'byol':
            return params, objective_state
        momentum = ema_momentum_at(self.ema_base, step, self.ctx.total_steps, self.ema_final)
        return params, dict(objective_state, target=ema_network(objective_state['target'], params, momentum))

    def reconstruct(self, variables, images, rng):
        if not self.masked:
            raise ConfigError(
                'config key "evals": masked_contrastive without masks (the contrastive-only end) has no '
                'decoder to reconstruct with; drop the reconstruction evaluator from config.evals'
            )
        return super().reconstruct(variables, images, rng)
