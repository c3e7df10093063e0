"""Contrastive objectives: each positive pair is pulled together against negatives from the global batch."""
from __future__ import annotations

import dataclasses

from ssljax.objectives import losses
from ssljax.objectives.base import Context, TwoViewObjective, mlp_from_config, register


@register
@dataclasses.dataclass(frozen=True)
class SimCLR(TwoViewObjective):
    """SimCLR (Chen et al. 2020): L = NT-Xent(g(f(x_a)), g(f(x_b)); tau) over the global batch.

    Two augmented views per image, encoder f, projector g; every other image of the global batch (on every device)
    is a negative and gradients flow through all of them (see ``losses.nt_xent``).
    Keys (config.objective): temperature, projector_hidden, projector_dim, projector_bn, bn_per_view. ``bn_per_view``
    False (default, SimCLR's reference: both views concatenated into one batch, so BatchNorm normalises over 2B rows);
    True runs each view on its own (solo-learn's CIFAR recipe does).
    """
    name = 'simclr'
    temperature: float = 0.1

    @classmethod
    def from_config(cls, config, ctx: Context) -> 'SimCLR':
        cfg = config.objective
        return cls(ctx=ctx, projector=mlp_from_config(cfg, 'projector', ctx.dtype), temperature=cfg.temperature,
                   bn_per_view=bool(cfg.get('bn_per_view', False)))

    def pair_loss(self, z_a, z_b):
        return losses.nt_xent(z_a, z_b, self.temperature), {'pos_cosine': losses.cosine_similarity(z_a, z_b).mean()}
