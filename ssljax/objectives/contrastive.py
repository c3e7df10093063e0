"""Contrastive objectives: each positive pair is pulled together against negatives from the global batch."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ssljax.models.heads import MLP
from ssljax.objectives import losses
from ssljax.objectives.base import Context, Forward, LossOutput, Objective, init_heads, register


def projector_from_config(cfg, dtype) -> MLP:
    """The projector MLP described by ``cfg.projector_hidden``, ``cfg.projector_dim``, ``cfg.projector_bn``."""
    return MLP(hidden_dims=tuple(cfg.projector_hidden), out_dim=cfg.projector_dim, use_bn=cfg.projector_bn,
               dtype=dtype)


@register
@dataclasses.dataclass(frozen=True)
class SimCLR(Objective):
    """SimCLR (Chen et al. 2020): L = NT-Xent(g(f(x_a)), g(f(x_b)); tau) over the global batch.

    Two augmented views per image, encoder f, projector g; every other image of the global batch (on every device)
    is a negative and gradients flow through all of them (see ``losses.nt_xent``).
    """
    name = 'simclr'
    projector: MLP = None
    temperature: float = 0.1

    @classmethod
    def from_config(cls, config, ctx: Context) -> 'SimCLR':
        cfg = config.objective
        return cls(ctx=ctx, projector=projector_from_config(cfg, ctx.dtype), temperature=cfg.temperature)

    def init(self, rng, encoder_variables):
        example = jnp.zeros((2, self.ctx.feature_dim), jnp.float32)
        return init_heads(rng, {'projector': (self.projector, (example,))}), {}

    def loss(self, variables, objective_state, views, batch, rng):
        fw = Forward(variables)
        feats = [o['pooled'] for o in fw.encode(self.ctx.encoder, views[:2])]
        z_a, z_b = fw.apply_views('projector', self.projector, feats)
        loss = losses.nt_xent(z_a, z_b, self.temperature)
        metrics = {'pos_cosine': losses.cosine_similarity(z_a, z_b).mean()}
        return loss, LossOutput(metrics, fw.batch_stats, objective_state, feats[0])
