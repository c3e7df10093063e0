"""Non-contrastive objectives: two views are made to agree without negatives; collapse is avoided by asymmetry."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ssljax.models.heads import MLP
from ssljax.objectives import losses
from ssljax.objectives.base import (Context, Forward, LossOutput, Objective, cosine_ema_momentum, ema_update,
                                    init_heads, register)


def mlp_from_config(cfg, prefix: str, dtype) -> MLP:
    """The MLP described by ``cfg.<prefix>_hidden``, ``cfg.<prefix>_dim`` and ``cfg.<prefix>_bn``."""
    return MLP(hidden_dims=tuple(cfg[f'{prefix}_hidden']), out_dim=cfg[f'{prefix}_dim'], use_bn=cfg[f'{prefix}_bn'],
               dtype=dtype)


@register
@dataclasses.dataclass(frozen=True)
class BYOL(Objective):
    """BYOL (Grill et al. 2020).

    Online network: encoder f, projector g, predictor q; target network: EMA copies f', g'. For views a, b:
        L = ||n(q(g(f(a)))) - n(sg g'(f'(b)))||^2 + ||n(q(g(f(b)))) - n(sg g'(f'(a)))||^2   (batch means)
    After each optimizer step the target moves towards the online weights,
        xi <- tau_t xi + (1 - tau_t) theta,  tau_t = 1 - (1 - tau_base)(cos(pi t / T) + 1) / 2.
    """
    name = 'byol'
    projector: MLP = None
    predictor: MLP = None
    ema_base: float = 0.996
    ema_final: float = 1.0

    @classmethod
    def from_config(cls, config, ctx: Context) -> 'BYOL':
        cfg = config.objective
        return cls(ctx=ctx, projector=mlp_from_config(cfg, 'projector', ctx.dtype),
                   predictor=mlp_from_config(cfg, 'predictor', ctx.dtype),
                   ema_base=cfg.ema_base, ema_final=cfg.ema_final)

    def init(self, rng, encoder_variables):
        feats = jnp.zeros((2, self.ctx.feature_dim), jnp.float32)
        proj = jnp.zeros((2, self.projector.out_dim), jnp.float32)
        heads = init_heads(rng, {'projector': (self.projector, (feats,)), 'predictor': (self.predictor, (proj,))})
        target = {
            'params': {'encoder': encoder_variables['params'], 'projector': heads['params']['projector']},
            'batch_stats': {'encoder': encoder_variables.get('batch_stats', {}),
                            'projector': heads['batch_stats'].get('projector', {})},
        }
        return heads, {'target': jax.tree.map(jnp.copy, target)}

    def target_projections(self, objective_state, views):
        """sg g'(f'(v)) for each view, BatchNorm in train mode (batch statistics), as the reference does."""
        target = Forward(objective_state['target'])
        feats = [o['pooled'] for o in target.encode(self.ctx.encoder, views)]
        return [jax.lax.stop_gradient(z) for z in target.apply_views('projector', self.projector, feats)]

    def loss(self, variables, objective_state, views, batch, rng):
        fw = Forward(variables)
        feats = [o['pooled'] for o in fw.encode(self.ctx.encoder, views[:2])]
        z_a, z_b = fw.apply_views('projector', self.projector, feats)
        p_a, p_b = fw.apply_views('predictor', self.predictor, [z_a, z_b])
        t_a, t_b = self.target_projections(objective_state, views[:2])
        loss = losses.byol_loss(p_a, p_b, t_a, t_b)
        metrics = {'pred_target_cosine': 0.5 * (losses.cosine_similarity(p_a, t_b).mean()
                                                + losses.cosine_similarity(p_b, t_a).mean())}
        return loss, LossOutput(metrics, fw.batch_stats, objective_state, feats[0])

    def update(self, params, objective_state, step):
        momentum = cosine_ema_momentum(self.ema_base, step, self.ctx.total_steps, self.ema_final)
        target = objective_state['target']
        online = {'encoder': params['encoder'], 'projector': params['projector']}
        new_target = dict(target, params=ema_update(target['params'], online, momentum))
        return params, dict(objective_state, target=new_target)
